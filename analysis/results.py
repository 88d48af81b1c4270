"""Load exported sweep directories (trials/epochs/steps.parquet) into DataFrames.

A *variant* is a trial's config without its seed (and without execution-only knobs such as the
device or thread count). Early-stopped, errored, diverged and incomplete trials are kept and
counted, never dropped silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from vggbn.config import PRESETS, TrialConfig
from vggbn.schema import EPOCHS, PARQUET_META_KEY, PROBES, SCHEMA_VERSION, STATUSES, STEPS, SURFACES, TRIALS

# knobs that change how a trial runs, not what it computes: not part of a variant
EXECUTION_KEYS = {"seed", "data_dir", "device", "cpu_threads", "compile", "eval_batch_size",
                  "record_steps"}
CONFIG_KEYS = list(TrialConfig.model_fields)


class ResultsError(ValueError):
    """A results directory that cannot be analysed: names the file and the fix."""


@dataclass
class Results:
    trials: pd.DataFrame
    epochs: pd.DataFrame
    steps: pd.DataFrame | None
    probes: pd.DataFrame | None = None
    surfaces: pd.DataFrame | None = None
    specs: list[dict] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return bool((self.trials["status"] == "incomplete").any())


REQUIRED = {TRIALS: ("trial_id", "sweep", "status"), EPOCHS: ("trial_id", "epoch"),
            STEPS: ("trial_id", "step"), PROBES: ("trial_id", "step"), SURFACES: ("trial_id", "kind")}


def _read(path: Path, fix: str) -> tuple[pd.DataFrame, dict]:
    """A parquet file of the export and its vggbn metadata; ResultsError when it is damaged."""
    try:
        df = pd.read_parquet(path)
        meta = json.loads((pq.read_schema(path).metadata or {}).get(PARQUET_META_KEY, b"{}"))
    except Exception as e:  # noqa: BLE001  (pyarrow raises several kinds for a damaged file)
        raise ResultsError(f"{path}: not a readable parquet file ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:200]}).\nFix: {fix}") from None
    missing = [c for c in REQUIRED.get(path.name, ()) if c not in df.columns]
    if missing or not isinstance(meta, dict):
        raise ResultsError(f"{path}: not a vggbn export (no column {', '.join(missing) or 'metadata'}).\n"
                           f"Fix: {fix}")
    if meta.get("schema_version", 0) > SCHEMA_VERSION:
        raise ResultsError(f"{path}: written by a newer vggbn (schema {meta['schema_version']}; this one "
                           f"reads up to {SCHEMA_VERSION}).\nFix: upgrade vggbn")
    return df, meta


def load(*paths: str | Path) -> Results:
    """One or more sweep directories (each with trials.parquet) -> Results with variants labelled."""
    trials, epochs, steps, probes, surfaces, specs = [], [], [], [], [], []
    for p in paths:
        p = Path(p)
        fix = f"`vggbn export {p}` rewrites the export from Ray's files"
        if not p.is_dir():
            raise ResultsError(f"{p}: no such directory.\nFix: give the directory of a finished or "
                               f"interrupted sweep, e.g. results/quick")
        if not (p / TRIALS).is_file():
            raise ResultsError(f"{p}: no {TRIALS} here.\nFix: give the directory of a finished or "
                               f"interrupted sweep, e.g. results/quick, or run `vggbn export {p}` first")
        t, meta = _read(p / TRIALS, fix)
        e = _read(p / EPOCHS, fix)[0] if (p / EPOCHS).is_file() else pd.DataFrame(columns=["trial_id", "epoch"])
        bad = sorted(set(t["status"].astype(str)) - set(STATUSES))
        if bad:
            raise ResultsError(f"{p / TRIALS}: unknown status {bad[0]!r}.\nFix: {fix}")
        specs.append(meta)
        # a config field added since this export was written: its default is what the trials had
        t = t.assign(**{k: [TrialConfig.model_fields[k].default] * len(t) for k in CONFIG_KEYS
                        if k not in t.columns and "preset" in t.columns})
        if len(paths) > 1:  # trial ids are unique per sweep only
            prefix = str(t["sweep"].iloc[0]) if len(t) else p.name
            t = t.assign(trial_id=prefix + "/" + t["trial_id"])
            e = e.assign(trial_id=prefix + "/" + e["trial_id"])
        trials.append(t)
        epochs.append(e)
        for name, into in ((STEPS, steps), (PROBES, probes), (SURFACES, surfaces)):
            if (p / name).is_file():
                s = _read(p / name, fix if name != SURFACES else
                          f"delete {p / name} and run `vggbn landscape {p}` again")[0]
                if len(paths) > 1:
                    s = s.assign(trial_id=prefix + "/" + s["trial_id"])
                into.append(s)
    t = label_variants(pd.concat(trials, ignore_index=True))

    def known(frames: list) -> pd.DataFrame | None:  # rows of trials the trials table knows
        if not frames:
            return None
        df = pd.concat(frames, ignore_index=True)
        return df[df["trial_id"].isin(t["trial_id"])].reset_index(drop=True)

    return Results(trials=t, epochs=known(epochs), steps=known(steps), probes=known(probes),
                   surfaces=known(surfaces),
                   specs=specs, paths=[str(p) for p in paths])


def swept_keys(trials: pd.DataFrame) -> list[str]:
    """Config keys that vary between variants (seed excluded)."""
    keys = [k for k in CONFIG_KEYS if k in trials.columns and k not in EXECUTION_KEYS]
    return [k for k in keys if trials[k].map(str).nunique() > 1]


def label_variants(trials: pd.DataFrame) -> pd.DataFrame:
    """Add `variant` (a stable id), `label` and `section` columns.

    With presets the label and section are the preset's (the study's rows); otherwise the label is
    the swept flags (e.g. 'bn=True, lr=0.001') and the section is 'Variants'.
    """
    t = trials.copy()
    keys = [k for k in CONFIG_KEYS if k in t.columns and k not in EXECUTION_KEYS]
    t["variant"] = t[keys].map(str).agg("|".join, axis=1) if keys else "all"
    swept = swept_keys(t)
    if "preset" in t and t["preset"].notna().any():  # flags that vary within a preset's trials
        label_keys = [k for k in swept if k != "preset"
                      and (t.groupby(t["preset"].astype(str))[k].agg(lambda c: c.map(str).nunique()) > 1).any()]
    else:
        label_keys = swept

    def label(row) -> str:
        preset = row.get("preset")
        flags = ", ".join(f"{k}={_fmt(row[k])}" for k in label_keys)
        if isinstance(preset, str) and preset in PRESETS:
            base = PRESETS[preset]["label"]
            return f"{base} ({flags})" if flags else base
        return flags or "all trials"

    def section(row) -> str:
        preset = row.get("preset")
        return PRESETS[preset]["section"] if isinstance(preset, str) and preset in PRESETS else "Variants"

    t["label"] = t.apply(label, axis=1) if len(t) else pd.Series(dtype=str)
    t["section"] = t.apply(section, axis=1) if len(t) else pd.Series(dtype=str)
    return t


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def status_counts(trials: pd.DataFrame) -> pd.DataFrame:
    """Per variant: how many trials ended in each status (all statuses shown, zeros included)."""
    statuses = list(STATUSES)
    c = trials.groupby("variant")["status"].value_counts().unstack(fill_value=0)
    return c.reindex(columns=statuses, fill_value=0)
