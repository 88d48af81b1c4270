"""The column types of the export: one dtype per column name, whichever sweep, storage or vggbn
version wrote the file.

- ids and words (trial_id, sweep, label, error, hostname, prov_*, ...): pandas' `str`, NaN where empty
- status: an ordered categorical of vggbn.schema.STATUSES (completed < early_stopped < diverged <
  errored < incomplete)
- counts and indices (epoch, step, seed, epochs_run, params, batch_size, ...): int64, or pandas'
  nullable Int64 where some row has no value (a trial that never started has no final epoch)
- metrics, rates and sizes (test_acc, lr, width, loss, beta, ...): float64, NaN where not measured
  (val_acc without a validation split)
- flags (bn, diverged, residual, pbt_exploit, ...): bool, or nullable boolean where some row has none
- a config's tuple (probe_etas): a tuple of floats per row

A column the schema names but a file lacks (an older export) is added empty in its type, so the
frames of several sweeps concatenate without object columns.
"""

from __future__ import annotations

import types
import typing

import numpy as np
import pandas as pd

from vggbn.config import TrialConfig
from vggbn.schema import (EPOCH_METRICS, EPOCHS, METRICS, PBT_DONOR, PBT_DONOR_EPOCH, PBT_EXPLOIT, PBT_EXPLOITS,
                          PBT_PREFIX, PBT_SCHEDULE, PROBES, STATUSES, STEPS, SURFACES, TRIALS)

STATUS = pd.CategoricalDtype(list(STATUSES), ordered=True)


class ColumnError(ValueError):
    """A column whose values do not fit its type (the caller names the file)."""


def _config_kind(annotation) -> str:
    """'int', 'float', 'bool', 'str' or 'tuple' of a TrialConfig field's annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "str"
    if origin in (typing.Union, types.UnionType):
        return _config_kind(args[0])
    if origin is tuple:
        return "tuple"
    return {int: "int", float: "float", bool: "bool"}.get(annotation, "str")


CONFIG = {k: _config_kind(f.annotation) for k, f in TrialConfig.model_fields.items()}
INTS = {"epoch", "step", "epochs_run", "best_epoch", "params", "failures", "timestamp", PBT_EXPLOITS,
        PBT_DONOR_EPOCH}
FLOATS = {*METRICS, "lr", "final_lr", "epoch_time_s", "images_per_s", "gflops", "wall_time_s",
          "best_test_acc", "best_val_acc", "time_total_s", "eta", "eta_mult", "base_loss", "loss",
          "grad_diff", "beta", "alpha", "acc"}
BOOLS = {"diverged", PBT_EXPLOIT, "prov_git_dirty"}
STRINGS = {"trial_id", "sweep", "error", "node", "hostname", "node_id", "restore_notes", "export_notes", "kind",
           PBT_DONOR, PBT_SCHEDULE, "variant", "label", "section"}

# what each file always has, filled empty where an older export lacks it
EXPECTED = {
    TRIALS: ("trial_id", "sweep", "status", *METRICS, "final_lr", "diverged", "epochs_run", "best_epoch",
             "best_test_acc", "best_val_acc", "params", "gflops", "wall_time_s", "error"),
    EPOCHS: ("trial_id", *EPOCH_METRICS, "time_total_s"),
    STEPS: ("trial_id", "step", "epoch", "train_loss", "lr"),
    PROBES: ("trial_id", "step", "epoch", "eta", "eta_mult", "base_loss", "loss", "grad_diff", "beta"),
    SURFACES: ("trial_id", "kind", "alpha", "beta", "loss", "acc", "epoch"),
}


def kind_of(name: str, file: str) -> str | None:
    """The type of a column of `file` (TRIALS, EPOCHS, ...), or None for a column vggbn does not know."""
    if name == "status":
        return "status"
    if name in STRINGS:
        return "str"
    if name in INTS:
        return "int"
    if name in BOOLS:
        return "bool"
    if name in FLOATS:  # lr: per epoch or step in those files, the config's in trials
        return "float"
    if name.startswith("prov_"):
        return "str"
    if file == TRIALS and name in CONFIG:
        return CONFIG[name]
    key = name.removeprefix(PBT_PREFIX)
    if key != name and key in CONFIG:  # the value in force of a PBT-searched key
        return CONFIG[key]
    return None


def _convert(col: pd.Series, kind: str) -> pd.Series:
    if kind == "status":
        bad = sorted(set(col.dropna().astype(str)) - set(STATUSES))
        if bad or col.isna().any():
            raise ColumnError(f"column status: unknown status {(bad or ['(empty)'])[0]!r}")
        return col.astype(str).astype(STATUS)
    if kind == "str":
        return col.astype("str")
    if kind == "tuple":
        return col.map(lambda v: tuple(float(x) for x in v) if isinstance(v, (list, tuple, np.ndarray)) else v)
    if kind == "bool":
        if col.dtype == bool:
            return col
        vals = set(col.dropna().map(lambda v: v.item() if hasattr(v, "item") else v))
        if not vals <= {True, False}:  # 0 and 1 are False and True here
            raise ColumnError(f"column {col.name}: {sorted(vals, key=str)[0]!r} is not true or false")
        return col.astype("boolean") if col.isna().any() else col.astype(bool)
    try:
        num = pd.to_numeric(col)
    except (ValueError, TypeError) as e:
        raise ColumnError(f"column {col.name}: {' '.join(str(e).split())[:120]} (a number was expected)") from None
    if kind == "float":
        return num.astype("float64")
    whole = num.dropna()
    if len(whole) and not (whole == np.round(whole.astype("float64"))).all():
        raise ColumnError(f"column {col.name}: {whole[whole != np.round(whole.astype('float64'))].iloc[0]!r} "
                          f"is not a whole number")
    return num.astype("Int64") if num.isna().any() else num.astype("int64")


def typed(df: pd.DataFrame, file: str) -> pd.DataFrame:
    """`df` (a frame of `file`: TRIALS, EPOCHS, STEPS, PROBES or SURFACES) with every column vggbn
    knows in its type and the EXPECTED columns added where missing. ColumnError names a column
    whose values do not fit."""
    df = df.copy()
    for name in EXPECTED.get(file, ()):
        if name not in df.columns:
            df[name] = pd.Series([None] * len(df), index=df.index, dtype=object)
    for name in df.columns:
        kind = kind_of(str(name), file)
        if kind is not None:
            df[name] = _convert(df[name], kind)
    return df
