"""Every private API of Ray (and of torch/CPython) that vggbn uses, in one place, each probed at start.

Each entry says what it is, why vggbn needs it and how a missing or changed one shows. `check_ray`
runs the probes once, before a sweep claims anything or starts Ray (runner.py), and names what is
missing, the Ray release found and the releases vggbn is tested with (pyproject.toml pins them).
Ray is imported inside the functions: `vggbn status` reads the experiment state without loading it.
"""

from __future__ import annotations

import atexit
import copy
import inspect
import json
import logging
import threading
from typing import Callable

from vggbn.errors import SpecError

RAY_TESTED = ("2.60",)  # the Ray releases the test suite ran on

# ---------------------------------------------------------------------- experiment_state JSON
# Ray's newest `experiment_state-*.json` (the snapshot Tuner.restore reads) is a private format:
# `vggbn status` reads it to say where a sweep stands without starting Ray or unpickling anything
# (safe on a bucket one may only read). Ray 2.60's layout: {"trial_data": [[trial_json, run_json],
# ...], "runner_data": {"_checkpoint_period": "auto" | seconds, ...}}; the trial document has
# `trial_id`, `status`, `config`, the run document `last_result`, `num_failures`. A changed layout
# is a KeyError/TypeError/ValueError here, which status words as the file Ray wrote not being one
# vggbn can read.
EXPERIMENT_STATE_GLOB = "experiment_state-*.json"


def experiment_state(raw: bytes) -> tuple[dict, list[tuple[dict, dict]], float | None]:
    """(the snapshot, its trials as (trial, run) documents, the driver's snapshot period in seconds,
    None for Ray's "auto") of an experiment_state JSON file's bytes."""
    doc = json.loads(raw or b"")
    trials = [(json.loads(a), json.loads(b)) for a, b in doc["trial_data"]]
    period = str((doc.get("runner_data") or {}).get("_checkpoint_period", "auto"))
    return doc, trials, float(period) if period.replace(".", "", 1).isdigit() else None


# ---------------------------------------------------------------------- Ray Train V2
# `ray.train.v2._internal.constants.is_v2_enabled`: whether Ray Train V2 runs (RAY_TRAIN_V2_ENABLED,
# on by default in Ray 2.60). A data-parallel trial (data_parallel.run_trial) is a Tune function
# trial driving a TorchTrainer, which only V2 allows; under V1 the trial errors with a Fix instead
# of failing inside Ray. Ray exposes no public way to ask. A moved or renamed one is an
# ImportError/AttributeError at the probe.
def train_v2_enabled() -> bool:
    """Whether Ray Train V2 is in force in this process."""
    from ray.train.v2._internal.constants import is_v2_enabled

    return bool(is_v2_enabled())


# ---------------------------------------------------------------------- the schedulers
def mark_trial_to_checkpoint(tune_controller, trial) -> None:
    """`TuneController._mark_trial_to_checkpoint`: Ray re-serialises a trial into the experiment
    snapshot only when it is marked; a trial whose node died is no longer tracked with an actor, so
    its final ERROR is never marked and the snapshot keeps it RUNNING (export said "incomplete",
    resume re-ran it). The schedulers' on_trial_error comes just before the status change; the
    snapshot is written after it."""
    tune_controller._mark_trial_to_checkpoint(trial)


def load_legacy_asha(asha, state: dict) -> None:
    """ASHA's rungs as an earlier vggbn saved them (its own format, of ASHA's private fields
    `_brackets`, `_rungs`, `_trial_info`, `_num_stopped`); today's state goes through ASHA's public
    save/restore. `_stopped` is vggbn's PersistentASHA's own."""
    for b, rungs in zip(asha._brackets, state["rungs"]):
        for (milestone, rec), (m, saved) in zip(b._rungs, rungs):
            if milestone != m:
                raise ValueError(f"ASHA rung {m} in the saved state, {milestone} in the spec")
            rec.clear()
            rec.update(saved)
    asha._trial_info = {t: asha._brackets[i] for t, i in state["trial_bracket"].items()}
    asha._stopped = set(state["stopped"])
    asha._num_stopped = state["num_stopped"]


# ---------------------------------------------------------------------- the logger callbacks
# TensorBoard: vggbn's TensorBoard overrides TBXLoggerCallback's hparams hook (Ray calls it at a
# trial's end) and writes through the trial's SummaryWriter that Ray keeps in `_trial_writer`.
TBX_HPARAMS_HOOK = "_try_log_hparams"


def tbx_file_writer(callback, trial):
    """The tensorboardX FileWriter of `trial`'s events file, as Ray's TBXLoggerCallback opened it."""
    return callback._trial_writer[trial].file_writer


def mlflow_runs(callback) -> dict:
    """`MLflowLoggerCallback._trial_runs`: trial -> MLflow run id, which Ray's logging methods read;
    vggbn's MLflow fills it with the run it found (a resumed trial) or created."""
    return callback._trial_runs


def wandb_logging_actor() -> type:
    """`ray.air.integrations.wandb._WandbLoggingActor`, the class of W&B's per-trial logging actor
    (vggbn's waits for wandb-core before Ray kills it)."""
    from ray.air.integrations import wandb

    return wandb._WandbLoggingActor


def use_logging_actor(callback_cls: type, actor_cls: type) -> None:
    """`WandbLoggerCallback._logger_actor_cls`: the actor class Ray starts for each trial."""
    callback_cls._logger_actor_cls = actor_cls


def set_wandb_api_key() -> None:
    """`ray.air.integrations.wandb._set_api_key`, what Ray's W&B callback runs at setup: a
    ValueError when W&B online has no API key (checked before anything is claimed)."""
    from ray.air.integrations.wandb import _set_api_key

    _set_api_key()


# ---------------------------------------------------------------------- the driver
def restored_callbacks(tuner) -> list:
    """The callbacks `Tuner.restore` unpickled from tuner.pkl (`Tuner._local_tuner`'s run config):
    the runner tells the plan searcher and the progress lines where the experiment is now (it may
    have moved since its start). [] for a Ray-client Tuner (it runs on the cluster)."""
    local = getattr(tuner, "_local_tuner", None)
    return list(local.get_run_config().callbacks or []) if local is not None else []


def wait_for_final_upload(timeout: float = 600.0) -> None:
    """Wait for Ray's last upload of the experiment state to storage. In Ray 2.60 the snapshot
    forced at the end of fit() waits for the previous upload, then starts the last one in a daemon
    thread that nothing joins: an export right after fit() could read the state before it, and a
    process that exits at once could leave a stale state in S3. The thread is found by its target,
    `ray.train._internal.syncer._BackgroundProcess`, in CPython's `Thread._target`."""
    for t in threading.enumerate():
        target = getattr(t, "_target", None)
        if t is not threading.current_thread() and "_BackgroundProcess" in getattr(target, "__qualname__", ""):
            t.join(timeout)


def validate_cluster_config(cfg: dict) -> None:
    """`ray.autoscaler._private.util`'s prepare_config + validate_config, the checks `ray up` runs
    (quietly: its INFO lines are not vggbn's to print). Raises jsonschema.ValidationError or
    ValueError for a config Ray's cluster schema refuses."""
    from ray.autoscaler._private.util import logger, prepare_config, validate_config

    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        validate_config(prepare_config(copy.deepcopy(cfg)))
    finally:
        logger.setLevel(level)


# ---------------------------------------------------------------------- the probes
def _has(owner, *names: str) -> bool:
    return all(hasattr(owner, n) for n in names)


def _callable(owner, name: str) -> bool:
    return callable(getattr(owner, name, None))


def _source_has(obj, text: str) -> bool:
    """For an attribute Ray creates in a method (found in its source, without calling it)."""
    try:
        return text in inspect.getsource(obj)
    except (OSError, TypeError):
        return False


def _core_probes() -> list[tuple[str, Callable[[], bool]]]:
    import ray.train._internal.syncer as syncer
    import ray.train.v2._internal.constants as train_v2
    from ray import tune
    from ray.autoscaler._private import util as autoscaler_util
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.impl.tuner_internal import TunerInternal
    from ray.tune.logger import TBXLoggerCallback
    from ray.tune.schedulers import ASHAScheduler

    def asha_fields() -> bool:
        a = ASHAScheduler(time_attr="epoch", max_t=4, grace_period=1)
        return _has(a, "_brackets", "_trial_info", "_num_stopped") and _has(a._brackets[0], "_rungs")

    def state_file() -> bool:
        return getattr(TuneController, "CKPT_FILE_TMPL", "").replace("{}", "*") == EXPERIMENT_STATE_GLOB

    def local_tuner() -> bool:
        return "_local_tuner" in getattr(tune.Tuner, "__annotations__", {}) and _callable(TunerInternal,
                                                                                          "get_run_config")

    return [
        ("TuneController._mark_trial_to_checkpoint", lambda: _callable(TuneController, "_mark_trial_to_checkpoint")),
        (f"TuneController.CKPT_FILE_TMPL {EXPERIMENT_STATE_GLOB}", state_file),
        ("ASHAScheduler.save", lambda: _callable(ASHAScheduler, "save")),
        ("ASHAScheduler.restore", lambda: _callable(ASHAScheduler, "restore")),
        ("ASHAScheduler._brackets/_rungs/_trial_info/_num_stopped", asha_fields),
        (f"TBXLoggerCallback.{TBX_HPARAMS_HOOK}", lambda: _callable(TBXLoggerCallback, TBX_HPARAMS_HOOK)),
        ("TBXLoggerCallback._trial_writer", lambda: _source_has(TBXLoggerCallback.__init__, "self._trial_writer")),
        ("Tuner._local_tuner", local_tuner),
        ("ray.train._internal.syncer._BackgroundProcess", lambda: _callable(syncer, "_BackgroundProcess")),
        ("threading.Thread._target", lambda: _has(threading.Thread(target=int), "_target")),
        ("atexit._run_exitfuncs", lambda: _callable(atexit, "_run_exitfuncs")),
        ("ray.train.v2._internal.constants.is_v2_enabled", lambda: _callable(train_v2, "is_v2_enabled")),
        ("ray.autoscaler._private.util.prepare_config/validate_config",
         lambda: _has(autoscaler_util, "prepare_config", "validate_config", "logger")),
    ]


def _mlflow_probes() -> list[tuple[str, Callable[[], bool]]]:
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return [("MLflowLoggerCallback._trial_runs", lambda: _source_has(MLflowLoggerCallback, "self._trial_runs"))]


def _wandb_probes() -> list[tuple[str, Callable[[], bool]]]:
    from ray.air.integrations import wandb

    return [("ray.air.integrations.wandb._WandbLoggingActor", lambda: _callable(wandb._WandbLoggingActor, "run")),
            ("WandbLoggerCallback._logger_actor_cls", lambda: _has(wandb.WandbLoggerCallback, "_logger_actor_cls")),
            ("ray.air.integrations.wandb._set_api_key", lambda: _callable(wandb, "_set_api_key"))]


def check_ray(mlflow: bool = False, wandb: bool = False) -> None:
    """The Ray release and the internals vggbn relies on, once, before anything starts (with
    `mlflow`/`wandb`: those of Ray's integrations the sweep's tracking uses too)."""
    import ray

    probes = _core_probes() + (_mlflow_probes() if mlflow else []) + (_wandb_probes() if wandb else [])
    missing = []
    for name, present in probes:
        try:
            ok = present()
        except Exception:  # noqa: BLE001  (a changed internal can fail in any way)
            ok = False
        if not ok:
            missing.append(name)
    if missing:
        raise SpecError(f"Ray {ray.__version__} lacks {', '.join(missing)}, which vggbn uses; "
                        f"vggbn is tested with Ray {', '.join(RAY_TESTED)}.",
                        f"pip install 'ray[tune]=={RAY_TESTED[-1]}.*'")


# ---------------------------------------------------------------------- CPython: exit handlers
def run_exit_handlers() -> None:
    """`atexit._run_exitfuncs()`: the handlers the interpreter runs at exit (Ray's shutdown,
    logging's flush, weakref finalizers), run by `vggbn` itself before it leaves through os._exit
    (vggbn.cli.exit_without_teardown: native threads that outlive finalization cannot crash the
    exit). Private, but unchanged since Python 2; probed by check_ray like the rest."""
    atexit._run_exitfuncs()
