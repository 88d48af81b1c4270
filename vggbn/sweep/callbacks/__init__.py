"""Ray Tune callbacks, one module each: progress (a line per finished trial), storage (a full disk
ends the run), tensorboard (always),
mlflow and wandb (optional extras); trial_values.py is what the trackers record of a trial.
`callbacks(spec)` builds the trackers a spec asks for, `check(tracking)` says before Ray starts
what their packages or stores lack.

tuner.pkl files name `vggbn.sweep.loggers.TensorBoard`, `vggbn.sweep.trackers.MLflow` / `.WandB`
/ `._WandbActor` and `vggbn.sweep.progress.SweepProgress` (where they were defined before this
package): compat.py maps those paths here.
"""

from __future__ import annotations

import importlib
import os
import re

from vggbn.errors import SpecError
from vggbn.spec.tracking import FIX_MLFLOW, URI_SCHEME, Tracking
from vggbn.sweep import ray_compat
from vggbn.sweep.callbacks.mlflow import MLflow
from vggbn.sweep.callbacks.progress import SweepProgress
from vggbn.sweep.callbacks.storage import StorageGuard
from vggbn.sweep.callbacks.tensorboard import TensorBoard
from vggbn.sweep.callbacks.trial_values import searched_keys
from vggbn.sweep.callbacks.wandb import WandB, WandbActor

__all__ = ["SweepProgress", "StorageGuard", "TensorBoard", "MLflow", "WandB", "WandbActor", "callbacks", "check",
           "mlflow_uri"]

WANDB_OFFLINE = ("offline", "disabled", "dryrun")  # WANDB_MODE values that need no API key


# ----------------------------------------------------------------------------- before Ray starts
def _import(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:  # installed, but one of its own dependencies is not
            why = f"the {module} package is installed, but cannot be imported ({e})"
        else:
            why = f"the {module} package is not installed"
    except Exception as e:  # noqa: BLE001  (a broken install raises anything on import)
        why = f"the {module} package cannot be imported ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    raise SpecError(f"tracking.{module}: {why}.",
                    f"pip install 'vggbn[{module}]' (or remove tracking.{module} from the sweep file)")


def _local_mlflow(uri: str) -> bool:
    """A store on this machine (a SQLite file, a directory): opened by the pre-flight check."""
    return uri.startswith(("sqlite:", "file:")) or not URI_SCHEME.match(uri)


def check(tracking: Tracking) -> None:
    """The packages and stores the spec's tracking needs, before anything is claimed or started:
    a missing package, a local MLflow store MLflow refuses, or W&B online without an API key."""
    if tracking.mlflow:
        _import("mlflow")
        if _local_mlflow(tracking.mlflow):  # opened now (a server is not called: it may retry for minutes)
            from mlflow.tracking import MlflowClient

            uri = mlflow_uri(tracking.mlflow)
            try:
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
            except Exception as e:  # noqa: BLE001  (MlflowException, sqlalchemy's, OSError)
                first = re.split(r"(?<=\.)\s", " ".join(str(e).split()), maxsplit=1)[0][:300]
                fix = FIX_MLFLOW
                if not uri.startswith("sqlite:"):
                    path = uri.removeprefix("file://")
                    fix = (f"use sqlite:///{path.rstrip('/')}/mlflow.db (MLflow's local store), or set "
                           f"MLFLOW_ALLOW_FILE_STORE=true to keep a directory store")
                raise SpecError(f"tracking.mlflow: MLflow cannot open {uri} ({type(e).__name__}: "
                                f"{first}).", fix) from None
    if tracking.wandb:
        _import("wandb")
        if os.environ.get("WANDB_MODE", "").lower() not in WANDB_OFFLINE:  # W&B's own setting
            try:
                ray_compat.set_wandb_api_key()  # what Ray's callback runs at setup
            except ValueError:
                raise SpecError("tracking.wandb: no W&B API key (WANDB_API_KEY unset and not logged in).",
                                "`wandb login`, or export WANDB_API_KEY=..., or WANDB_MODE=offline to "
                                "write the runs locally (`wandb sync` uploads them later)") from None


def mlflow_uri(uri: str) -> str:
    """A local store's path made absolute (a resume may run from another working directory)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri.removeprefix("sqlite:///"))
    return uri if URI_SCHEME.match(uri) else os.path.abspath(os.path.expanduser(uri))


# ----------------------------------------------------------------------------- the callbacks
def callbacks(spec) -> list:
    """Ray Tune logger callbacks for the spec's tracking (TensorBoard's always, then MLflow, W&B)."""
    searched = searched_keys(spec)
    out: list = [TensorBoard(searched)]
    if spec.tracking.mlflow:
        out.append(MLflow(mlflow_uri(spec.tracking.mlflow), spec.name, searched))
    if spec.tracking.wandb:
        out.append(WandB(spec.tracking.wandb, spec.name, searched))
    return out
