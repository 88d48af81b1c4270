"""The comparison table: per variant, test accuracy over seeds with its uncertainty, against a baseline.

Statistics (scipy): mean and sample std (ddof=1) over completed seeds, a 95% Student-t confidence
interval of the mean, and Welch's t-test (unequal variances) of each variant against the baseline.
Cost columns: parameters, GFLOPs per forward pass (torch's FlopCounterMode, batch 1), training
images/s, epochs and seconds until the test accuracy first reaches a target, best epoch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from vggbn.config import PRESETS, TrialConfig
from vggbn.files import write_atomic

from .results import ResultsError, status_counts

SECTION_ORDER = ["Loss function", "Network structure", "Optimizer", "Variants"]
REFERENCE_CSV = Path(__file__).with_name("reference.csv")
IN_CHANNELS = {"fashion_mnist": 1}
NUM_CLASSES = {"cifar100": 100}


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, std, ci_low, ci_high) with the sample std and a Student-t interval; NaN where n < 2."""
    a = np.asarray(values, dtype=float)
    a = a[~np.isnan(a)]
    if len(a) == 0:
        return (math.nan,) * 4
    mean = float(a.mean())
    if len(a) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(a.std(ddof=1))
    lo, hi = stats.t.interval(confidence, len(a) - 1, loc=mean, scale=std / math.sqrt(len(a)))
    return mean, std, float(lo), float(hi)


def welch_p(a, b) -> float:
    """Two-sided Welch's t-test p-value; NaN when either side has fewer than 2 values."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def gflops(config: dict) -> float:
    """GFLOPs of one forward pass at batch 1, counted by torch's FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vggbn.models import build_model

    cfg = TrialConfig.from_stored({k: v for k, v in config.items() if k in TrialConfig.model_fields
                                   and not (isinstance(v, float) and math.isnan(v))})
    model = build_model(cfg, IN_CHANNELS.get(cfg.dataset, 3), NUM_CLASSES.get(cfg.dataset, 10)).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, IN_CHANNELS.get(cfg.dataset, 3), 32, 32))
    return counter.get_total_flops() / 1e9


def load_reference(path: str | Path | None = None) -> dict[tuple[str, str | None], float]:
    """(preset, dataset) -> reported test accuracy (percent); dataset None = any dataset.
    Default: the original study's single runs, on CIFAR-10."""
    path = Path(path or REFERENCE_CSV)
    fix = (f"Fix: give a CSV with the columns preset,reference_test_acc (optional: dataset), as "
           f"{REFERENCE_CSV.name} in the analysis package")
    try:
        ref = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, ValueError) as e:  # missing, a directory, binary, not CSV
        why = (e.strerror if isinstance(e, OSError) and e.strerror
               else f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
        raise ResultsError(f"{path}: not a readable reference table ({why}).\n{fix}") from None
    missing = [c for c in ("preset", "reference_test_acc") if c not in ref.columns]
    if missing:
        raise ResultsError(f"{path}: no column {', '.join(missing)} (has: "
                           f"{', '.join(map(str, ref.columns))[:200] or 'none'}).\n{fix}")
    datasets = ref["dataset"] if "dataset" in ref else [None] * len(ref)
    try:
        return {(p, d if isinstance(d, str) else None): float(a)
                for p, d, a in zip(ref["preset"], datasets, ref["reference_test_acc"])}
    except (TypeError, ValueError) as e:
        raise ResultsError(f"{path}: reference_test_acc holds a value that is not a number ({e}).\n"
                           f"{fix}") from None


def _reference_for(reference: dict, preset: str | None, dataset: str | None) -> float | None:
    if preset is None:
        return None
    return reference.get((preset, dataset), reference.get((preset, None)))


def _first_reaching(epochs: pd.DataFrame, target: float) -> tuple[float, float]:
    hit = epochs[epochs["test_acc"] >= target]
    if hit.empty:
        return math.nan, math.nan
    row = hit.sort_values("epoch").iloc[0]
    return float(row["epoch"]), float(row.get("time_total_s", math.nan))


def comparison_table(trials: pd.DataFrame, epochs: pd.DataFrame, baseline: str | None = "vgg_a",
                     target: float | None = None, reference: dict[str, float] | None = None,
                     metric: str = "test_acc") -> tuple[pd.DataFrame, dict]:
    """One row per variant (sections in the study's order). Returns (table, info) where info holds
    the baseline variant, the target accuracy and notes for the caption."""
    reference = load_reference() if reference is None else reference
    done = trials[trials["status"] == "completed"]
    counts = status_counts(trials)
    variants = trials.drop_duplicates("variant")

    base_variant = None
    if baseline is not None and "preset" in trials:
        cand = variants[variants["preset"] == baseline]
        if len(cand) == 1:
            base_variant = cand["variant"].iloc[0]
        elif len(cand) > 1:  # the preset appears with other swept flags: take the first
            base_variant = cand["variant"].iloc[0]
    if base_variant is None:  # no such preset: the first variant in table order is the baseline
        base_variant = _ordered(variants)["variant"].iloc[0] if len(variants) else None
    base_accs = done.loc[done["variant"] == base_variant, metric].dropna().to_numpy()
    if target is None:
        target = float(np.mean(base_accs)) if len(base_accs) else math.nan

    rows = []
    for _, v in _ordered(variants).iterrows():
        sel = done[done["variant"] == v["variant"]]
        accs = sel[metric].dropna().to_numpy()
        mean, std, lo, hi = mean_ci(accs)
        reach = [_first_reaching(epochs[epochs["trial_id"] == tid], target)
                 for tid in sel["trial_id"]] if not math.isnan(target) else []
        reach_e = [r[0] for r in reach if not math.isnan(r[0])]
        reach_s = [r[1] for r in reach if not math.isnan(r[1])]
        last_ips = [epochs.loc[epochs["trial_id"] == tid, "images_per_s"].median()
                    for tid in sel["trial_id"]]
        c = counts.loc[v["variant"]]
        is_base = v["variant"] == base_variant
        p = math.nan if is_base else welch_p(accs, base_accs)
        preset = v.get("preset") if isinstance(v.get("preset"), str) else None
        rows.append({
            "section": v["section"], "variant": v["label"], "preset": preset,
            "n": len(accs), "mean": mean, "std": std, "ci_low": lo, "ci_high": hi,
            "delta": math.nan if is_base else mean - (np.mean(base_accs) if len(base_accs) else math.nan),
            "p_value": p, "significant": bool(p < 0.05) if not math.isnan(p) else None,
            "baseline": is_base,
            "params": int(sel["params"].dropna().iloc[0]) if sel["params"].notna().any() else None,
            "gflops": gflops(v.to_dict()),
            "images_per_s": float(np.nanmean(last_ips)) if last_ips else math.nan,
            "epochs_to_target": float(np.mean(reach_e)) if reach_e else math.nan,
            "reached": f"{len(reach_e)}/{len(accs)}",
            "seconds_to_target": float(np.mean(reach_s)) if reach_s else math.nan,
            "best_epoch": float(sel["best_epoch"].mean()) if len(sel) else math.nan,
            "best_epoch_test_acc": _best_epoch_test_acc(sel, epochs),
            **{f"n_{s}": int(c[s]) for s in counts.columns},
            "reference": _reference_for(reference, preset, v.get("dataset")),
            "variant_id": v["variant"],
        })
    table = pd.DataFrame(rows)
    info = {"baseline": base_variant, "baseline_label": table.loc[table["baseline"], "variant"].iloc[0]
            if len(table) and table["baseline"].any() else None, "target": target, "metric": metric}
    return table, info


def _best_epoch_test_acc(sel: pd.DataFrame, epochs: pd.DataFrame) -> float:
    """Mean over `seed`-recipe trials of each one's highest test accuracy over its epochs: the
    statistic the study reported (it kept the epoch with the best test accuracy). NaN otherwise."""
    if not len(sel) or "recipe" not in sel or not (sel["recipe"] == "seed").all():
        return math.nan
    e = epochs[epochs["trial_id"].isin(sel["trial_id"])]
    best = pd.to_numeric(e["test_acc"], errors="coerce").groupby(e["trial_id"]).max().dropna()
    return float(best.mean()) if len(best) else math.nan


def _ordered(variants: pd.DataFrame) -> pd.DataFrame:
    preset_rank = {p: i for i, p in enumerate(PRESETS)}
    v = variants.assign(
        _s=variants["section"].map(lambda s: SECTION_ORDER.index(s) if s in SECTION_ORDER else 99),
        _p=variants["preset"].map(lambda p: preset_rank.get(p, 99)) if "preset" in variants else 0)
    return v.sort_values(["_s", "_p", "label"], kind="stable").drop(columns=["_s", "_p"])


# ---------------------------------------------------------------------- rendering
def _pct(x: float, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def _delta(r) -> str:
    text = f"{100 * r['delta']:+.2f}" if not math.isnan(r["delta"]) else "–"
    return text + ("" if r["significant"] else " †")  # † also where there are too few seeds to test


def display_frame(table: pd.DataFrame, info: dict) -> pd.DataFrame:
    """The table as people read it: percent, mean ± std, marks."""
    tgt = _pct(info["target"], 1)
    out = []
    for _, r in table.iterrows():
        incomplete = ", ".join(f"{r[f'n_{s}']} {s.replace('_', ' ')}"
                               for s in ("early_stopped", "diverged", "errored", "incomplete")
                               if r.get(f"n_{s}", 0))
        p = r["p_value"]
        out.append({
            "Section": r["section"],
            "Variant": r["variant"] + (" (baseline)" if r["baseline"] else ""),
            "n": r["n"],
            "Test acc % (mean ± std)": f"{_pct(r['mean'])} ± {_pct(r['std'])}",
            "95% CI": f"[{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]",
            "Δ vs baseline": "" if r["baseline"] else _delta(r),
            "p (Welch)": "" if r["baseline"] or math.isnan(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"),
            "Params": f"{r['params']:,}" if r["params"] else "–",
            "GFLOPs": f"{r['gflops']:.3g}",
            "Train img/s": f"{r['images_per_s']:.0f}" if not math.isnan(r["images_per_s"]) else "–",
            f"Epochs to {tgt}%": (f"{r['epochs_to_target']:.1f} ({r['reached']})"
                                  if not math.isnan(r["epochs_to_target"]) else f"– ({r['reached']})"),
            f"Seconds to {tgt}%": f"{r['seconds_to_target']:.0f}" if not math.isnan(r["seconds_to_target"]) else "–",
            "Best epoch": f"{r['best_epoch']:.1f}" if not math.isnan(r["best_epoch"]) else "–",
            "Incomplete": incomplete or "0",
            "Best-epoch test % (seed recipe)": _pct(r.get("best_epoch_test_acc", math.nan)),
            "Study (1 run) %": f"{r['reference']:.2f}" if r["reference"] is not None
            and not (isinstance(r["reference"], float) and math.isnan(r["reference"])) else "",
        })
    out = pd.DataFrame(out)
    if "best_epoch_test_acc" not in table or table["best_epoch_test_acc"].isna().all():
        out = out.drop(columns="Best-epoch test % (seed recipe)", errors="ignore")
    return out


def to_markdown(table: pd.DataFrame, info: dict) -> str:
    d = display_frame(table, info)
    cols = list(d.columns)
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join("---:" if c in ("n", "Params", "GFLOPs", "Train img/s") else "---"
                            for c in cols) + "|"]
    for _, r in d.iterrows():
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    notes = (f"\nMean ± sample std over completed seeds; 95% CI of the mean (Student t); Δ and "
             f"Welch's t-test p against **{info['baseline_label']}**; † = not significant at 0.05 "
             f"(or too few seeds to test). Epochs/seconds to {_pct(info['target'], 1)}% (the "
             f"baseline's mean final {info['metric']}): mean over the seeds that reached it "
             f"(reached/seeds). GFLOPs: one forward pass, batch 1 (FlopCounterMode). Study: the "
             f"original study's single run with its own recipe.")
    if "Best-epoch test % (seed recipe)" in cols:
        notes += (" Best-epoch: each `seed`-recipe run's highest test accuracy over its epochs, "
                  "the statistic the study reported (its \"val\" loader was the test set); choosing "
                  "the epoch on the test set flatters it, so the final accuracy is the main column.")
    return "\n".join(lines) + "\n" + notes + "\n"


def to_latex(table: pd.DataFrame, info: dict) -> str:
    d = display_frame(table, info).drop(columns=["Section"])
    return d.to_latex(index=False, escape=True, column_format="l" + "r" * (len(d.columns) - 1))


def write_tables(table: pd.DataFrame, info: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "table.md", "csv": out / "table.csv", "tex": out / "table.tex"}
    write_atomic(paths["md"], to_markdown(table, info))
    write_atomic(paths["csv"], table.to_csv(index=False))
    write_atomic(paths["tex"], to_latex(table, info))
    return paths
