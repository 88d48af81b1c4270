"""The comparison table: per variant, test accuracy over seeds with its uncertainty, against a baseline.

Statistics (analysis.stats): mean and sample std (ddof=1) over completed seeds, a 95% Student-t
confidence interval of the mean; against the baseline, Δ with its Welch 95% CI, Welch's p and the
Holm-adjusted p over the rows tested (the significance mark follows the Holm p), Hedges' g with its
CI, and the paired difference on the seeds both completed (a seed fixes data order and augmentation).
Cost columns: parameters, GFLOPs per forward pass (torch's FlopCounterMode, batch 1), training
images/s, epochs and seconds until the test accuracy first reaches a target, best epoch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from vggbn.config import TrialConfig
from vggbn.errors import ResultsError
from vggbn.files import write_atomic
from vggbn.models import model_cost

from analysis.frames import status_counts, table_order
from analysis.stats import ALPHA, fmt_p, hedges_g, holm, mean_ci, paired, welch

REFERENCE_CSV = Path(__file__).with_name("reference.csv")


def gflops(config: dict) -> float:
    """GFLOPs of one forward pass at batch 1 (torch's FlopCounterMode), as the trials report it."""
    return model_cost(TrialConfig.from_stored({k: v for k, v in config.items() if k in TrialConfig.model_fields
                                               and not (isinstance(v, float) and math.isnan(v))}))[0]


def load_reference(path: str | Path | None = None) -> dict[tuple[str, str | None], float]:
    """(preset, dataset) -> reported test accuracy (percent); dataset None = any dataset.
    Default: the original study's single runs, on CIFAR-10."""
    path = Path(path or REFERENCE_CSV)
    fix = (f"give a CSV with the columns preset,reference_test_acc (optional: dataset), as "
           f"{REFERENCE_CSV.name} in the analysis package")
    try:
        ref = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, ValueError) as e:  # missing, a directory, binary, not CSV
        why = (e.strerror if isinstance(e, OSError) and e.strerror
               else f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
        raise ResultsError(f"{path}: not a readable reference table ({why}).", fix) from None
    missing = [c for c in ("preset", "reference_test_acc") if c not in ref.columns]
    if missing:
        raise ResultsError(f"{path}: no column {', '.join(missing)} (has: "
                           f"{', '.join(map(str, ref.columns))[:200] or 'none'}).", fix)
    datasets = ref["dataset"] if "dataset" in ref else [None] * len(ref)
    try:
        return {(p, d if isinstance(d, str) else None): float(a)
                for p, d, a in zip(ref["preset"], datasets, ref["reference_test_acc"])}
    except (TypeError, ValueError) as e:
        raise ResultsError(f"{path}: reference_test_acc holds a value that is not a number ({e}).", fix) from None


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
        base_variant = table_order(variants)["variant"].iloc[0] if len(variants) else None
    base_done = done[done["variant"] == base_variant]
    base_accs = base_done[metric].dropna().to_numpy()
    if target is None:
        target = float(np.mean(base_accs)) if len(base_accs) else math.nan

    rows = []
    for _, v in table_order(variants).iterrows():
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
        nan = dict(delta=math.nan, ci_low=math.nan, ci_high=math.nan, p=math.nan, g=math.nan, n_pairs=0)
        w = nan if is_base else welch(accs, base_accs)
        g = nan if is_base else hedges_g(accs, base_accs)
        pair = nan if is_base else paired(_by_seed(sel, metric), _by_seed(base_done, metric))
        preset = v.get("preset") if isinstance(v.get("preset"), str) else None
        rows.append({
            "section": v["section"], "variant": v["label"], "preset": preset,
            "n": len(accs), "mean": mean, "std": std, "ci_low": lo, "ci_high": hi,
            "delta": w["delta"], "delta_ci_low": w["ci_low"], "delta_ci_high": w["ci_high"],
            "p_value": w["p"], "p_holm": math.nan, "significant": None,
            "hedges_g": g["g"], "g_ci_low": g["ci_low"], "g_ci_high": g["ci_high"],
            "n_pairs": pair["n_pairs"], "paired_delta": pair["delta"], "paired_ci_low": pair["ci_low"],
            "paired_ci_high": pair["ci_high"], "paired_p": pair["p"], "paired_p_holm": math.nan,
            "baseline": is_base,
            "params": int(sel["params"].dropna().iloc[0]) if sel["params"].notna().any() else None,
            "gflops": gflops(v.to_dict()),
            "images_per_s": float(pd.Series(last_ips, dtype=float).mean()),  # NaN, silently, when none
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
    if len(table):  # the family: the rows tested against the baseline (NaN p: not tested, left out)
        table["p_holm"] = holm(table["p_value"])
        table["significant"] = [None if math.isnan(p) else bool(p < ALPHA) for p in table["p_holm"]]
        table["paired_p_holm"] = holm(table["paired_p"])
    info = {"baseline": base_variant, "baseline_label": table.loc[table["baseline"], "variant"].iloc[0]
            if len(table) and table["baseline"].any() else None, "target": target, "metric": metric,
            "family": int(table["p_value"].notna().sum()) if len(table) else 0}
    return table, info


def _by_seed(sel: pd.DataFrame, metric: str) -> pd.Series:
    """seed -> the metric (the mean, should a seed appear twice, as in two exports of one sweep)."""
    if "seed" not in sel:
        return pd.Series(dtype=float)
    return sel.groupby("seed")[metric].mean().dropna()


def _best_epoch_test_acc(sel: pd.DataFrame, epochs: pd.DataFrame) -> float:
    """Mean over `seed`-recipe trials of each one's highest test accuracy over its epochs: the
    statistic the study reported (it kept the epoch with the best test accuracy). NaN otherwise."""
    if not len(sel) or "recipe" not in sel or not (sel["recipe"] == "seed").all():
        return math.nan
    e = epochs[epochs["trial_id"].isin(sel["trial_id"])]
    best = pd.to_numeric(e["test_acc"], errors="coerce").groupby(e["trial_id"]).max().dropna()
    return float(best.mean()) if len(best) else math.nan


# ---------------------------------------------------------------------- rendering
def _pct(x: float, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def _pts(x: float) -> str:
    return "–" if math.isnan(x) else f"{100 * x:+.2f}"


def _with_ci(x: float, lo: float, hi: float) -> str:
    return _pts(x) + ("" if math.isnan(lo) else f" [{_pts(lo)}, {_pts(hi)}]")


def _delta(r) -> str:  # † follows the Holm p; also where there are too few seeds to test
    return _with_ci(r["delta"], r["delta_ci_low"], r["delta_ci_high"]) + ("" if r["significant"] else " †")


def display_frame(table: pd.DataFrame, info: dict) -> pd.DataFrame:
    """The table as people read it: percent, mean ± std, marks."""
    tgt = _pct(info["target"], 1)
    out = []
    for _, r in table.iterrows():
        incomplete = ", ".join(f"{r[f'n_{s}']} {s.replace('_', ' ')}"
                               for s in ("early_stopped", "diverged", "errored", "incomplete")
                               if r.get(f"n_{s}", 0))
        out.append({
            "Section": r["section"],
            "Variant": r["variant"] + (" (baseline)" if r["baseline"] else ""),
            "n": r["n"],
            "Test acc % (mean ± std)": f"{_pct(r['mean'])} ± {_pct(r['std'])}",
            "95% CI": f"[{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]",
            "Δ vs baseline [95% CI]": "" if r["baseline"] else _delta(r),
            "p (Welch / Holm)": "" if r["baseline"] or math.isnan(r["p_value"])
            else f"{fmt_p(r['p_value'])} / {fmt_p(r['p_holm'])}",
            "g": "" if r["baseline"] or math.isnan(r["hedges_g"]) else f"{r['hedges_g']:+.2f}",
            "Paired Δ [95% CI] (seeds)": "" if r["baseline"] else (
                f"{_with_ci(r['paired_delta'], r['paired_ci_low'], r['paired_ci_high'])} ({r['n_pairs']})"
                if r["n_pairs"] >= 2 else f"– ({r['n_pairs']})"),
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
    notes = (f"\nMean ± sample std over completed seeds; 95% CI of the mean (Student t). Against "
             f"**{info['baseline_label']}**: Δ = variant − baseline in points with the 95% CI of "
             f"Welch's t (unequal variances); p: Welch's two-sided p / Holm's adjusted p over the "
             f"family of the {info.get('family', 0)} rows tested against the baseline (Holm–Bonferroni: "
             f"the chance of any false positive in the table stays at 0.05); † = not significant "
             f"at 0.05 after Holm's correction (or too few seeds to test). g: Hedges' g, Δ over the "
             f"pooled SD with the small-sample correction (its 95% CI in table.csv). Paired Δ: "
             f"only on the seeds both the variant and the baseline completed (n in brackets; a "
             f"trial's seed fixes its data order and augmentation, so equal seeds are matched "
             f"pairs), the mean per-seed difference with its t CI (p and Holm p in table.csv); – "
             f"with fewer than 2 shared seeds. Epochs/seconds to {_pct(info['target'], 1)}% (the "
             f"baseline's mean final {info['metric']}): mean over the seeds that reached it "
             f"(reached/seeds). GFLOPs: one forward pass, batch 1 (FlopCounterMode). Study: the "
             f"original study's single run with its own recipe.")
    if info.get("adaptive"):
        notes += (f" Adaptive seeds ({info['adaptive']}): the 95% CI of those variants is the "
                  f"corrected one their stopping rule reports (t quantile over the possible looks; "
                  f"see Seeds), which keeps its coverage although the number of seeds depended on "
                  f"the spread.")
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
