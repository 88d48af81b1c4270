"""One trial on several workers: `resources: {gpu: 2}` or `resources: {cpu: 1, workers: 2}`.

Ray 2.60 runs Ray Train V2, whose trainers are no longer Tune trainables: the documented pattern
(Ray's "Hyperparameter Tuning with Ray Tune" guide) is a Tune function trial that drives a
`TorchTrainer`. So the Tuner, its searcher, scheduler, export and resume stay as they are; only
the trial's body changes (`run_trial`, called by trainable.vggbn_trial):

- the Tune trial is the driver: it holds no CPU or GPU of its own; the Train workers each
  reserve `cpu`, `gpu` and `memory_gb` (resources are per worker), in Train's placement group;
- every worker runs `fit()` with a `DataParallel`: the same device randperm on every rank, each
  rank takes its slice of each global batch, DistributedDataParallel averages the gradients
  (SyncBatchNorm on CUDA; on CPU/gloo each worker normalises its own slice);
- rank 0 writes the checkpoint in vggbn's format (checkpoint.py) through `ray.train.report`; a
  Train callback hands rank 0's metrics and that checkpoint to this trial, which reports them to
  Tune (`tune.report(metrics, checkpoint=...)`: Tune copies it into the trial's directory, as a
  single-process trial's) and deletes Train's copy;
- failures: Train does not restart workers itself (max_failures 0); a lost worker fails the run,
  the trial raises, and Tune retries it from its last checkpoint under the spec's max_failures,
  as a single-process trial. Out-of-memory and no-CUDA stay deterministic: written once, not retried.

No Ray import at module level (spec.py imports `check_spec`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

from vggbn.config import ConfigError, TrialConfig

log = logging.getLogger("vggbn")
PID_DIR_ENV = "VGGBN_DIST_PID_DIR"  # tests only: see _test_hook
BN_CPU_NOTE = ("BatchNorm on CPU workers (gloo): each worker normalises its own slice of the global "
               "batch (SyncBatchNorm needs CUDA), so BN statistics differ from a single-process run")


# ---------------------------------------------------------------------- the spec
def check_resources(r) -> None:
    """`resources` (space.Resources): gpu: N (a whole number > 1) is N workers x 1 GPU; workers: N
    makes cpu, gpu and memory_gb per worker. Contradictions are refused, not guessed."""
    if r.gpu > 1 and r.workers not in (1, int(r.gpu)):
        raise ValueError(f"gpu: {r.gpu:g} with workers: {r.workers}: gpu above 1 means {int(r.gpu)} "
                         f"workers x 1 GPU; give gpu: {int(r.gpu)} alone, or workers: {r.workers} "
                         f"with gpu: 1 (GPUs per worker)")
    if r.workers > 1 and 0 < r.gpu < 1:
        raise ValueError(f"gpu: {r.gpu:g} with workers: {r.workers}: a data-parallel worker takes a "
                         f"whole GPU (one NCCL rank per GPU); give gpu: 1 (per worker), or workers: 1 "
                         f"to pack single-process trials on a GPU")


def check_spec(spec) -> None:
    """What a data-parallel trial cannot run, said at load time (ValueError -> SweepSpecError)."""
    n = spec.resources.n_workers
    if n == 1:
        return
    setups = [{**spec.base, **c} for c in spec.cases or [{}]]
    for i, flat in enumerate(setups):
        where = f"cases[{i}]" if spec.cases else "base"
        cfg = TrialConfig.from_flat(flat)
        if cfg.probe_every:
            raise ValueError(f"{where}.probe_every: {cfg.probe_every} with resources.workers {n}: the "
                             f"Santurkar probes run in a single process; set probe_every: 0, or "
                             f"resources.workers: 1")
        if cfg.batch_size < n and "batch_size" not in spec.space:
            raise ValueError(f"{where}.batch_size: {cfg.batch_size} is smaller than resources.workers "
                             f"{n} (each worker takes a slice of the batch); give a larger batch_size")
    small = [b for b in (spec.space["batch_size"].probe_values() if "batch_size" in spec.space else [])
             if int(b) < n]
    if small:
        raise ValueError(f"space.batch_size: {small[0]} is smaller than resources.workers {n} (each worker "
                         f"takes a slice of the batch); search batch sizes of at least {n}")
    dim = spec.space.get("probe_every")
    if dim is not None and any(getattr(dim, "values", None) or [1]):
        raise ValueError(f"space.probe_every with resources.workers {n}: the Santurkar probes run in a "
                         f"single process; leave probe_every out of the space, or set workers: 1")


def with_concurrency(spec):
    """A data-parallel trial's driver holds no resources, so Tune would start every trial at once and
    their Train runs would queue for workers: unless the spec says max_concurrent, run as many
    trials as whole worker groups fit in the cluster now (at least one)."""
    import ray

    r = spec.resources
    if r.n_workers > 1 and not r.worker_gpu and _any_bn(spec):
        log.warning("vggbn: %s", BN_CPU_NOTE)  # also in the workers' logs
    if r.n_workers == 1 or spec.max_concurrent:
        return spec
    have = ray.cluster_resources()
    fits = [int(have.get("CPU", 0) // r.trial_cpu)] if r.trial_cpu else []
    fits += [int(have.get("GPU", 0) // r.trial_gpu)] if r.trial_gpu else []
    return spec.model_copy(update={"max_concurrent": max(1, min(fits or [1]))})


def _any_bn(spec) -> bool:
    dim = spec.space.get("bn")
    return (any(TrialConfig.from_flat({**spec.base, **c}).bn for c in spec.cases or [{}])
            or (dim is not None and True in (getattr(dim, "values", None) or [True])))


def describe(r) -> str:
    """'2 workers x (1 CPU + 1 GPU)' or '1 CPU + 0 GPU' for the dry run."""
    if r.n_workers == 1:
        return f"{r.cpu:g} CPU + {r.gpu:g} GPU each"
    one = f"{r.cpu:g} CPU + {r.worker_gpu:g} GPU" + (f" + {r.memory_gb:g} GiB" if r.memory_gb else "")
    return f"{r.n_workers} workers x ({one}) each, data-parallel"


# ---------------------------------------------------------------------- inside fit(), per rank
class DataParallel:
    """fit()'s hooks on one rank of a torch.distributed process group (Ray Train set it up)."""

    def __init__(self, rank: int, world: int, device):
        self.rank, self.world, self.device = rank, world, device
        self.weight, self.share = 1.0, 1.0

    def convert(self, model, cfg: TrialConfig):
        import torch

        if cfg.probe_every:
            raise ConfigError(f"probe_every={cfg.probe_every} is invalid with {self.world} workers: "
                              f"the Santurkar probes run in a single process (probe_every=0)")
        has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if has_bn and self.device.type == "cuda":
            return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same state_dict keys
        if has_bn and self.rank == 0:
            log.warning("vggbn: %s", BN_CPU_NOTE)
        return model

    def wrap(self, model):
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index if self.device.index is not None else 0] if self.device.type == "cuda" else None
        return DDP(model, device_ids=ids)

    def shard(self, batches, cfg: TrialConfig, epoch: int):
        """This rank's contiguous slice of each global batch. `weight` makes DDP's mean over the
        ranks the global batch's mean whatever the slice sizes; `share` weighs a step's loss."""
        import torch

        # dropout: one stream per (seed, epoch, rank), so a resume replays it without saved state
        torch.manual_seed((cfg.seed * 1_000_003 + epoch) * 1009 + self.rank)
        for x, y in batches:
            n = len(y)
            lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
            self.share = (hi - lo) / n
            self.weight = self.share * self.world
            yield x[lo:hi], y[lo:hi]

    def eval_batches(self, data, split, batch_size: int):
        from vggbn.data import Split

        n = len(split)
        lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        return data.eval_batches(Split(split.x[lo:hi], split.y[lo:hi]), batch_size)

    def eval_model(self, model):
        """The model with rank 0's BatchNorm buffers on every rank (what rank 0 checkpoints)."""
        import torch.distributed as td

        for b in model.buffers():
            td.broadcast(b, 0)
        return model

    def all_sum(self, t):
        import torch.distributed as td

        t = t.clone()
        td.all_reduce(t)
        return t


# ---------------------------------------------------------------------- a Train worker
def _worker(config: dict) -> None:
    """train_loop_per_worker: fit() on this rank; rank 0 checkpoints; every rank reports."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from vggbn.models import model_cost
    from vggbn.provenance import provenance
    from vggbn.train import fit, resolve_device
    from vggbn.store import checkpoint
    from vggbn.store.experiment import Experiment
    from vggbn.sweep.trainable import _cap_host_memory, _is_oom, _no_cuda_message, _oom_message

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    exp, trial_id = Experiment(config["experiment"]), config["trial_id"]
    cfg = TrialConfig.from_stored(config["config"])
    stored, res = cfg.to_flat(), config["resources"]
    try:
        if res.get("GPU"):
            if not torch.cuda.is_available():  # deterministic: written once, the run fails, no retry
                exp.write_trial_error(trial_id, f"TrialNoCUDA: {_no_cuda_message(res)}")
                raise RuntimeError("no CUDA")
            device = ray.train.torch.get_device()
            torch.cuda.set_device(device)
        else:
            device = resolve_device(cfg.device)
            device = device if device.type == "cpu" else torch.device("cpu")  # gloo workers: CPU
        update = {"device": str(device)}
        if cfg.cpu_threads == 0:
            update["cpu_threads"] = max(1, int(res.get("CPU", 1)))
        cfg = cfg.model_copy(update=update)
    except ConfigError as e:
        exp.write_trial_error(trial_id, f"ConfigError: {e}")
        raise
    _cap_host_memory(int(res.get("memory", 0)) if device.type == "cpu" else 0)
    ckpt, resume = config["resume"], None
    if ckpt is not None:  # every rank loads the same one (the trial noted any damaged one skipped)
        fs, latest = ckpt.filesystem, ckpt.path.rstrip("/")
        trial_dir, name = latest.rsplit("/", 1)
        resume = checkpoint.newest_readable(fs, [latest, *checkpoint.list_checkpoints(fs, trial_dir, name)])[0]
    meta = {"provenance": {**provenance(device), "workers": world}, "config": stored}
    node_id = ray.get_runtime_context().get_node_id()
    gflops, params = model_cost(cfg)
    every = config["checkpoint_every"]

    def on_epoch(metrics: dict, state: dict) -> None:
        metrics = {**metrics, "node_id": node_id, "gflops": gflops, "params": params}
        last = metrics["epoch"] >= cfg.epochs or metrics["diverged"]
        name = f"checkpoint_{metrics['epoch']:06d}"
        if metrics["epoch"] % every and not last:
            ray.train.report(metrics)
        elif rank:
            ray.train.report(metrics, checkpoint_dir_name=name)
        else:
            with tempfile.TemporaryDirectory() as d:
                checkpoint.write(Path(d), state, meta)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                                 checkpoint_dir_name=name, delete_local_checkpoint_after_upload=False)
        _test_hook(rank, metrics["epoch"] + 1)

    _test_hook(rank, (resume or {}).get("epoch", 0) + 1)
    try:
        fit(cfg, on_epoch=on_epoch, resume_state=resume, dist=DataParallel(rank, world, device))
    except ConfigError as e:
        exp.write_trial_error(trial_id, f"ConfigError: {e}")
        raise
    except Exception as e:
        if _is_oom(e):
            exp.write_trial_error(trial_id, f"TrialOutOfMemory: {_oom_message(cfg, device, e, res)}")
        raise


def _test_hook(rank: int, epoch: int) -> None:
    """Off unless VGGBN_DIST_PID_DIR is set (tests): as it starts an epoch, a worker writes
    rank<r>.json (its pid, the epoch), then waits while hold-epoch-<epoch> exists there, so a test
    can kill a worker at a known point without timing guesses."""
    where = os.environ.get(PID_DIR_ENV)
    if not where:
        return
    import json

    from vggbn.files import write_atomic

    write_atomic(Path(where) / f"rank{rank}.json", json.dumps({"pid": os.getpid(), "epoch": epoch}))
    hold = Path(where) / f"hold-epoch-{epoch}"
    while hold.exists():
        time.sleep(0.05)


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
    from ray.train.v2._internal.constants import is_v2_enabled
    from ray.util.queue import Queue

    if not is_v2_enabled():
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
