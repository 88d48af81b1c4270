"""What a sweep's trials hold and may spend: per-trial resources (`Resources`, a data-parallel
trial's workers included), the budget that stops new trials (`Budget`, counted by
`resource_hours`) and what an epoch costs for the dry run's estimate (`Cost`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vggbn.spec.workers import check_resources


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpu: float = Field(1.0, gt=0, description="CPUs per trial, per worker with workers > 1 (also "
                       "its torch threads)")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial; a fraction packs trials on one GPU; "
                       "a whole number above 1 trains data-parallel, one worker per GPU")
    memory_gb: float = Field(0.0, ge=0, description="host RAM per trial (per worker) in GiB (0 = no "
                             "reservation): Ray schedules by it and a CPU trial is capped to it, so a "
                             "trial that outgrows it errors alone instead of the kernel's OOM killer "
                             "taking the node's other trials")
    workers: int = Field(1, ge=1, le=1024, description="data-parallel workers per trial (Ray Train's "
                         "TorchTrainer); cpu, gpu and memory_gb are then per worker")

    @model_validator(mode="after")
    def _whole_gpus(self):
        if self.gpu > 1 and self.gpu != int(self.gpu):
            raise ValueError(f"gpu={self.gpu}: above 1, GPUs per trial must be a whole number")
        check_resources(self)  # what a data-parallel trial holds
        return self

    @property
    def n_workers(self) -> int:  # gpu: 2 means 2 workers x 1 GPU
        return int(self.gpu) if self.gpu > 1 else self.workers

    @property
    def worker_gpu(self) -> float:
        return 1.0 if self.gpu > 1 else self.gpu

    @property
    def trial_cpu(self) -> float:  # what a trial holds, all workers together (budget, estimate)
        return self.cpu * self.n_workers

    @property
    def trial_gpu(self) -> float:
        return self.worker_gpu * self.n_workers


def resource_hours(trial_seconds: float, per_trial: float) -> float:
    """Trial time x the resources each trial holds, in hours: what a budget counts (the scheduler,
    with the sum of every trial's last `time_total_s`) and what `vggbn status` shows."""
    return trial_seconds * per_trial / 3600


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gpu_hours: float | None = Field(None, gt=0, description="no new trial starts once the trials' "
                                    "GPU-hours (trial time x GPUs per trial) reach this")
    cpu_hours: float | None = Field(None, gt=0, description="no new trial starts once the trials' "
                                    "CPU-hours (trial time x CPUs per trial) reach this")


class Cost(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epoch_seconds: float | None = Field(None, gt=0, description="stated time of one epoch of one "
                                        "trial on its resources, for the dry run's estimate (a "
                                        "run of this experiment, when there is one, is measured)")
    usd_per_gpu_hour: float | None = Field(None, ge=0, description="price of a GPU-hour (default: "
                                           "the on-demand price of cluster.yaml's GPU workers, "
                                           "where vggbn knows the instance type)")
