"""Experiment tracking: TensorBoard files in every experiment; MLflow and W&B runs as optional extras.

TensorBoard: Ray writes each trial's scalars (`ray/tune/<metric>`, one point per epoch) to
`<storage>/<name>/trial_<id>/events.out.tfevents.*`; `loggers.TensorBoard` replaces Ray's hparams
record with one that lists the same swept keys for every trial (their resolved values), so the
HParams tab has one column per swept key and one row per trial, cases and Optuna's conditional
keys included. Ray's own record holds only what its searcher suggested, and TensorBoard takes
the columns from the first trial it reads.

MLflow and W&B are Ray's logger callbacks on the driver (trackers.py): one MLflow experiment / W&B group per
sweep (its name), one run per trial, the trial's config as params, its per-epoch metrics with the
epoch as the step, and tags naming the variant and the seed. Their packages are extras
(`pip install 'vggbn[mlflow]'`, `'vggbn[wandb]'`): `check` says what is missing before Ray starts.
The callbacks are pickled into Ray's tuner.pkl, so `vggbn resume` logs to the same places; a
resumed trial continues its MLflow run (found by its `vggbn.trial_id` tag) and its W&B run (id =
trial id; offline, a second offline-run folder with that id). W&B writes to the driver's working
directory (`./wandb/`) or $WANDB_DIR. No Ray import at module level (spec.py imports `Tracking`).
"""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

MLFLOW_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")
_WANDB_PROJECT = re.compile(r"^(?:[A-Za-z0-9_-]{1,64}/)?[A-Za-z0-9_.-]{1,128}$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # 2+ letters: a drive (C:) is a path
_WANDB_OFFLINE = ("offline", "disabled", "dryrun")
_FIX_MLFLOW = "use sqlite:///PATH/mlflow.db (a local store) or http(s)://HOST:PORT (a tracking server)"


class Tracking(BaseModel):
    """Where trials are tracked besides the experiment directory (TensorBoard files are always there)."""

    model_config = ConfigDict(extra="forbid")
    mlflow: str | None = Field(None, description="MLflow tracking URI: sqlite:///mlflow.db (a local "
                                                 "store), http(s)://HOST:PORT, databricks")
    wandb: str | None = Field(None, description="W&B project (or ENTITY/PROJECT); WANDB_MODE=offline "
                                                "writes runs locally for `wandb sync`")

    @field_validator("mlflow")
    @classmethod
    def _mlflow_uri(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.strip() or v != v.strip() or any(c.isspace() for c in v):
            raise ValueError(f"{v!r} is not a tracking URI; {_FIX_MLFLOW}")
        scheme = v.split(":", 1)[0].lower() if _SCHEME.match(v) else ""
        if scheme and scheme.split("+")[0] not in MLFLOW_SCHEMES:
            raise ValueError(f"{v!r}: MLflow does not log to {scheme}:// URIs; {_FIX_MLFLOW}")
        if scheme == "sqlite" and not v.startswith("sqlite:///"):
            raise ValueError(f"{v!r}: a SQLite store is sqlite:///PATH (three slashes, then the file)")
        if scheme in ("http", "https") and not re.match(r"^https?://[^/]+", v):
            raise ValueError(f"{v!r}: no host; write {scheme}://HOST:PORT")
        return v

    @field_validator("wandb")
    @classmethod
    def _wandb_project(cls, v: str | None) -> str | None:
        if v is not None and not _WANDB_PROJECT.match(v):
            raise ValueError(f"{v!r} is not a W&B project name (letters, digits, _ . -, at most 128; "
                             f"ENTITY/PROJECT names the entity too)")
        return v


# ----------------------------------------------------------------------------- before Ray starts
def _import(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:  # installed, but one of its own dependencies is not
            why = f"the {module} package is installed, but cannot be imported ({e})"
        else:
            why = f"the {module} package is not installed"
    except Exception as e:  # noqa: BLE001  (a broken install raises anything on import)
        why = f"the {module} package cannot be imported ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    from vggbn.spec.model import SweepSpecError

    raise SweepSpecError(f"tracking.{module}: {why}.\nFix: pip install 'vggbn[{module}]' (or remove "
                         f"tracking.{module} from the sweep file)")


def _local_mlflow(uri: str) -> bool:
    """A store on this machine (a SQLite file, a directory): opened by the pre-flight check."""
    return uri.startswith(("sqlite:", "file:")) or not _SCHEME.match(uri)


def check(tracking: Tracking) -> None:
    """The packages and stores the spec's tracking needs, before anything is claimed or started:
    a missing package, a local MLflow store MLflow refuses, or W&B online without an API key."""
    from vggbn.spec.model import SweepSpecError

    if tracking.mlflow:
        _import("mlflow")
        if _local_mlflow(tracking.mlflow):  # opened now (a server is not called: it may retry for minutes)
            from mlflow.tracking import MlflowClient

            uri = mlflow_uri(tracking.mlflow)
            try:
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
            except Exception as e:  # noqa: BLE001  (MlflowException, sqlalchemy's, OSError)
                first = re.split(r"(?<=\.)\s", " ".join(str(e).split()), maxsplit=1)[0][:300]
                fix = _FIX_MLFLOW
                if not uri.startswith("sqlite:"):
                    path = uri.removeprefix("file://")
                    fix = (f"use sqlite:///{path.rstrip('/')}/mlflow.db (MLflow's local store), or set "
                           f"MLFLOW_ALLOW_FILE_STORE=true to keep a directory store")
                raise SweepSpecError(f"tracking.mlflow: MLflow cannot open {uri} ({type(e).__name__}: "
                                     f"{first}).\nFix: {fix}") from None
    if tracking.wandb:
        _import("wandb")
        if os.environ.get("WANDB_MODE", "").lower() not in _WANDB_OFFLINE:
            from ray.air.integrations.wandb import _set_api_key  # what Ray's callback runs at setup

            try:
                _set_api_key()
            except ValueError:
                raise SweepSpecError("tracking.wandb: no W&B API key (WANDB_API_KEY unset and not logged "
                                     "in).\nFix: `wandb login`, or export WANDB_API_KEY=..., or "
                                     "WANDB_MODE=offline to write the runs locally (`wandb sync` uploads "
                                     "them later)") from None


def mlflow_uri(uri: str) -> str:
    """A local store's path made absolute (a resume may run from another working directory)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri.removeprefix("sqlite:///"))
    return uri if _SCHEME.match(uri) else os.path.abspath(os.path.expanduser(uri))


# ----------------------------------------------------------------------------- the callbacks
def callbacks(spec) -> list:
    """Ray Tune logger callbacks for the spec's tracking (TensorBoard's always, then MLflow, W&B)."""
    from vggbn.sweep.callbacks.tensorboard import TensorBoard  # Ray's logger callbacks, subclassed

    swept = swept_keys(spec)
    out: list = [TensorBoard(swept)]
    if spec.tracking.mlflow or spec.tracking.wandb:
        from vggbn.sweep.callbacks import trackers

        if spec.tracking.mlflow:
            out.append(trackers.MLflow(mlflow_uri(spec.tracking.mlflow), spec.name, swept))
        if spec.tracking.wandb:
            out.append(trackers.WandB(spec.tracking.wandb, spec.name, swept))
    return out


def swept_keys(spec) -> list[str]:
    """What differs between trials: every key a case sets, the space's keys, the seed (last)."""
    keys = [k for c in spec.cases for k in c] + list(spec.space)
    return [*dict.fromkeys(k for k in keys if k != "seed"), "seed"]


def trial_values(config: dict) -> dict[str, Any]:
    """A trial's resolved config (as the trial will resolve it), or its raw flat keys if it cannot
    resolve (that trial errors on its own)."""
    from vggbn.config import ConfigError, TrialConfig
    from vggbn.spec.model import flat_config

    flat = flat_config(config)
    try:
        return TrialConfig.from_flat(flat).to_flat()
    except ConfigError:
        return flat


def labels(values: dict[str, Any], swept: list[str]) -> tuple[str, str]:
    """(variant, seed): 'bn=True, lr=0.001' and '0' — what runs are grouped and compared by."""
    variant = ", ".join(f"{k}={values.get(k)}" for k in swept if k != "seed") or "all"
    return variant, str(values.get("seed"))


def scalar(v: Any) -> Any:
    """A config value as a tracker's scalar: lists (probe_etas) as their text."""
    return v if isinstance(v, (bool, int, float, str)) or v is None else str(list(v) if isinstance(v, tuple) else v)
