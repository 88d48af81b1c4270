"""Search insight for random / Optuna sweeps: parameter importance, a parallel-coordinates view,
and the Pareto trials of a multi-objective search (a trial is non-dominated when no other trial is
at least as good in every objective and strictly better in one; each finished trial's own values).

Importance: PED-ANOVA (Watanabe et al. 2023, `optuna.importance.PedAnovaImportanceEvaluator`,
numpy/scipy only: Optuna's fANOVA would need scikit-learn) on an in-memory Optuna study rebuilt
from the exported trials and the stored spec's space: how differently each parameter is
distributed among the best trials than among all of them (Pearson divergence of the two
densities), normalised to sum to 1. Computed per objective.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from analysis import plots
from analysis.tradeoffs import pareto_front

__all__ = ["objectives", "metric_column", "pareto_trials", "importance", "parallel_coordinates",
           "report_sections"]

FINISHED = ("completed", "early_stopped", "diverged")  # ended by themselves: they have a metric
MIN_TRIALS = 10  # PED-ANOVA compares the top trials with all: fewer gives noise, not insight
TOP_TRIALS = 5  # at least this many trials in the "top" set (Optuna's docs advise >= 5)


# ---------------------------------------------------------------------- a search's trials
def objectives(spec: dict) -> list[tuple[str, str]]:
    """(metric, mode) pairs of a stored spec; `metric`/`mode` may be one name or lists."""
    metric, mode = spec.get("metric", "test_acc"), spec.get("mode", "max")
    metrics = [metric] if isinstance(metric, str) else list(metric)
    modes = [mode] * len(metrics) if isinstance(mode, str) else list(mode)
    return list(zip(metrics, modes))


def metric_column(trials: pd.DataFrame, metric: str) -> str:
    """The trials column of a reported metric: `best_<metric>` (its best epoch, as the report's
    search figure shows) where the export has it, else the metric's own (final epoch) column."""
    best = f"best_{metric}"
    return best if best in trials and trials[best].notna().any() else metric


def _finished(trials: pd.DataFrame, spec: dict | None = None) -> pd.DataFrame:
    t = trials[trials["status"].isin(FINISHED)]
    if spec and "sweep" in t and spec.get("name") is not None:
        t = t[t["sweep"].astype(str) == str(spec["name"])]
    return t


def pareto_trials(trials: pd.DataFrame, metrics: list[str], modes: list[str]) -> pd.DataFrame:
    """The finished trials non-dominated in `metrics` (mode "max"/"min" each), best first in the
    first metric. A trial missing a metric value is not on the front."""
    t = _finished(trials)
    cols = [metric_column(t, m) for m in metrics]
    if any(c not in t for c in cols):
        return t.iloc[:0]
    front = pareto_front(t, [c for c, m in zip(cols, modes) if m == "max"],
                         [c for c, m in zip(cols, modes) if m == "min"])
    return t[front].sort_values(cols[0], ascending=modes[0] == "min", kind="stable")


def _dim(d: dict):
    """The Optuna distribution of a stored spec's dimension (kinds unset are None in the dump). A
    conditional one (`when`) spans its branches: lr's axis runs from AdamW's range to SGD's."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(d.get("branches"), dict):
        parts = [_dim(b or {}) for b in d["branches"].values()]
        if not parts or any(p is None for p in parts):
            return None
        if all(isinstance(p, CategoricalDistribution) for p in parts):
            return CategoricalDistribution(list(dict.fromkeys(c for p in parts for c in p.choices)))
        if all(isinstance(p, FloatDistribution) for p in parts):
            return FloatDistribution(min(p.low for p in parts), max(p.high for p in parts),
                                     log=all(p.log for p in parts))
        if all(isinstance(p, IntDistribution) for p in parts):
            return IntDistribution(min(p.low for p in parts), max(p.high for p in parts))
        return None
    kind = next((k for k in ("uniform", "loguniform", "randint", "choice", "grid") if d.get(k) is not None), None)
    v = d.get(kind)
    if kind == "uniform":
        return FloatDistribution(float(v[0]), float(v[1]))
    if kind == "loguniform":
        return FloatDistribution(float(v[0]), float(v[1]), log=True)
    if kind == "randint":  # tune.randint excludes the upper bound
        return IntDistribution(int(v[0]), int(v[1]) - 1)
    if kind in ("choice", "grid"):
        return CategoricalDistribution(list(v))
    return None


def _searched(spec: dict) -> dict:
    """Searched key -> Optuna distribution; the seed is not a hyperparameter."""
    dists = {k: _dim(d or {}) for k, d in (spec.get("space") or {}).items() if k != "seed"}
    return {k: d for k, d in dists.items() if d is not None}


def _valid(dist, value) -> bool:
    if hasattr(dist, "choices"):  # categorical
        return value in dist.choices
    try:
        return bool(dist.low <= value <= dist.high)
    except TypeError:  # not a number
        return False


def _study(trials: pd.DataFrame, dists: dict, column: str, mode: str):
    """An in-memory single-objective Optuna study holding the trials as finished trials. A value
    outside its distribution (a conditional or older space) leaves that param out of the trial."""
    import optuna

    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for _, r in trials.iterrows():
        value = pd.to_numeric(r[column], errors="coerce")
        if not np.isfinite(value):
            continue
        params = {k: (r[k].item() if hasattr(r[k], "item") else r[k]) for k in dists if k in r}
        params = {k: v for k, v in params.items() if _valid(dists[k], v)}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params}, value=float(value)))
    return study


def _evaluator(n: int):
    from optuna.importance import PedAnovaImportanceEvaluator

    q = min(0.5, max(0.1, TOP_TRIALS / n))  # the top 10%, or at least TOP_TRIALS of them
    try:
        return PedAnovaImportanceEvaluator(target_quantile=q)
    except TypeError:  # Optuna < 5 named it baseline_quantile
        return PedAnovaImportanceEvaluator(baseline_quantile=q)


@contextmanager
def _quiet():
    """Optuna's INFO logging and its warnings (experimental API, equal importances) silenced:
    the report states what was computed."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        optuna.logging.set_verbosity(level)


def importance(trials: pd.DataFrame, spec: dict) -> pd.DataFrame | str:
    """Parameter importance (PED-ANOVA, normalised to sum 1) of each searched parameter for each
    objective of the spec, over the sweep's finished trials: a DataFrame indexed by parameter, one
    column per metric, most important first. A string saying why when it cannot be computed."""
    from optuna.importance import get_param_importances

    dists = _searched(spec)
    t = _finished(trials, spec)
    if len(dists) < 2:
        return f"{len(dists)} searched parameter(s): importance needs at least 2"
    out = {}
    for metric, mode in objectives(spec):
        col = metric_column(t, metric)
        if col not in t:
            return f"no column {col} in the trials"
        n = int(pd.to_numeric(t[col], errors="coerce").notna().sum())
        if n < MIN_TRIALS:
            return f"{n} finished trials with {col}: importance needs at least {MIN_TRIALS}"
        with _quiet():
            study = _study(t, dists, col, mode)
            out[metric] = get_param_importances(study, evaluator=_evaluator(n), params=list(dists))
    df = pd.DataFrame(out).reindex(list(dists)).fillna(0.0)
    return df.sort_values(df.columns[0], ascending=False)


def parallel_coordinates(trials: pd.DataFrame, spec: dict):
    """One line per finished trial through one axis per searched parameter (scaled to its search
    range, log where the search was) and one per objective, coloured by the first objective; the
    best trials drawn last (on top). None when there is nothing to draw."""
    from matplotlib.collections import LineCollection
    from optuna.distributions import CategoricalDistribution

    dists = _searched(spec)
    objs = objectives(spec)
    t = _finished(trials, spec)
    cols = [metric_column(t, m) for m, _ in objs]
    if not dists or any(c not in t for c in cols):
        return None
    t = t.dropna(subset=cols)
    if t.empty:
        return None
    mode0 = objs[0][1]
    t = t.sort_values(cols[0], ascending=mode0 == "max")  # best last
    axes_vals, ticks = [], []
    for k, d in dists.items():
        if isinstance(d, CategoricalDistribution):
            choices = [str(c) for c in d.choices]
            pos = {c: (i / (len(choices) - 1) if len(choices) > 1 else 0.5) for i, c in enumerate(choices)}
            axes_vals.append(t[k].astype(str).map(pos).to_numpy(float))
            ticks.append(list(pos.items()))
        else:
            f = np.log10 if getattr(d, "log", False) else (lambda x: x)
            lo, hi = f(d.low), f(d.high)
            axes_vals.append((f(pd.to_numeric(t[k], errors="coerce").to_numpy(float)) - lo) / (hi - lo))
            ticks.append([(f"{d.low:g}", 0.0), (f"{d.high:g}", 1.0)])
    for c in cols:
        v = pd.to_numeric(t[c], errors="coerce").to_numpy(float)
        scale = 100 if c.endswith("acc") else 1
        lo, hi = np.nanmin(v), np.nanmax(v)
        axes_vals.append((v - lo) / (hi - lo) if hi > lo else np.full(len(v), 0.5))
        ticks.append([(f"{scale * lo:.4g}", 0.0), (f"{scale * hi:.4g}", 1.0)])
    names = list(dists) + [c + (" (%)" if c.endswith("acc") else "") for c in cols]
    y = np.column_stack(axes_vals)
    x = np.arange(len(names))
    color = pd.to_numeric(t[cols[0]], errors="coerce").to_numpy(float) * (100 if cols[0].endswith("acc") else 1)
    with plots.plt.rc_context({**plots.STYLE, "axes.grid": False}):
        fig, ax = plots.plt.subplots(figsize=(1.4 * len(names) + 2, 4))
        segs = [np.column_stack([x, row]) for row in y]
        lc = LineCollection(segs, array=color, cmap="viridis" if mode0 == "max" else "viridis_r",
                            linewidths=1.2, alpha=0.8)
        ax.add_collection(lc)
        for xi, tk in zip(x, ticks):
            ax.axvline(xi, color="black", linewidth=0.6)
            for text, pos in tk:
                ax.text(xi + 0.04, pos, text, fontsize=7, va="center", zorder=3,
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
        ax.set_xticks(x, names, rotation=20)
        ax.set(xlim=(-0.2, len(names) - 0.5), ylim=(-0.05, 1.05), yticks=[],
               title=f"Search {spec.get('name')}: {len(t)} finished trials (axes scaled to the "
                     "search range; objectives to the trials' range)")
        fig.colorbar(lc, ax=ax, label=names[len(dists)])
        fig.tight_layout()
    return fig


# ---------------------------------------------------------------------- report.md
def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v).replace("|", "/")


def report_sections(results, figs: Path, rel: Callable[[Path], str]) -> list[str]:
    """Markdown lines for report.md: per random/Optuna sweep, "## Search insight: NAME"
    (importance, parallel coordinates, the Pareto trials of a multi-objective search)."""
    md: list[str] = []
    for meta in results.specs:
        spec = (meta or {}).get("spec") or {}
        if spec.get("search") in ("optuna", "random"):
            md += _search_section(results.trials, spec, figs, rel)
    return md


def _search_section(trials: pd.DataFrame, spec: dict, figs: Path, rel: Callable[[Path], str]) -> list[str]:
    name = spec.get("name")
    objs = objectives(spec)
    md = [f"## Search insight: {name}", ""]
    t = _finished(trials, spec)
    missing = [c for c in (metric_column(t, m) for m, _ in objs) if c not in t]
    if t.empty or missing:
        return md + [f"No finished trials with {', '.join(missing) or 'a metric'}: nothing to show.", ""]
    imp = importance(t, spec)
    if isinstance(imp, str):
        md += [f"Parameter importance: not computed ({imp}).", ""]
    else:
        md += ["Parameter importance (PED-ANOVA over the finished trials: how differently each "
               "parameter is spread among the best trials than among all; sums to 1 per objective):",
               "", "| parameter | " + " | ".join(imp.columns) + " |", "|---|" + "---:|" * len(imp.columns)]
        md += [f"| {p} | " + " | ".join(f"{v:.3f}" for v in r) + " |" for p, r in imp.iterrows()] + [""]
    fig = parallel_coordinates(t, spec)
    if fig is not None:
        png = plots.save(fig, figs / f"hpo_{name}_parallel.png")
        md += [f"![parallel coordinates of {name}]({rel(png)})", ""]
    if len(objs) > 1:
        front = pareto_trials(t, [m for m, _ in objs], [m for _, m in objs])
        cols = [c for c in ["trial_id", *(metric_column(t, m) for m, _ in objs), "status",
                            *_searched(spec)] if c in front]
        md += [f"Pareto trials ({len(front)} of {len(t)} finished; "
               + ", ".join(f"{m} {mode}" for m, mode in objs) + "; accuracies in %):", "",
               "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        md += ["| " + " | ".join(_fmt(100 * v if c.endswith("acc") else v) for c, v in zip(cols, r))
               + " |" for r in front[cols].itertuples(index=False)] + [""]
    return md
