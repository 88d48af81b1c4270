"""Population Based Training in the report: each trial's schedule of the perturbed values over
epochs, its exploits (the epoch it continued from another trial's checkpoint) marked, and the
table of exploits. Reads only the export's per-epoch columns (vggbn.store.pbt_record writes them):
pbt_<key> (the value in force), pbt_donor_trial, pbt_donor_epoch, pbt_exploit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from vggbn.schema import PBT_DONOR as DONOR
from vggbn.schema import PBT_DONOR_EPOCH as DONOR_EPOCH
from vggbn.schema import PBT_EXPLOIT as EXPLOIT
from vggbn.schema import PBT_PREFIX

from analysis import plots

_NOT_KEYS = {DONOR, DONOR_EPOCH, EXPLOIT}


def perturbed_keys(epochs: pd.DataFrame | None) -> list[str]:
    if epochs is None:
        return []
    return [c.removeprefix(PBT_PREFIX) for c in epochs.columns
            if c.startswith(PBT_PREFIX) and c not in _NOT_KEYS]


def schedule_frame(epochs: pd.DataFrame) -> pd.DataFrame:
    """One row per PBT trial, epoch and perturbed key: the value in force, and the exploit that
    started the epoch (donor trial and epoch), if one did. The figure is drawn from this."""
    keys = perturbed_keys(epochs)
    if not keys:
        return pd.DataFrame(columns=["trial_id", "epoch", "key", "value", "exploit", "donor_trial",
                                     "donor_epoch"])
    e = epochs.dropna(subset=[PBT_PREFIX + keys[0]])
    long = e.melt(id_vars=["trial_id", "epoch", EXPLOIT, DONOR, DONOR_EPOCH],
                  value_vars=[PBT_PREFIX + k for k in keys], var_name="key", value_name="value")
    long["key"] = long["key"].str.removeprefix(PBT_PREFIX)
    long = long.rename(columns={EXPLOIT: "exploit", DONOR: "donor_trial", DONOR_EPOCH: "donor_epoch"})
    long["exploit"] = long["exploit"].fillna(False).astype(bool)
    return long.sort_values(["key", "trial_id", "epoch"], ignore_index=True)[
        ["trial_id", "epoch", "key", "value", "exploit", "donor_trial", "donor_epoch"]]


def schedule_figure(sched: pd.DataFrame, epochs: pd.DataFrame, metric: str = "val_acc"):
    """A panel per perturbed key (its value per epoch, one line per trial) and one of the metric;
    an exploit is a circled point, joined by a dotted line to the donor's value at the epoch its
    weights came from."""
    keys = list(dict.fromkeys(sched["key"]))
    with plots.plt.rc_context(plots.STYLE):
        fig, axes = plots.plt.subplots(1, len(keys) + 1, figsize=(4 * (len(keys) + 1), 3.6), squeeze=False)
        trials = list(dict.fromkeys(sched["trial_id"]))
        colors = dict(zip(trials, plots.colors(len(trials))))
        for ax, key in zip(axes[0], keys):
            s = sched[sched["key"] == key]
            for tid, g in s.groupby("trial_id", sort=False):
                ax.plot(g["epoch"], g["value"], drawstyle="steps-mid", color=colors[tid], marker=".",
                        label=str(tid).rsplit("_", 1)[-1])
                for _, x in g[g["exploit"]].iterrows():
                    ax.scatter([x["epoch"]], [x["value"]], s=60, facecolors="none",
                               edgecolors=colors[tid], linewidths=1.5, zorder=3)
                    d = s[(s["trial_id"] == x["donor_trial"]) & (s["epoch"] == x["donor_epoch"])]
                    if len(d):
                        ax.plot([x["donor_epoch"], x["epoch"]], [d["value"].iloc[0], x["value"]],
                                ":", color=colors[tid], linewidth=1)
            v = s["value"].astype(float)
            if (v > 0).all() and v.max() / v.min() > 10:
                ax.set_yscale("log")
            ax.set(xlabel="epoch", ylabel=key, title=f"{key} in force")
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax = axes[0][-1]
        e = epochs[epochs["trial_id"].isin(trials)]
        if metric in e:
            for tid, g in e.sort_values("epoch").groupby("trial_id", sort=False):
                ax.plot(g["epoch"], g[metric] * (100 if metric.endswith("_acc") else 1), marker=".",
                        color=colors.get(tid))
                ex = g[g[EXPLOIT].fillna(False).astype(bool)]
                ax.scatter(ex["epoch"], ex[metric] * (100 if metric.endswith("_acc") else 1), s=60,
                           facecolors="none", edgecolors=colors.get(tid), linewidths=1.5, zorder=3)
        ax.set(xlabel="epoch", ylabel=metric + (" (%)" if metric.endswith("_acc") else ""),
               title=metric)
        axes[0][0].legend(title="trial", loc="best")
        fig.suptitle("PBT schedules: circled = the epoch after an exploit (dotted: from the donor's "
                     "value at the epoch its weights came from)")
    return fig


def report_sections(results, figs: Path, rel: Callable[[Path], str]) -> list[str]:
    """'## PBT schedules: NAME' per PBT sweep: the figure and the exploits."""
    md: list[str] = []
    epochs = results.epochs
    if not perturbed_keys(epochs):
        return md
    sched = schedule_frame(epochs)
    for meta in results.specs:
        spec = (meta or {}).get("spec") or {}
        kind = (spec.get("scheduler") or {}).get("type")
        if kind not in ("pbt", "pb2"):
            continue
        name = spec.get("name")
        ids = results.trials.loc[results.trials["sweep"] == name, "trial_id"]
        s = sched[sched["trial_id"].isin(ids)]
        if s.empty:
            continue
        metric = spec.get("metric") if isinstance(spec.get("metric"), str) else "val_acc"
        fig = plots.save(schedule_figure(s, epochs, metric), figs / f"pbt_{name}.png")
        ex = s[s["exploit"]].pivot_table(index=["trial_id", "epoch", "donor_trial", "donor_epoch"],
                                         columns="key", values="value").reset_index()
        md += [f"## PBT schedules: {name}", "",
               f"{kind}: each trial's config is a schedule. The values in force per epoch (the "
               f"optimizer's lr follows the peak lr through the schedule), and the {len(ex)} exploits: "
               f"the trial continued, from that epoch on, from the donor's checkpoint after "
               f"`donor_epoch`, with the values shown.", "", f"![PBT schedules]({rel(fig)})", ""]
        if len(ex):
            cols = list(ex.columns)
            md += ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
            md += ["| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r) + " |"
                   for r in ex.itertuples(index=False)]
            md.append("")
    return md
