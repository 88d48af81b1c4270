"""Helpers over the trials frame that every analysis module shares: which config keys make a
variant, which of them a sweep varies, each variant's label and section, its status counts, and
the order the study's rows are shown in.

A *variant* is a trial's config without its seed (and without execution-only knobs such as the
device or thread count). Below stats, table, plots and the loader: imports no other analysis module.
"""

from __future__ import annotations

import pandas as pd

from vggbn.config import PRESETS, TrialConfig
from vggbn.schema import STATUSES

# knobs that change how a trial runs, not what it computes: not part of a variant
EXECUTION_KEYS = {"seed", "data_dir", "device", "cpu_threads", "compile", "eval_batch_size",
                  "record_steps"}
CONFIG_KEYS = list(TrialConfig.model_fields)
SECTION_ORDER = ["Loss function", "Network structure", "Optimizer", "Variants"]


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


def table_order(variants: pd.DataFrame) -> pd.DataFrame:
    """Rows (one per variant) in the comparison table's order: by section (SECTION_ORDER), then
    the study's preset order, then label."""
    preset_rank = {p: i for i, p in enumerate(PRESETS)}
    v = variants.assign(
        _s=variants["section"].map(lambda s: SECTION_ORDER.index(s) if s in SECTION_ORDER else 99),
        _p=variants["preset"].map(lambda p: preset_rank.get(p, 99)) if "preset" in variants else 0)
    return v.sort_values(["_s", "_p", "label"], kind="stable").drop(columns=["_s", "_p"])


def preset_order(variants: pd.DataFrame) -> pd.DataFrame:
    """Rows in the study's preset order, then by label (the figures' legend order)."""
    rank = {p: i for i, p in enumerate(PRESETS)}
    if "preset" not in variants:
        return variants
    return variants.assign(_r=variants["preset"].map(lambda p: rank.get(p, 99))).sort_values(
        ["_r", "label"], kind="stable").drop(columns="_r")
