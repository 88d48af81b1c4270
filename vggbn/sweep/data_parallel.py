"""One trial on several workers: `resources: {gpu: 2}` or `resources: {cpu: 1, workers: 2}`.

Ray 2.60 runs Ray Train V2, whose trainers are no longer Tune trainables: the documented pattern
(Ray's "Hyperparameter Tuning with Ray Tune" guide) is a Tune function trial that drives a
`TorchTrainer`. So the Tuner, its searcher, scheduler, export and resume stay as they are; only
the trial's body changes (`run_trial`, called by trainable.vggbn_trial):

- the Tune trial is the driver: it holds no CPU or GPU of its own; the Train workers each
  reserve `cpu`, `gpu` and `memory_gb` (resources are per worker), in Train's placement group;
- every worker runs `fit()` with vggbn.parallel's `DataParallel` hooks: the same device randperm on
  every rank, each rank takes its slice of each global batch, DistributedDataParallel averages the
  gradients (SyncBatchNorm on CUDA; on CPU/gloo each worker normalises its own slice);
- each worker is a trial process like a single-process trial (runtime.py: threads, memory caps,
  no-CUDA, out of memory, the checkpoint's meta and the costs reported each epoch);
- rank 0 writes the checkpoint in vggbn's format (checkpoint.py) through `ray.train.report`; a
  Train callback hands rank 0's metrics and that checkpoint to this trial, which reports them to
  Tune (`tune.report(metrics, checkpoint=...)`: Tune copies it into the trial's directory, as a
  single-process trial's) and deletes Train's copy;
- failures: Train does not restart workers itself (max_failures 0); a lost worker fails the run,
  the trial raises, and Tune retries it from its last checkpoint under the spec's max_failures,
  as a single-process trial. Out-of-memory and no-CUDA stay deterministic: written once, not retried.

Ray is imported where it is used (this module loads without it).
"""

from __future__ import annotations

import logging
import time

from vggbn.config import ConfigError, TrialConfig
from vggbn.parallel import BN_CPU_NOTE, DataParallel
from vggbn.spec.workers import any_bn
from vggbn.store import checkpoint
from vggbn.store.experiment import Experiment
from vggbn.sweep import ray_compat
from vggbn.sweep.runtime import TrialRuntime
from vggbn.train import resolve_device

log = logging.getLogger("vggbn")


# ---------------------------------------------------------------------- the spec (rules: spec/workers.py)
def with_concurrency(spec):
    """A data-parallel trial's driver holds no resources, so Tune would start every trial at once and
    their Train runs would queue for workers: unless the spec says max_concurrent, run as many
    trials as whole worker groups fit in the cluster now (at least one)."""
    import ray

    r = spec.resources
    if r.n_workers > 1 and not r.worker_gpu and any_bn(spec):
        log.warning("vggbn: %s", BN_CPU_NOTE)  # also in the workers' logs
    if r.n_workers == 1 or spec.max_concurrent:
        return spec
    have = ray.cluster_resources()
    fits = [int(have.get("CPU", 0) // r.trial_cpu)] if r.trial_cpu else []
    fits += [int(have.get("GPU", 0) // r.trial_gpu)] if r.trial_gpu else []
    return spec.model_copy(update={"max_concurrent": max(1, min(fits or [1]))})


# ---------------------------------------------------------------------- a Train worker
def _worker(config: dict) -> None:
    """train_loop_per_worker: fit() on this rank; rank 0 checkpoints; every rank reports. A
    deterministic failure is written once (runtime.py) and fails the run, which the trial sees."""
    import ray.train
    import ray.train.torch
    import torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    rt = TrialRuntime(Experiment(config["experiment"]), config["trial_id"], config["resources"])
    cfg = TrialConfig.from_stored(config["config"])
    try:
        if config["resources"].get("GPU"):
            if rt.no_cuda():  # the run fails, the trial is not retried
                raise RuntimeError("no CUDA")
            device = ray.train.torch.get_device()
            torch.cuda.set_device(device)
        else:
            device = resolve_device(cfg.device)
            device = device if device.type == "cpu" else torch.device("cpu")  # gloo workers: CPU
    except ConfigError as e:
        rt.config_error(e)
        raise
    rt.start(cfg, device, knobs={"device": str(device)}, provenance_extra={"workers": world})
    ckpt, resume = config["resume"], None
    if ckpt is not None:  # every rank loads the same one (the trial noted any damaged one skipped)
        fs, latest = ckpt.filesystem, ckpt.path.rstrip("/")
        trial_dir, name = latest.rsplit("/", 1)
        resume = checkpoint.newest_readable(fs, [latest, *checkpoint.list_checkpoints(fs, trial_dir, name)])[0]

    def report(metrics: dict, due: bool, directory: str | None) -> None:
        name = f"checkpoint_{metrics['epoch']:06d}"
        if not due:
            ray.train.report(metrics)
        elif directory is None:  # ranks > 0: rank 0's checkpoint is the run's
            ray.train.report(metrics, checkpoint_dir_name=name)
        else:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                             checkpoint_dir_name=name, delete_local_checkpoint_after_upload=False)

    on_epoch = rt.on_epoch(report, config["checkpoint_every"], writes=rank == 0)
    if not rt.fit(on_epoch, resume_state=resume, hooks=DataParallel(rank, world, device)):
        raise RuntimeError(f"rank {rank}: the trial's error is written (not retried)")


def _forward_reports(queue):
    """A Ray Train callback (it runs in Train's controller): rank 0's metrics and the checkpoint's
    path, to the trial that drives the run."""
    from ray.train import UserCallback

    class ToTune(UserCallback):
        def __init__(self, q):
            self.q = q

        def after_report(self, run_context, metrics, checkpoint):
            self.q.put((metrics[0], checkpoint.path if checkpoint else None))

    return ToTune(queue)


# ---------------------------------------------------------------------- the Tune trial (driver)
def run_trial(exp, trial_id: str, cfg: TrialConfig, resources, resume, checkpoint_every: int) -> None:
    """Drive one data-parallel trial: a TorchTrainer whose reports become this trial's."""
    import threading

    import pyarrow.fs as pafs
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    if not ray_compat.train_v2_enabled():
        exp.write_trial_error(trial_id, "TrialConfig: resources.workers > 1 needs Ray Train V2 (Ray's "
                                        "default), but RAY_TRAIN_V2_ENABLED=0 is set. Fix: unset it")
        return
    per_worker = {"CPU": resources.cpu, "GPU": resources.worker_gpu}
    if resources.memory_gb:
        per_worker["memory"] = int(resources.memory_gb * 2**30)
    fs = None if exp.local else exp.fs
    run_dir, name = exp.trial_dir(trial_id), f"ddp-{time.time_ns()}"
    reports = Queue(maxsize=1, actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"experiment": exp.uri, "trial_id": trial_id, "config": cfg.to_flat(),
                           "resources": per_worker, "resume": resume,
                           "checkpoint_every": checkpoint_every},
        scaling_config=ray.train.ScalingConfig(num_workers=resources.n_workers,
                                               use_gpu=resources.worker_gpu > 0,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=name, storage_path=run_dir, storage_filesystem=fs,
            # every restart is Tune's, from Tune's checkpoint: one retry policy (the spec's
            # max_failures), counted in the export as a single-process trial's
            failure_config=ray.train.FailureConfig(max_failures=0, max_preemption_failures=0),
            callbacks=[_forward_reports(reports)]),
    )
    failed: list[BaseException] = []
    error_before = exp.trial_error(trial_id)

    def drive() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # noqa: BLE001  (re-raised in the trial's thread)
            failed.append(e)
        finally:
            reports.put(None)

    thread = threading.Thread(target=drive, name="vggbn-torchtrainer", daemon=True)
    thread.start()
    local = fs or pafs.LocalFileSystem()
    while (item := reports.get()) is not None:
        metrics, path = item
        ckpt = tune.Checkpoint(path, filesystem=fs) if path else None
        tune.report(metrics, checkpoint=ckpt)  # Tune copies it into trial_<id>/checkpoint_NNNNNN
        if path:
            local.delete_dir(path)
    thread.join()
    try:
        local.delete_dir(f"{run_dir}/{name}")
    except OSError:
        pass
    if failed:
        if exp.trial_error(trial_id) != error_before:  # out of memory, no CUDA: not retried
            return
        e = failed[0]
        raise RuntimeError(f"data-parallel run of {resources.n_workers} workers failed: "
                           f"{type(e).__name__}: {' '.join(str(e).split())[:2000]}") from None
