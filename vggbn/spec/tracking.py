"""Where a sweep's trials are tracked besides the experiment directory: the sweep file's
`tracking:` section (MLflow tracking URI, W&B project) and its rules. Pure: no Ray, no mlflow, no
wandb; the callbacks that log there and the check of their packages are vggbn/sweep/callbacks/.

TensorBoard files are always written (in every trial's directory). MLflow and W&B are optional
extras (`pip install 'vggbn[mlflow]'`, `'vggbn[wandb]'`): one MLflow experiment / W&B group per
sweep (its name), one run per trial.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

MLFLOW_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")
_WANDB_PROJECT = re.compile(r"^(?:[A-Za-z0-9_-]{1,64}/)?[A-Za-z0-9_.-]{1,128}$")
URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # 2+ letters: a drive (C:) is a path
FIX_MLFLOW = "use sqlite:///PATH/mlflow.db (a local store) or http(s)://HOST:PORT (a tracking server)"


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
            raise ValueError(f"{v!r} is not a tracking URI; {FIX_MLFLOW}")
        scheme = v.split(":", 1)[0].lower() if URI_SCHEME.match(v) else ""
        if scheme and scheme.split("+")[0] not in MLFLOW_SCHEMES:
            raise ValueError(f"{v!r}: MLflow does not log to {scheme}:// URIs; {FIX_MLFLOW}")
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
