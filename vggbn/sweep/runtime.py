"""What a trial's process does around fit(), written once for both kinds of trial process: the
Tune trial that trains alone (trainable.vggbn_trial) and each rank of a data-parallel run
(data_parallel's Train workers).

- the execution knobs: torch threads = the CPUs Ray gave the process (cpu_threads 0), the memory
  caps (a GPU share; resources.memory_gb on the CPU);
- the checkpoint's meta (provenance, the trial's resolved config as stored) and the costs reported
  with every epoch (node_id, gflops, params);
- on_epoch: the epoch's metrics reported every epoch, with a checkpoint every `checkpoint_every`
  epochs and at the end;
- deterministic failures (a GPU that torch cannot see, out of memory, an invalid config): one line
  written as the trial's error (`trial_<id>/vggbn-error.json`), so Ray does not retry the trial.

Ray is imported where it is used: the caller is a Ray process.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from vggbn import limits
from vggbn.config import ConfigError, TrialConfig
from vggbn.models import model_cost
from vggbn.parallel import SingleProcess
from vggbn.provenance import provenance
from vggbn.store import checkpoint
from vggbn.train import SINGLE, fit

# report(metrics, due, directory): due = this epoch checkpoints; directory = the checkpoint written
# by this process (None on a rank that does not write one, or when not due)
Report = Callable[[dict, bool, "str | None"], None]


class TrialRuntime:
    """One trial process: `exp` (store.Experiment) and `trial_id` say where its error goes;
    `resources` is Ray's resource dict for this process ("CPU", "GPU", "memory" in bytes)."""

    def __init__(self, exp, trial_id: str, resources: dict):
        self.exp, self.trial_id, self.resources = exp, trial_id, resources
        self.cfg: TrialConfig | None = None
        self.device = None
        self.meta: dict = {}
        self.costs: dict = {}

    def error(self, kind: str, what) -> None:
        """The trial's deterministic failure, once: Ray does not retry a trial that has one."""
        self.exp.write_trial_error(self.trial_id, f"{kind}: {what}")

    def config_error(self, e: ConfigError) -> None:
        self.error("ConfigError", e)

    def no_cuda(self) -> bool:
        """Ray gave this process a GPU that torch cannot see: written (deterministic: no retry finds
        CUDA on this node), True."""
        if not limits.needs_cuda(self.resources):
            return False
        import ray

        self.error("TrialNoCUDA", limits.no_cuda_message(
            self.resources, node=ray.util.get_node_ip_address(), gpu_ids=ray.get_gpu_ids()))
        return True

    def start(self, cfg: TrialConfig, device, knobs: dict | None = None,
              provenance_extra: dict | None = None) -> TrialConfig:
        """The config to train: `cfg` with the execution knobs Ray decides (and `knobs`), with the
        memory caps set; `cfg` itself is what the checkpoints store."""
        import ray

        stored, update = cfg.to_flat(), dict(knobs or {})
        if cfg.cpu_threads == 0:  # an execution knob: the CPUs Ray gave this run
            update["cpu_threads"] = max(1, int(self.resources.get("CPU", 1)))
        if update:
            cfg = cfg.model_copy(update=update)
        limits.cap_memory(self.resources, device)  # packed GPU trials: each keeps to its share
        self.meta = {"provenance": {**provenance(device), **(provenance_extra or {})}, "config": stored}
        gflops, params = model_cost(cfg)  # reported with every epoch: search objectives ("gflops")
        # which node ran each epoch (spot losses show); the costs, so a search can minimise them
        self.costs = {"node_id": ray.get_runtime_context().get_node_id(), "gflops": gflops, "params": params}
        self.cfg, self.device = cfg, device
        return cfg

    def on_epoch(self, report: Report, checkpoint_every: int, writes: bool = True, record=None):
        """fit()'s on_epoch: the metrics with the costs, a checkpoint when due (written here when
        `writes`), then `report`. `record` (store.pbt_record.Record): a PBT trial's."""
        epochs = self.cfg.epochs

        def on_epoch(metrics: dict, state: dict) -> None:
            metrics = {**metrics, **self.costs}
            last = metrics["epoch"] >= epochs or metrics["diverged"]
            if record is not None:
                record.epoch(metrics)
                metrics["final"] = last  # PBT neither clones nor restarts a trial at its end
            due = bool(last or not metrics["epoch"] % checkpoint_every)
            if not (due and writes):
                report(metrics, due, None)
                return
            with tempfile.TemporaryDirectory() as d:
                checkpoint.write(Path(d), state, self.meta)
                report(metrics, due, d)

        return on_epoch

    def fit(self, on_epoch, resume_state: dict | None = None, hooks: SingleProcess = SINGLE) -> bool:
        """fit() to its end (True), or False on a deterministic failure, written: an invalid config,
        or out of memory (after the failed step's tensors are freed)."""
        oom = None
        try:
            fit(self.cfg, on_epoch=on_epoch, resume_state=resume_state, hooks=hooks)
        except ConfigError as e:
            self.config_error(e)
            return False
        except Exception as e:
            if not limits.is_oom(e):
                raise
            oom = limits.oom_message(self.cfg, self.device, e, self.resources)
        if oom:  # outside the except block, so the failed step's tensors can be freed first
            limits.free_memory(self.device)
            self.error("TrialOutOfMemory", oom)
            return False
        return True
