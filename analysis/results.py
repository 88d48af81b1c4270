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

# knobs that change how a trial runs, not what it computes: not part of a variant
EXECUTION_KEYS = {"seed", "data_dir", "device", "cpu_threads", "compile", "eval_batch_size",
                  "record_steps"}
CONFIG_KEYS = list(TrialConfig.model_fields)


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


def _meta(path: Path) -> dict:
    md = pq.read_schema(path).metadata or {}
    return json.loads(md.get(b"vggbn", b"{}"))


def load(*paths: str | Path) -> Results:
    """One or more sweep directories (each with trials.parquet) -> Results with variants labelled."""
    trials, epochs, steps, probes, surfaces, specs = [], [], [], [], [], []
    for p in paths:
        p = Path(p)
        if not (p / "trials.parquet").is_file():
            raise FileNotFoundError(f"{p}: no trials.parquet (run `vggbn export {p}` first)")
        t = pd.read_parquet(p / "trials.parquet")
        e = pd.read_parquet(p / "epochs.parquet")
        meta = _meta(p / "trials.parquet")
        specs.append(meta)
        if len(paths) > 1:  # trial ids are unique per sweep only
            prefix = str(t["sweep"].iloc[0]) if len(t) else p.name
            t = t.assign(trial_id=prefix + "/" + t["trial_id"])
            e = e.assign(trial_id=prefix + "/" + e["trial_id"])
        trials.append(t)
        epochs.append(e)
        for name, into in (("steps", steps), ("probes", probes), ("surfaces", surfaces)):
            if (p / f"{name}.parquet").is_file():
                s = pd.read_parquet(p / f"{name}.parquet")
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
    statuses = ["completed", "early_stopped", "diverged", "errored", "incomplete"]
    c = trials.groupby("variant")["status"].value_counts().unstack(fill_value=0)
    return c.reindex(columns=statuses, fill_value=0)
