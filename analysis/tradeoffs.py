"""Cost trade-offs: Pareto fronts of accuracy against cost (the variants'; a search's trials are
in hpo.py, with parameter importance and a parallel-coordinates view).

Pareto: a row is non-dominated when no other row is at least as good in every objective and
strictly better in one. The variant front uses each variant's *mean* accuracy over seeds; its CI is
drawn beside it, so two variants whose CIs overlap are not shown to be ordered. A search's front
uses each finished trial's own metric values.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from analysis import plots

__all__ = ["COSTS", "pareto_front", "pareto_table", "pareto_markdown", "pareto_figure", "report_sections"]

# the comparison table's cost columns -> axis label
COSTS = {"gflops": "GFLOPs per forward pass (batch 1)", "params": "parameters",
         "seconds_to_target": "training seconds to the target accuracy"}
COST_NAMES = {"gflops": "GFLOPs", "params": "parameters", "seconds_to_target": "seconds to target"}


# ---------------------------------------------------------------------- Pareto fronts
def _front(costs: np.ndarray) -> np.ndarray:
    """Non-dominated rows of an (n, k) array where lower is better in every column; rows with a
    NaN are not on the front and dominate nothing."""
    ok = ~np.isnan(costs).any(axis=1)
    c = costs[ok]
    le = (c[:, None, :] <= c[None, :, :]).all(-1)  # le[j, i]: j at least as good as i everywhere
    lt = (c[:, None, :] < c[None, :, :]).any(-1)  # lt[j, i]: j strictly better somewhere
    out = np.zeros(len(costs), dtype=bool)
    out[ok] = ~(le & lt).any(axis=0)
    return out


def pareto_front(df: pd.DataFrame, maximize: str | list[str], minimize: str | list[str]) -> pd.Series:
    """Boolean Series (df's index): True for the non-dominated rows when the `maximize` columns are
    maximised and the `minimize` columns minimised. Exact ties are all kept (none dominates the
    other). A row with NaN in any of these columns is never on the front and dominates no row."""
    up = [maximize] if isinstance(maximize, str) else list(maximize)
    down = [minimize] if isinstance(minimize, str) else list(minimize)
    costs = np.column_stack([-pd.to_numeric(df[c], errors="coerce").to_numpy(float) for c in up]
                            + [pd.to_numeric(df[c], errors="coerce").to_numpy(float) for c in down])
    return pd.Series(_front(costs), index=df.index)


def _costs_in(table: pd.DataFrame) -> list[str]:
    return [c for c in COSTS if c in table and pd.to_numeric(table[c], errors="coerce").notna().any()]


def pareto_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per variant (table order): its accuracy (mean, CI) and costs, and for each cost a column
    `front_<cost>`: non-dominated for mean accuracy against that cost alone. A variant without a
    value (e.g. it never reached the target, so no seconds-to-target) is not on that front."""
    cols = ["variant", "variant_id", "n", "mean", "ci_low", "ci_high", "baseline"]
    out = table[[c for c in cols if c in table]].copy()
    for cost in _costs_in(table):
        out[cost] = pd.to_numeric(table[cost], errors="coerce")
        out[f"front_{cost}"] = pareto_front(out, "mean", [cost])
    return out


def _num(x: float, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.{digits}g}"


def _target_pct(info: dict) -> str:
    target = info.get("target")
    return "the target" if target is None or not math.isfinite(target) else f"{100 * target:.1f}%"


def pareto_markdown(pt: pd.DataFrame, info: dict) -> str:
    """The Pareto table for report.md: ★ marks a variant non-dominated for accuracy vs that cost."""
    costs = [c for c in COSTS if c in pt]
    names = {"gflops": "GFLOPs", "params": "Params",
             "seconds_to_target": f"Seconds to {_target_pct(info)}"}
    head = ["Variant", "n", f"{info.get('metric', 'test_acc')} % mean [95% CI]"] + [names[c] for c in costs]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---|" + "---:|" * len(costs)]
    for _, r in pt.iterrows():
        ci = (f" [{100 * r['ci_low']:.2f}, {100 * r['ci_high']:.2f}]"
              if math.isfinite(r["ci_low"]) else " (n < 2: no CI)")
        acc = f"{100 * r['mean']:.2f}{ci}" if math.isfinite(r["mean"]) else "–"
        cells = [_num(r[c]) + (" ★" if r[f"front_{c}"] else "") for c in costs]
        name = str(r["variant"]).replace("|", "/") + (" (baseline)" if r.get("baseline") else "")
        lines.append("| " + " | ".join([name, str(r["n"]), acc, *cells]) + " |")
    return "\n".join(lines) + "\n"


def pareto_figure(table: pd.DataFrame, info: dict):
    """One panel per cost: mean accuracy ± 95% CI against the cost; the non-dominated variants
    filled and joined by the front's staircase (what the best variant at each budget reaches)."""
    pt = pareto_table(table)
    costs = _costs_in(table)
    with plots.plt.rc_context(plots.STYLE):
        fig, axes = plots.plt.subplots(1, len(costs), figsize=(5 * len(costs), 4), squeeze=False)
        for ax, cost in zip(axes[0], costs):
            d = pt[pt[cost].notna() & pt["mean"].notna()]
            mean = 100 * d["mean"].to_numpy(float)
            err = np.vstack([mean - 100 * d["ci_low"].to_numpy(float),
                             100 * d["ci_high"].to_numpy(float) - mean])
            front = d[f"front_{cost}"].to_numpy(bool)
            x = d[cost].to_numpy(float)
            ci = np.isfinite(err).all(axis=0)  # n < 2: no CI, no bar (not a zero-width one)
            ax.errorbar(x[ci], mean[ci], yerr=err[:, ci], fmt="none", ecolor="#999999", capsize=2)
            ax.scatter(x[~front], mean[~front], facecolor="white", edgecolor="#666666", zorder=3,
                       label="dominated")
            ax.scatter(x[front], mean[front], color="#1b9e77", edgecolor="black", zorder=4,
                       label="non-dominated")
            order = np.argsort(x[front])
            ax.plot(x[front][order], mean[front][order], drawstyle="steps-post", color="#1b9e77")
            for xi, yi, name in zip(x, mean, d["variant"]):
                ax.annotate(str(name), (xi, yi), xytext=(4, 3), textcoords="offset points", fontsize=7)
            pos = x[x > 0]
            if len(pos) and pos.max() / pos.min() > 20:  # spans orders of magnitude
                ax.set_xscale("log")
            label = COSTS[cost]
            if cost == "seconds_to_target":
                label = f"training seconds to {_target_pct(info)} (reached only)"
            ax.set(xlabel=label, ylabel=f"{info.get('metric', 'test_acc')} (%): mean, 95% t CI",
                   title=f"Accuracy vs {COST_NAMES[cost]}")
        axes[0][0].legend(loc="lower right")
        fig.suptitle("Cost trade-offs: filled = non-dominated for accuracy vs that cost (front on "
                     "means; overlapping CIs are not an ordering)")
        fig.tight_layout()
    return fig


# ---------------------------------------------------------------------- report.md
def report_sections(results, table: pd.DataFrame, info: dict, figs: Path,
                    rel: Callable[[Path], str]) -> list[str]:
    """Markdown lines for report.md: "## Cost trade-offs" (when at least two variants have a mean
    and a cost). PNGs go into `figs`; `rel` turns a PNG's path into the link report.md uses."""
    md: list[str] = []
    pt = pareto_table(table) if len(table) else table
    costs = [c for c in COSTS if c in pt]
    if costs and pt["mean"].notna().sum() >= 2:
        png = plots.save(pareto_figure(table, info), figs / "pareto.png")
        md += ["## Cost trade-offs", "",
               "Mean accuracy against each cost; ★ = non-dominated for accuracy vs that cost (no "
               "other variant is at least as accurate and at most as costly, better in one). The "
               "front is on means: variants whose CIs overlap are not shown to be ordered.", "",
               pareto_markdown(pt, info), f"![cost trade-offs]({rel(png)})", ""]
    return md
