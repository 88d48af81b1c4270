"""Figures (matplotlib, PNG) from the exported DataFrames. One style for all of them.

Each function returns the Figure (tests inspect its artists) and `save` writes it.
"""

from __future__ import annotations

import io

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from vggbn.config import PRESETS  # noqa: E402
from vggbn.files import write_atomic  # noqa: E402

from analysis.frames import preset_order, swept_keys  # noqa: E402

STYLE = {"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
         "axes.spines.right": False, "font.size": 9, "legend.fontsize": 8, "legend.frameon": False}
SECTION_COLORS = {"Loss function": "#d95f02", "Network structure": "#1b9e77",
                  "Optimizer": "#7570b3", "Variants": "#1b9e77"}


def colors(n: int):
    """n distinct colours (tab10, tab20 beyond ten), in order: one per variant or trial."""
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def save(fig, path: Path) -> Path:
    """The figure as a PNG that appears whole or not at all."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return write_atomic(path, buf.getvalue())


def learning_curves(trials: pd.DataFrame, epochs: pd.DataFrame):
    """Per variant: mean over seeds (line) with the min–max band; train loss and test accuracy."""
    with plt.rc_context(STYLE):
        fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
        labels = preset_order(trials.drop_duplicates("variant"))[["variant", "label"]]
        for color, (_, v) in zip(colors(len(labels)), labels.iterrows()):
            ids = trials.loc[(trials["variant"] == v["variant"]) & (trials["status"] != "errored"),
                             "trial_id"]
            e = epochs[epochs["trial_id"].isin(ids)]
            if e.empty:
                continue
            for ax, col, scale in ((ax_l, "train_loss", 1), (ax_a, "test_acc", 100)):
                g = e.groupby("epoch")[col].agg(["mean", "min", "max"]) * scale
                g = g.replace([np.inf, -np.inf], np.nan)
                ax.plot(g.index, g["mean"], color=color, label=f"{v['label']} (n={len(ids)})")
                ax.fill_between(g.index, g["min"], g["max"], color=color, alpha=0.15, linewidth=0)
        for ax in (ax_l, ax_a):
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax_l.set(xlabel="epoch", ylabel="training loss (cross-entropy)", title="Training loss",
                 yscale="log")
        ax_a.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
        ax_a.legend(loc="lower right")
        fig.suptitle("Learning curves: mean over seeds, band = min–max")
    return fig


def accuracy_dots(table: pd.DataFrame, info: dict, trials: pd.DataFrame | None = None):
    """Accuracy by variant, one row each (table order, first on top): every completed seed as a dot
    (jittered vertically), the mean as a black bar with its 95% t CI, the baseline's mean as a
    dashed line, the original study's single run as an open diamond. The axis runs from 0 to 100%
    (wider only if a CI reaches past either end): differences are never magnified by a cut axis,
    and no CI is clipped. Without `trials` only the means and CIs are drawn."""
    metric = info.get("metric", "test_acc")
    t = table.iloc[::-1].reset_index(drop=True)  # first row on top
    rng = np.random.default_rng(0)  # the same jitter on every run
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(t) + 1.4))
        y = np.arange(len(t))
        mean = 100 * t["mean"].to_numpy(float)
        lo, hi = 100 * t["ci_low"].to_numpy(float), 100 * t["ci_high"].to_numpy(float)
        ends = [0.0, 100.0]
        if trials is not None:
            done = trials[trials["status"] == "completed"]
            key = "variant_id" if "variant_id" in t else "variant"
            col = "variant" if key == "variant_id" else "label"
            named = set()  # one legend entry per section's colour
            for i, r in t.iterrows():
                acc = 100 * pd.to_numeric(done.loc[done[col] == r[key], metric], errors="coerce").dropna()
                section = r.get("section")
                ax.scatter(acc, y[i] + rng.uniform(-0.15, 0.15, len(acc)), s=14, alpha=0.7, zorder=2,
                           color=SECTION_COLORS.get(section, "#666666"),
                           label=None if section in named else f"a seed ({section})")
                named.add(section)
                ends += list(acc)
        has_ci = np.isfinite(lo) & np.isfinite(hi)
        ax.errorbar(mean[has_ci], y[has_ci], xerr=[mean[has_ci] - lo[has_ci], hi[has_ci] - mean[has_ci]],
                    fmt="|", color="black", markersize=12, capsize=3, zorder=3, label="mean, 95% t CI")
        if (~has_ci).any():
            ax.scatter(mean[~has_ci], y[~has_ci], marker="|", s=150, color="black", zorder=3,
                       label="mean (n < 2: no CI)")
        base = t[t["baseline"].astype(bool)] if "baseline" in t else t.iloc[:0]
        if len(base) and np.isfinite(base["mean"].iloc[0]):
            ax.axvline(100 * base["mean"].iloc[0], color="#444444", linestyle="--", linewidth=0.8,
                       zorder=1, label=f"baseline mean ({base['variant'].iloc[0]})")
        ref = t["reference"].astype(float).to_numpy() if "reference" in t else np.full(len(t), np.nan)
        if np.isfinite(ref).any():
            ax.scatter(ref, y, marker="D", facecolor="none", edgecolor="black", zorder=3, s=22,
                       label="original study (1 run, its recipe)")
        ends = np.concatenate([ends, lo[has_ci], hi[has_ci], ref[np.isfinite(ref)]])
        pad = 0.02 * (ends.max() - ends.min())  # dots at 100% are drawn whole
        ax.set_xlim(min(0.0, ends.min()) - pad, max(100.0, ends.max()) + pad)
        ax.set_yticks(y, [f"{v}  (n={n})" for v, n in zip(t["variant"], t["n"])])
        ax.set_ylim(-0.6, len(t) - 0.4)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
        ax.set(xlabel=f"{metric} (%) on a full 0–100 axis: each completed seed a dot; mean with its "
                      "95% t CI (never clipped)", title=f"{metric} by variant")
    return fig



def loss_band(trials: pd.DataFrame, steps: pd.DataFrame, across: str = "lr", by: str = "bn",
              smooth: int = 1):
    """The course's loss band: for each step, min and max of the training loss across `across`
    (learning rates), one band per value of `by` (BN off / on), on one axes."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(8, 4))
        s = steps.drop(columns=[across, by], errors="ignore").merge(trials[["trial_id", across, by]], on="trial_id")
        for color, (val, g) in zip(("#d95f02", "#1b9e77", "#7570b3", "#e7298a"), s.groupby(by)):
            band = g.groupby("step")["train_loss"].agg(["min", "max"])
            if smooth > 1:
                band = band.rolling(smooth, min_periods=1).mean()
            runs = g[across].nunique()
            name = {True: "with BN", False: "without BN"}.get(val, f"{by}={val}")
            ax.fill_between(band.index, band["min"], band["max"], color=color, alpha=0.35,
                            label=f"{name}: min–max over {runs} {across} values")
            ax.plot(band.index, band["min"], color=color, linewidth=0.6)
            ax.plot(band.index, band["max"], color=color, linewidth=0.6)
        ax.set(xlabel="training step", ylabel="training loss (cross-entropy)",
               title=f"Loss landscape band: per step, across {across}")
        ax.legend(loc="upper right")
    return fig


def hpo_progress(trials: pd.DataFrame, metric: str, mode: str, params: list[str]):
    """Best-so-far metric against trials (in start order), and each searched parameter vs metric."""
    t = trials.dropna(subset=[metric]).reset_index(drop=True)
    if "trial_id" in t:
        t = t.sort_values("trial_id", kind="stable").reset_index(drop=True)
    n = 1 + len(params)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
        axes = axes.ravel()
        vals = 100 * t[metric].to_numpy() if metric.endswith("acc") else t[metric].to_numpy()
        best = np.maximum.accumulate(vals) if mode == "max" else np.minimum.accumulate(vals)
        ax = axes[0]
        ax.plot(np.arange(1, len(vals) + 1), vals, "o", alpha=0.5, label="trial")
        ax.plot(np.arange(1, len(vals) + 1), best, "-", color="black", label="best so far")
        unit = " (%)" if metric.endswith("acc") else ""
        ax.set(xlabel="trial", ylabel=metric + unit, title="Search progress")
        ax.legend()
        stopped = t["status"] != "completed"
        for ax, p in zip(axes[1:], params):
            x = t[p]
            if x.dtype == object or x.dtype == bool:
                cats = sorted(x.astype(str).unique())
                xs = x.astype(str).map({c: i for i, c in enumerate(cats)})
                ax.set_xticks(range(len(cats)), cats)
            else:
                xs = x
                if x.min() > 0 and x.max() / x.min() > 20:
                    ax.set_xscale("log")
            ax.scatter(xs[~stopped], vals[~stopped], alpha=0.7, label="completed")
            if stopped.any():
                ax.scatter(xs[stopped], vals[stopped], marker="x", alpha=0.7, label="stopped early")
            ax.set(xlabel=p, ylabel=metric + unit, title=f"{metric} vs {p}")
        for ax in axes[n:]:
            ax.set_visible(False)
        fig.tight_layout()
    return fig


def _bn_name(trials: pd.DataFrame, tid: str) -> str:
    row = trials.set_index("trial_id").loc[tid]
    name = "with BN" if bool(row.get("bn")) else "without BN"
    extra = [f"{k}={row[k]:g}" if isinstance(row[k], float) else f"{k}={row[k]}"
             for k in ("optimizer", "lr") if k in row]
    which = f"{row['label']}, " if row.get("preset") in PRESETS and "label" in row else ""  # the study's row
    seed = f", seed {row['seed']}" if "seed" in row else ""
    return f"{name} ({which}{', '.join(extra)}{seed})"


def bn_pairs(trials: pd.DataFrame, ids: list[str], max_pairs: int = 2) -> list[str]:
    """Trials that differ only in BN, in pairs (the first `max_pairs` setups in trial order); when
    no such pairs exist, the first `max_pairs` trials without BN and with BN (a figure of every
    trial would be unreadable)."""
    t = trials[trials["trial_id"].isin(ids)].sort_values("trial_id")
    keys = [k for k in swept_keys(t) if k not in ("bn", "seed")]
    pairs = []
    for _, g in (t.groupby([t[k].map(str) for k in keys], sort=False) if keys else [(None, t)]):
        if g["bn"].astype(bool).nunique() == 2:
            pairs += [g[g["bn"].astype(bool) == v]["trial_id"].iloc[0] for v in (False, True)]
        if len(pairs) >= 2 * max_pairs:
            break
    if pairs:
        return pairs
    bn = t.set_index("trial_id")["bn"].astype(bool)
    seed = t.set_index("trial_id")["seed"] if "seed" in t else pd.Series(0, index=t["trial_id"])
    first = sorted(ids, key=lambda i: (seed.get(i, 0), i))  # the lowest seeds first
    return [i for v in (False, True) for i in [i for i in first if bn.get(i, False) == v][:max_pairs]]


def santurkar_triple(trials: pd.DataFrame, probes: pd.DataFrame, smooth: int = 5, max_pairs: int = 2):
    """Santurkar et al. Fig. 4: loss landscape band, gradient predictiveness band and effective
    β-smoothness against the training step, BN vs no BN on shared axes. Bands are min–max over the
    probe step sizes η; smoothed over `smooth` probes (raw values as faint lines)."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        tids = bn_pairs(trials, list(dict.fromkeys(probes["trial_id"])), max_pairs)
        bn_of = trials.set_index("trial_id")["bn"].astype(bool).to_dict()
        tids.sort(key=lambda t: (bn_of.get(t, False), t))
        palette = {False: ["#d95f02", "#e6ab02", "#a6761d", "#e7298a"],
                   True: ["#1b9e77", "#7570b3", "#66a61e", "#1f78b4"]}
        used = {False: 0, True: 0}
        for tid in tids:
            bn = bn_of.get(tid, False)
            color = palette[bn][used[bn] % 4]
            used[bn] += 1
            p = probes[probes["trial_id"] == tid]
            per = p.groupby("step").agg(loss_min=("loss", "min"), loss_max=("loss", "max"),
                                        gd_min=("grad_diff", "min"), gd_max=("grad_diff", "max"),
                                        beta=("beta", "max"))
            sm = per.rolling(smooth, min_periods=1).mean()
            label = _bn_name(trials, tid)
            for ax, lo, hi in ((axes[0], "loss_min", "loss_max"), (axes[1], "gd_min", "gd_max")):
                ax.fill_between(sm.index, sm[lo], sm[hi], color=color, alpha=0.35, label=label)
                ax.plot(per.index, per[lo], color=color, alpha=0.15, linewidth=0.5)
                ax.plot(per.index, per[hi], color=color, alpha=0.15, linewidth=0.5)
            axes[2].plot(per.index, per["beta"], color=color, alpha=0.2, linewidth=0.5)
            axes[2].plot(sm.index, sm["beta"], color=color, label=label)
        axes[0].set(xlabel="training step", ylabel="loss L(w − ηg)", title="(a) loss landscape",
                    yscale="log")
        axes[1].set(xlabel="training step", ylabel="‖∇L(w − ηg) − ∇L(w)‖₂",
                    title="(b) gradient predictiveness", yscale="log")
        axes[2].set(xlabel="training step", ylabel="max over η of ‖Δ∇L‖ / ‖ηg‖",
                    title="(c) effective β-smoothness", yscale="log")
        handles, names = axes[0].get_legend_handles_labels()  # below the panels: long names, no overlap
        fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(2, len(names)),
                   frameon=False)
        etas = sorted(probes["eta_mult"].unique())
        fig.suptitle("Santurkar et al. Fig. 4: bands are min–max over η ∈ {"
                     + ", ".join(f"{e:g}" for e in etas) + "} × lr; smoothed over "
                     f"{smooth} probes, raw values faint")
        fig.tight_layout()
    return fig


def landscape_1d(trials: pd.DataFrame, surf: pd.DataFrame):
    """Li et al. 1D: loss and accuracy along one filter-normalised direction, per trial."""
    with plt.rc_context(STYLE):
        fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 3.8))
        s1 = surf[surf["kind"] == "1d"]
        bn_of = trials.set_index("trial_id")["bn"].astype(bool).to_dict()
        for tid in surface_trials(trials, s1, 3):
            g = s1[s1["trial_id"] == tid]
            style = "-" if bn_of.get(tid) else "--"
            label = _bn_name(trials, tid)
            ax_l.plot(g["alpha"], g["loss"], style, label=label)
            ax_a.plot(g["alpha"], 100 * g["acc"], style, label=label)
        ax_l.set(xlabel="α (filter-normalised direction)", ylabel="training loss", yscale="log",
                 title="Loss along a random direction")
        ax_a.set(xlabel="α (filter-normalised direction)", ylabel="training accuracy (%)",
                 title="Accuracy along the same direction")
        ax_l.legend()
        fig.tight_layout()
    return fig


def surface_trials(trials: pd.DataFrame, surf: pd.DataFrame, per_bn: int) -> list[str]:
    """At most `per_bn` trials with surfaces for each BN value, in trial order (a sweep's first
    setup first), so that BN and no-BN stand side by side."""
    bn_of = trials.set_index("trial_id")["bn"].astype(bool).to_dict()
    chosen: dict[bool, list[str]] = {False: [], True: []}
    for tid in sorted(surf["trial_id"].unique()):
        group = chosen[bn_of.get(tid, False)]
        if len(group) < per_bn:
            group.append(tid)
    return [t for pair in zip(chosen[False], chosen[True]) for t in pair] + \
        chosen[False][len(chosen[True]):] + chosen[True][len(chosen[False]):]


def _grids(surf: pd.DataFrame, trials: pd.DataFrame, per_bn: int = 2):
    s2 = surf[surf["kind"] == "2d"]
    for tid in surface_trials(trials, s2, per_bn):
        g = s2[s2["trial_id"] == tid]
        piv = g.pivot_table(index="beta", columns="alpha", values="loss")
        yield tid, piv.columns.to_numpy(), piv.index.to_numpy(), piv.to_numpy()


def landscape_2d(trials: pd.DataFrame, surf: pd.DataFrame):
    """Li et al. 2D contour maps side by side on one colour scale (log10 of the loss)."""
    grids = list(_grids(surf, trials))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(grids), figsize=(4.2 * len(grids) + 1, 4), squeeze=False)
        z_all = np.log10(np.concatenate([z.ravel() for *_, z in grids]))
        z_all = z_all[np.isfinite(z_all)]
        levels = np.linspace(z_all.min(), min(z_all.max(), z_all.min() + 3), 25)
        cs = None
        for ax, (tid, a, b, z) in zip(axes[0], grids):
            cs = ax.contourf(a, b, np.log10(z), levels=levels, cmap="viridis", extend="max")
            ax.contour(a, b, np.log10(z), levels=levels[::3], colors="white", linewidths=0.4)
            ax.set(xlabel="α", ylabel="β", title=_bn_name(trials, tid), aspect="equal")
            ax.grid(False)
        fig.colorbar(cs, ax=axes[0].tolist(), label="log10 training loss")
        fig.suptitle("Li et al. 2D loss surfaces (filter-normalised directions), shared colour scale")
    return fig


def landscape_3d(trials: pd.DataFrame, surf: pd.DataFrame):
    grids = list(_grids(surf, trials))
    with plt.rc_context(STYLE):
        fig = plt.figure(figsize=(4.5 * len(grids), 4))
        zmax = max(np.nanmax(z) for *_, z in grids)
        zmin = min(np.nanmin(z) for *_, z in grids)
        for i, (tid, a, b, z) in enumerate(grids):
            ax = fig.add_subplot(1, len(grids), i + 1, projection="3d")
            A, B = np.meshgrid(a, b)
            ax.plot_surface(A, B, np.minimum(z, zmax), cmap="viridis", vmin=zmin,
                            vmax=min(zmax, zmin * 1000), linewidth=0)
            ax.set(xlabel="α", ylabel="β", zlabel="loss", title=_bn_name(trials, tid),
                   zlim=(zmin, zmax))
        fig.suptitle("Li et al. loss surfaces in 3D")
    return fig
