"""Run and resume sweeps: Ray start, the pre-flight checks, data preparation, the Tuner.

Ray internals still used, each checked once at start by `check_ray` (a clear error names the Ray
versions vggbn was tested with): `TuneController._mark_trial_to_checkpoint` (schedulers.py) and,
in `_wait_for_final_upload`, Ray's background upload thread found by the qualname of its target.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from vggbn.config import TrialConfig
from vggbn.schema import TRIAL_DIR
from vggbn.sweep.data_parallel import with_concurrency
from vggbn.store.experiment import Experiment, ExperimentError
from vggbn.spec import tracking
from vggbn.spec.model import CASE_KEY, SweepSpec, SweepSpecError

DRIVER_MEMORY = 256 * 2**20  # what a data-parallel trial's driver reserves (Tune needs a nonzero request)
RAY_TESTED = ("2.60",)  # the Ray releases the test suite ran on (pyproject.toml pins these)


def check_ray() -> None:
    """The Ray release and the internals vggbn relies on, once, before anything starts."""
    import ray
    from ray.train._internal import syncer
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.logger import TBXLoggerCallback
    from ray.tune.schedulers import ASHAScheduler

    missing = [name for owner, name in ((TuneController, "_mark_trial_to_checkpoint"),
                                        (syncer, "_BackgroundProcess"),
                                        (TBXLoggerCallback, "_try_log_hparams"),  # loggers.py
                                        (ASHAScheduler, "save"), (ASHAScheduler, "restore"))
               if not callable(getattr(owner, name, None))]
    if missing:
        raise SweepSpecError(f"Ray {ray.__version__} lacks {', '.join(missing)}, which vggbn uses; "
                             f"vggbn is tested with Ray {', '.join(RAY_TESTED)}.\nFix: pip install "
                             f"'ray[tune]=={RAY_TESTED[-1]}.*'")


def _init_ray(address: str | None) -> bool:
    """Connect to a cluster or start a local Ray; True when it started a local one."""
    import ray

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
    import ray

    if local and spec.resources.gpu > 0 and not ray.cluster_resources().get("GPU"):
        raise SweepSpecError(f"resources.gpu: {spec.resources.gpu:g}, but this machine has no GPU "
                             f"visible to Ray.\nFix: --set resources.gpu=0 to run on the CPU, or "
                             f"--address a cluster with GPU workers.")
    r, have = spec.resources, ray.cluster_resources()
    for unit, need in (("CPU", r.trial_cpu), ("GPU", r.trial_gpu)):  # a worker group that never fits
        if local and r.n_workers > 1 and need > have.get(unit, 0):
            raise SweepSpecError(f"resources: one trial's {r.n_workers} workers need {need:g} {unit}s "
                                 f"together, and this machine has {have.get(unit, 0):g}, so the trial "
                                 f"would wait forever.\nFix: fewer resources.workers or less per worker, "
                                 f"or --address a cluster with room for them")


def prepare_data(spec: SweepSpec) -> SweepSpec:
    """The driver fetches/decodes each dataset once before trials start; trials get an absolute
    data_dir (the per-node file lock in data.prepare stays as the fallback)."""
    from vggbn import data

    datasets = (list(spec.space["dataset"].probe_values()) if "dataset" in spec.space
                else [TrialConfig.from_flat({**spec.base, **c}).dataset for c in spec.cases or [{}]])
    base = dict(spec.base)
    if any(d != "synthetic" for d in datasets) and not base.get("data_dir"):
        base["data_dir"] = data.default_data_dir()
    for d in datasets:
        if d != "synthetic":
            data.prepare(d, base.get("data_dir"))
    return spec.model_copy(update={"base": base})


def _wait_for_final_upload(timeout: float = 600.0) -> None:
    """Wait for Ray's last upload of the experiment state to storage. In Ray 2.60 the snapshot
    forced at the end of fit() waits for the previous upload, then starts the last one in a
    daemon thread that nothing joins: an export right after fit() could read the state before
    it, and a process that exits at once could leave a stale state in S3."""
    import threading

    for t in threading.enumerate():
        target = getattr(t, "_target", None)
        if t is not threading.current_thread() and "_BackgroundProcess" in getattr(target, "__qualname__", ""):
            t.join(timeout)


def _trainable(spec: SweepSpec, exp: Experiment):
    from ray import tune

    from vggbn.sweep.schedulers import pbt
    from vggbn.sweep.trainable import vggbn_trial

    perturbed = tuple(pbt.keys(spec)) if spec.scheduler.type in pbt.TYPES else ()
    workers = spec.resources.model_dump() if spec.resources.n_workers > 1 else None
    fn = tune.with_parameters(vggbn_trial, experiment=exp.uri, checkpoint_every=spec.checkpoint_every,
                              perturbed=perturbed, workers=workers)
    if workers:  # the trial only drives its Train workers, which reserve cpu/gpu each (distributed.py)
        return tune.with_resources(fn, {"cpu": 0, "memory": DRIVER_MEMORY})
    res = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    if spec.resources.memory_gb:
        res["memory"] = int(spec.resources.memory_gb * 2**30)
    return tune.with_resources(fn, res)


def _reporter(spec: SweepSpec):
    from ray.tune import CLIReporter

    metrics = ["epoch", "train_loss"]
    metrics += ["val_acc"] if spec.primary_metric.startswith("val_") or "val_fraction" in spec.base else []
    metrics += ["test_acc"] + [m for m, _ in spec.objectives if m not in ("val_acc", "test_acc", *metrics)]
    common = set.intersection(*(set(c) for c in spec.cases)) if spec.cases else set()
    # keys every trial has (Ray's table fails on a conditional key that some trials lack)
    params = [k for k, d in spec.space.items() if d.kind != "when" or len(d.values) == len(spec.space[d.when].values)]
    params += sorted(f"{CASE_KEY}/{k}" for k in common)  # keys every case sets
    params += ["seed"] if spec.seeds else []
    params = params or [k for k in ("preset", "seed") if k in spec.base]
    return CLIReporter(parameter_columns=params, metric_columns=metrics, max_report_frequency=30,
                       sort_by_metric=False)


def _trial_dirname(trial) -> str:
    return TRIAL_DIR.format(trial_id=trial.trial_id)


def build_tuner(spec: SweepSpec, exp: Experiment | None = None):
    from ray import tune

    from vggbn.sweep import schedulers, search
    from vggbn.sweep.callbacks.progress import SweepProgress

    exp = exp or Experiment(spec.experiment_path())
    scheduler, callbacks = schedulers.build(spec)
    search_alg, param_space, num_samples, plan_callbacks = search.build(spec, exp.uri)
    callbacks = callbacks + plan_callbacks + tracking.callbacks(spec)  # TensorBoard, MLflow, W&B
    callbacks.append(SweepProgress(exp.uri, spec.trial_count(), spec.seeds is not None))  # a line per trial
    single = len(spec.objectives) == 1 or None  # several objectives: the searcher holds them
    storage_path, storage_fs = exp.ray_storage()  # object storage: the URI's filesystem + plain path
    return tune.Tuner(
        _trainable(spec, exp),
        param_space=param_space,
        tune_config=tune.TuneConfig(metric=single and spec.metric, mode=single and spec.mode,
                                    scheduler=scheduler,
                                    search_alg=search_alg, num_samples=num_samples,
                                    # a grid's plan searcher carries its own limiter (search.py)
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
            callbacks=callbacks, progress_reporter=_reporter(spec), verbose=1),
    )


def run_sweep(spec: SweepSpec, *, address: str | None = None, prepare: bool = True) -> dict:
    """Claim the experiment directory, run the sweep to the end, then export. Returns the export's
    summary. A start that fails before any trial ran gives its claim back."""
    from vggbn.sweep.export import export

    exp = Experiment(spec.experiment_path())
    tracking.check(spec.tracking)  # a missing extra fails before anything is claimed
    exp.claim(spec.name)
    try:
        check_ray()
        if prepare:
            spec = prepare_data(spec)
        local = _init_ray(address)
        _check_gpus(spec, local)
        spec = with_concurrency(spec)  # data-parallel trials: as many as worker groups fit
        exp.write_spec(spec.model_copy(update={"storage": exp.storage}))
        tuner = build_tuner(spec, exp)
    except BaseException:
        exp.release_claim()
        raise
    t0 = time.time()
    with _plan_env(spec):
        tuner.fit()
    _wait_for_final_upload()
    return export(exp.uri, wall_time_s=time.time() - t0)


@contextlib.contextmanager
def _plan_env(spec: SweepSpec, experiment: str | None = None):
    """For the Tuner's run: how many grid trials Ray keeps pending (search.pending_trials), and on
    resume where the experiment is now (the plan searcher re-reads its spec.yaml from there; the
    copy pickled at the start names where it was)."""
    from vggbn.sweep.search import PLAN_SPEC_ENV, pending_trials

    env = {"TUNE_MAX_PENDING_TRIALS_PG": pending_trials(spec), PLAN_SPEC_ENV: experiment}
    env = {k: v for k, v in env.items() if v}
    os.environ.update(env)
    try:
        yield
    finally:
        for k in env:
            os.environ.pop(k, None)


def resume_sweep(path: str, *, address: str | None = None) -> dict:
    """Continue an interrupted sweep: finished trials stay, unfinished ones continue from their
    last checkpoint, errored ones are retried (from their checkpoint)."""
    from ray import tune

    from vggbn.sweep.export import export

    exp = Experiment(path)
    spec = exp.spec()
    if not exp.has_ray_state():
        raise ExperimentError(f"{exp.uri}: the sweep was claimed but no trial ever started (no "
                              f"experiment_state-*.json).\nFix: if that start is dead, delete "
                              f"{exp.join('vggbn-claim.json')} and run `vggbn sweep` again")
    check_ray()
    tracking.check(spec.tracking)  # Ray's tuner.pkl holds the callbacks: their packages
    _init_ray(address)
    t0 = time.time()
    try:
        path, fs = exp.ray_path()
        tuner = tune.Tuner.restore(path, trainable=_trainable(spec, exp), resume_unfinished=True,
                                   resume_errored=True, storage_filesystem=fs)
    except (ValueError, RuntimeError, OSError, ModuleNotFoundError, AttributeError) as e:
        raise ExperimentError(f"{exp.uri}: Ray cannot restore this experiment "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:300]}).\nFix: finish it "
                              f"with the vggbn release that started it, or `vggbn export` what it "
                              f"has") from None
    with _plan_env(spec, exp.uri):
        tuner.fit()
    _wait_for_final_upload()
    return export(exp.uri, wall_time_s=time.time() - t0)


# what `extend` may change: the plan (the searcher re-reads it) and words. The scheduler, its
# budget, the retries and the resources come back from Ray's tuner.pkl as they were started (and a
# variant's new seeds on another device would not be its old ones), so they stay.
EXTENDABLE = ("space", "cases", "seeds", "num_samples", "description", "cost")


def _extension_problems(old: SweepSpec, new: SweepSpec) -> list[str]:
    """What in `new` is not an extension of `old` (the finished trials must stay what they are)."""
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    out = []
    for k in a:
        if k in EXTENDABLE + ("storage", "schema_version") or a[k] == b[k]:
            continue
        if isinstance(a[k], dict) and isinstance(b[k], dict):
            out += [f"{k}.{sub}: {a[k].get(sub)!r} -> {b[k].get(sub)!r}" for sub in {*a[k], *b[k]}
                    if a[k].get(sub) != b[k].get(sub)]
        else:
            out.append(f"{k}: {a[k]!r} -> {b[k]!r}")
    if set(old.space) != set(new.space):
        out.append(f"space: keys {sorted(old.space)} -> {sorted(new.space)} (a new swept key would change "
                   f"what the finished trials are)")
    for k in set(old.space) & set(new.space):
        # 1 and 1.0 are equal, but name different variants in the plan: compare the type too
        gone = [v for v in old.space[k].values
                if not any(v == w and type(v) is type(w) for w in new.space[k].values)]
        if old.space[k].kind != new.space[k].kind or gone:
            out.append(f"space.{k}: {old.space[k].describe()} -> {new.space[k].describe()} (values can "
                       f"be added, not removed)")
    if new.cases[:len(old.cases)] != old.cases:
        out.append("cases: the existing cases must stay, in order; add new ones at the end")
    if (old.seeds is None) != (new.seeds is None):
        out.append("seeds: a fixed seed grid stays fixed (add seeds to space.seed.grid), adaptive seeds "
                   "stay adaptive (raise seeds.max)")
    if new.num_samples < old.num_samples:
        out.append(f"num_samples: {old.num_samples} -> {new.num_samples} (it can grow, not shrink)")
    return out


def extend_sweep(path: str, overrides: dict[str, Any], *, address: str | None = None) -> dict:
    """More seeds or more variants for a grid sweep: the spec gains them, finished trials stay,
    the new ones join the same experiment (and its table) through the plan searcher on resume."""
    from vggbn.spec.model import _set_path

    exp = Experiment(path)
    old = exp.spec()
    fix = f"Fix: run a new sweep for it (vggbn sweep FILE), and `vggbn report {exp.uri} NEW` to compare"
    if old.search != "grid":
        raise ExperimentError(f"{exp.uri}: search {old.search}: `extend` adds seeds or variants to a grid "
                              f"sweep.\n{fix}")
    if not exp.has_ray_state() or not any(i.startswith("searcher-state") for i in exp.listdir()):
        raise ExperimentError(f"{exp.uri}: this sweep has no vggbn plan state (it never started, or it "
                              f"was run by a vggbn before 2026-11-28 on Ray's own grid).\n{fix}")
    raw = old.model_dump(mode="json")
    for k, v in overrides.items():
        _set_path(raw, k, v)
    try:
        new = SweepSpec.model_validate(raw)
    except Exception as e:  # noqa: BLE001  (pydantic's ValidationError, as load_spec words it)
        from vggbn.spec.model import _spec_errors

        msg = _spec_errors(e) if hasattr(e, "errors") else str(e)
        raise SweepSpecError(f"{exp.uri}: the extended spec is not valid: {msg}\nFix: change the --set "
                             f"values as said above") from None
    problems = _extension_problems(old, new)
    if problems:
        raise SweepSpecError(f"{exp.uri}: extend adds seeds or variants and keeps what ran; this "
                             f"changes {'; '.join(problems)}.\nFix: --set only space.KEY.grid (adding "
                             f"values), cases, seeds.max / seeds.ci_halfwidth, num_samples, cost; for "
                             f"another setup (or other resources, budget, retries) run a new sweep")
    if new.model_dump() != old.model_dump():
        exp.write_spec(new.model_copy(update={"storage": exp.storage}))
    # already extended (a resume that failed after the spec was written): this finishes it
    return resume_sweep(exp.uri, address=address)
