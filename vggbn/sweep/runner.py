"""Run and resume sweeps: Ray start, the pre-flight checks, data preparation, the Tuner.

The Ray internals this needs are in ray_compat.py, probed once at start by `check_ray`.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import ray
from ray import tune

from vggbn import data
from vggbn.config import TrialConfig
from vggbn.errors import ExperimentError, SpecError, StorageError
from vggbn.plan.extend import extended_spec
from vggbn.schema import TRIAL_DIR
from vggbn.spec import pbt
from vggbn.spec.model import CASE_KEY, SweepSpec
from vggbn.store.experiment import Experiment
from vggbn.store.lease import Lease
from vggbn.sweep import callbacks, ray_compat, schedulers, search, snapshots
from vggbn.sweep.callbacks import StorageGuard, SweepProgress
from vggbn.sweep.data_parallel import with_concurrency
from vggbn.sweep.export import export
from vggbn.sweep.ray_compat import RAY_TESTED, check_ray  # noqa: F401  (this module's API)
from vggbn.sweep.search import PlanSync
from vggbn.sweep.trainable import vggbn_trial

DRIVER_MEMORY = 256 * 2**20  # what a data-parallel trial's driver reserves (Tune needs a nonzero request)


def init_ray(address: str | None) -> bool:
    """Connect to a cluster or start a local Ray; True when it started a local one. Sets Ray's own
    settings (environment variables Ray defines) where the user has not."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the table with the swept flags
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")  # resume loses at most ~5 s
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # a trial that ends on a deterministic failure returns without reporting (trainable.py); the
    # spec already checked that trials report the metric
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    kw: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING",
                          "log_to_driver": False}
    # no address: a new local Ray, as documented. ray.init() alone would join whatever `ray start`
    # left running on this machine (its /tmp/ray/ray_current_cluster), another user's cluster too
    ray.init(address=address or "local", **kw)
    return not address


def _check_gpus(spec: SweepSpec, local: bool) -> None:
    """A local Ray without GPUs would leave GPU trials pending forever (a cluster may autoscale)."""
    if local and spec.resources.gpu > 0 and not ray.cluster_resources().get("GPU"):
        raise SpecError(f"resources.gpu: {spec.resources.gpu:g}, but this machine has no GPU visible to Ray.",
                        "--set resources.gpu=0 to run on the CPU, or --address a cluster with GPU workers.")
    r, have = spec.resources, ray.cluster_resources()
    for unit, need in (("CPU", r.trial_cpu), ("GPU", r.trial_gpu)):  # a worker group that never fits
        if local and r.n_workers > 1 and need > have.get(unit, 0):
            raise SpecError(f"resources: one trial's {r.n_workers} workers need {need:g} {unit}s together, "
                            f"and this machine has {have.get(unit, 0):g}, so the trial would wait forever.",
                            "fewer resources.workers or less per worker, or --address a cluster with room "
                            "for them")


def prepare_data(spec: SweepSpec) -> SweepSpec:
    """The driver fetches/decodes each dataset once before trials start; trials get an absolute
    data_dir (the per-node file lock in data.prepare stays as the fallback)."""
    datasets = (list(spec.space["dataset"].probe_values()) if "dataset" in spec.space
                else [TrialConfig.from_flat({**spec.base, **c}).dataset for c in spec.cases or [{}]])
    base = dict(spec.base)
    if any(d != "synthetic" for d in datasets) and not base.get("data_dir"):
        base["data_dir"] = data.default_data_dir()
    for d in datasets:
        if d != "synthetic":
            data.prepare(d, base.get("data_dir"))
    return spec.model_copy(update={"base": base})


def _trainable(spec: SweepSpec, exp: Experiment):
    perturbed = tuple(pbt.keys(spec)) if spec.scheduler.type in pbt.TYPES else ()
    workers = spec.resources.model_dump() if spec.resources.n_workers > 1 else None
    fn = tune.with_parameters(vggbn_trial, experiment=exp.uri, checkpoint_every=spec.checkpoint_every,
                              perturbed=perturbed, workers=workers)
    if workers:  # the trial only drives its Train workers, which reserve cpu/gpu each (data_parallel.py)
        return tune.with_resources(fn, {"cpu": 0, "memory": DRIVER_MEMORY})
    res = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    if spec.resources.memory_gb:
        res["memory"] = int(spec.resources.memory_gb * 2**30)
    return tune.with_resources(fn, res)


def _reporter(spec: SweepSpec):
    metrics = ["epoch", "train_loss"]
    metrics += ["val_acc"] if spec.primary_metric.startswith("val_") or "val_fraction" in spec.base else []
    metrics += ["test_acc"] + [m for m, _ in spec.objectives if m not in ("val_acc", "test_acc", *metrics)]
    common = set.intersection(*(set(c) for c in spec.cases)) if spec.cases else set()
    # keys every trial has (Ray's table fails on a conditional key that some trials lack)
    params = [k for k, d in spec.space.items() if d.kind != "when" or len(d.values) == len(spec.space[d.when].values)]
    params += sorted(f"{CASE_KEY}/{k}" for k in common)  # keys every case sets
    params += ["seed"] if spec.seeds else []
    params = params or [k for k in ("preset", "seed") if k in spec.base]
    return tune.CLIReporter(parameter_columns=params, metric_columns=metrics, max_report_frequency=30,
                            sort_by_metric=False)


def _trial_dirname(trial) -> str:
    return TRIAL_DIR.format(trial_id=trial.trial_id)


def build_tuner(spec: SweepSpec, exp: Experiment | None = None):
    exp = exp or Experiment(spec.experiment_path())
    scheduler, scheduler_callbacks = schedulers.build(spec)
    search_alg, param_space, num_samples, plan_callbacks = search.build(spec, exp.uri)
    cbs = scheduler_callbacks + plan_callbacks + callbacks.callbacks(spec)  # TensorBoard, MLflow, W&B
    cbs.append(SweepProgress(exp.uri, spec.trial_count(), spec.seeds is not None))  # a line per trial
    cbs.append(StorageGuard(exp.uri))  # a full disk ends the run at its first failed trial
    single = len(spec.objectives) == 1 or None  # several objectives: the searcher holds them
    storage_path, storage_fs = exp.ray_storage()  # object storage: the URI's filesystem + plain path
    return tune.Tuner(
        _trainable(spec, exp),
        param_space=param_space,
        tune_config=tune.TuneConfig(metric=single and spec.metric, mode=single and spec.mode,
                                    scheduler=scheduler,
                                    search_alg=search_alg, num_samples=num_samples,
                                    # a grid's plan searcher carries its own limiter (search/plan.py)
                                    max_concurrent_trials=(spec.max_concurrent or None)
                                    if spec.search != "grid" else None,
                                    trial_dirname_creator=_trial_dirname,
                                    # no process start + torch import per trial; a data-parallel
                                    # trial's actor ends with it, and its Train run with the actor
                                    reuse_actors=spec.resources.n_workers == 1),
        run_config=tune.RunConfig(
            name=exp.name, storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints),
            callbacks=cbs, progress_reporter=_reporter(spec), verbose=1),
    )


def run_sweep(spec: SweepSpec, *, address: str | None = None, prepare: bool = True) -> dict:
    """Claim the experiment directory, run the sweep to the end, then export. Returns the export's
    summary. A start that fails before any trial ran gives its claim back."""
    exp = Experiment(spec.experiment_path())
    callbacks.check(spec.tracking)  # a missing extra fails before anything is claimed
    exp.claim(spec.name)
    lease = Lease(exp, "sweep")
    try:
        lease.acquire()  # a `resume` started the moment the claim exists waits its turn
        check_ray(mlflow=bool(spec.tracking.mlflow), wandb=bool(spec.tracking.wandb))
        if prepare:
            spec = prepare_data(spec)
        local = init_ray(address)
        _check_gpus(spec, local)
        spec = with_concurrency(spec)  # data-parallel trials: as many as worker groups fit
        exp.write_spec(spec.model_copy(update={"storage": exp.storage}))
        tuner = build_tuner(spec, exp)
    except BaseException:
        lease.release()
        exp.release_claim()
        raise
    try:
        return _fit(exp, spec, tuner)
    finally:
        lease.release()


def _fit(exp: Experiment, spec: SweepSpec, tuner) -> dict:
    """The Tuner's run, then the export; a run the storage stopped (a full disk) is said as such."""
    t0 = time.time()
    try:
        with _pending_trials(spec), snapshots.keeping_good(exp):
            tuner.fit()
        ray_compat.wait_for_final_upload()
        summary = export(exp.uri, wall_time_s=time.time() - t0)
    except StorageError:  # callbacks.StorageGuard: a trial failed on the storage, the run ended
        raise
    except Exception as e:  # noqa: BLE001  (Ray's own errors, after a trial's OSError, hide the cause)
        why = exp.failure(e)
        if why is None:
            raise
        raise why from None
    if summary.get("status", {}).get("errored"):  # trials that errored on a full disk, the driver fine
        why = exp.failure()
        if why is not None:
            raise why
    return summary


@contextlib.contextmanager
def _pending_trials(spec: SweepSpec):
    """For the Tuner's run: how many grid trials Ray keeps pending (search.pending_trials), through
    Ray's own setting TUNE_MAX_PENDING_TRIALS_PG."""
    n = search.pending_trials(spec)
    if n:
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = n
    try:
        yield
    finally:
        if n:
            os.environ.pop("TUNE_MAX_PENDING_TRIALS_PG", None)


def resume_sweep(path: str, *, address: str | None = None, take_over: bool = False) -> dict:
    """Continue an interrupted sweep: finished trials stay, unfinished ones continue from their
    last checkpoint, errored ones are retried (from their checkpoint)."""
    exp = Experiment(path)
    spec = exp.spec()
    with Lease(exp, "resume", take_over=take_over):
        return _resume(exp, spec, address)


def _resume(exp: Experiment, spec: SweepSpec, address: str | None) -> dict:
    """resume_sweep's work, under the lease its caller holds."""
    if not exp.has_ray_state():
        raise ExperimentError(f"{exp.uri}: the sweep was claimed but no trial ever started (no "
                              f"experiment_state-*.json).", f"if that start is dead, delete "
                              f"{exp.join('vggbn-claim.json')} and run `vggbn sweep` again")
    check_ray(mlflow=bool(spec.tracking.mlflow), wandb=bool(spec.tracking.wandb))
    callbacks.check(spec.tracking)  # Ray's tuner.pkl holds the callbacks: their packages
    snapshots.check_before_restore(exp)  # a damaged snapshot: the last good copy, or a refusal
    init_ray(address)
    try:
        path, fs = exp.ray_path()
        tuner = tune.Tuner.restore(path, trainable=_trainable(spec, exp), resume_unfinished=True,
                                   resume_errored=True, storage_filesystem=fs)
    except (ValueError, RuntimeError, OSError, ModuleNotFoundError, AttributeError) as e:
        raise ExperimentError(f"{exp.uri}: Ray cannot restore this experiment "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:300]}).",
                              "finish it with the vggbn release that started it, or `vggbn export` "
                              "what it has") from None
    for cb in ray_compat.restored_callbacks(tuner):  # the copies pickled at the start name where it was
        if isinstance(cb, (PlanSync, SweepProgress, StorageGuard)):
            cb.relocate(exp.uri)
    return _fit(exp, spec, tuner)


def extend_sweep(path: str, overrides: dict[str, Any], *, address: str | None = None,
                 take_over: bool = False) -> dict:
    """More seeds or more variants for a grid sweep: the spec gains them, finished trials stay,
    the new ones join the same experiment (and its table) through the plan searcher on resume."""
    exp = Experiment(path)
    old = exp.spec()
    fix = f"run a new sweep for it (vggbn sweep FILE), and `vggbn report {exp.uri} NEW` to compare"
    if old.search != "grid":
        raise ExperimentError(f"{exp.uri}: search {old.search}: `extend` adds seeds or variants to a grid "
                              f"sweep.", fix)
    if not exp.has_ray_state() or not any(i.startswith("searcher-state") for i in exp.listdir()):
        raise ExperimentError(f"{exp.uri}: this sweep has no vggbn plan state (it never started, or it "
                              f"was run on Ray's own grid by a vggbn older than its plan searcher, "
                              f"commit 83b622c).", fix)
    new = extended_spec(old, overrides, exp.uri)  # plan/extend.py: --set, validated, an extension
    with Lease(exp, "extend", take_over=take_over):  # before the spec changes: not under a running resume
        if new.model_dump() != old.model_dump():
            exp.write_spec(new.model_copy(update={"storage": exp.storage}))
        # already extended (a resume that failed after the spec was written): this finishes it
        return _resume(exp, exp.spec(), address)
