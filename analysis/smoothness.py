"""Statistics of the BN / no-BN comparison of smoothness (Santurkar et al. 2018, Fig. 4).

The question is whether BN's effective β-smoothness is smaller than no-BN's, as a ratio of medians
(BN / no BN; < 1 is the paper's direction) with a 95% CI:
- with >= 3 seeds on each side, a bootstrap over seeds (scipy.stats.bootstrap, the trials are the
  independent units; each trial's summary is its median over probe steps);
- with fewer, a circular block bootstrap over probe steps (Politis & Romano 1992): neighbouring
  probes of one run are correlated, so whole blocks of consecutive probes are resampled, which an
  i.i.d. bootstrap would not respect (its interval would be too narrow). scipy has no block
  bootstrap; the resampling below is the textbook one.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from analysis.frames import swept_keys

MIN_SEEDS = 3  # fewer trials a side: the block bootstrap over probe steps
TRAINS = 0.5  # a run "trains" when its final test accuracy is at least 5x chance (0.5 with 10 classes)


def block_length(n: int) -> int:
    """n^(1/3) (the usual order for a block bootstrap of the median), at least 2, at most n."""
    return max(1, min(n, max(2, round(n ** (1 / 3)))))


def circular_block_resample(x: np.ndarray, rng: np.random.Generator, n_resamples: int,
                            block: int | None = None) -> np.ndarray:
    """(n_resamples, len(x)): each row is len(x) values made of blocks of `block` consecutive
    values (wrapping around the end) starting at uniform random positions."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    b = block or block_length(n)
    k = math.ceil(n / b)
    starts = rng.integers(0, n, size=(n_resamples, k))
    idx = (starts[:, :, None] + np.arange(b)[None, None, :]).reshape(n_resamples, k * b)[:, :n] % n
    return x[idx]


def ratio_of_medians(bn: list[np.ndarray], no_bn: list[np.ndarray], *, n_resamples: int = 4000,
                     seed: int = 0) -> dict:
    """BN / no-BN ratio of median β with a 95% CI.

    `bn`, `no_bn`: one array per trial (seed) of the per-probe values. Each side's statistic is the
    median over its trials of each trial's median. Returns ratio, ci_low, ci_high, method, n_bn,
    n_no_bn, median_bn, median_no_bn.
    """
    # a probe that blew up (inf, or NaN once the loss overflowed) is the roughest there is: +inf,
    # never dropped (dropping it would make the network that diverged look smoother)
    bn = [np.where(np.isnan(a), np.inf, a) for a in (np.asarray(x, dtype=float) for x in bn)]
    no_bn = [np.where(np.isnan(a), np.inf, a) for a in (np.asarray(x, dtype=float) for x in no_bn)]
    bn, no_bn = [a for a in bn if len(a)], [a for a in no_bn if len(a)]
    out = {"n_bn": len(bn), "n_no_bn": len(no_bn), "ratio": math.nan, "ci_low": math.nan,
           "ci_high": math.nan, "method": "", "median_bn": math.nan, "median_no_bn": math.nan}
    if not bn or not no_bn:
        return out
    med_bn = np.array([np.median(a) for a in bn])
    med_no = np.array([np.median(a) for a in no_bn])
    with np.errstate(invalid="ignore", divide="ignore"):
        out.update(median_bn=float(np.median(med_bn)), median_no_bn=float(np.median(med_no)),
                   ratio=float(np.median(med_bn) / np.median(med_no)))
    rng = np.random.default_rng(seed)
    if len(bn) >= MIN_SEEDS and len(no_bn) >= MIN_SEEDS:
        res = stats.bootstrap((med_bn, med_no), lambda a, b, axis=-1:
                              np.median(a, axis=axis) / np.median(b, axis=axis),
                              n_resamples=n_resamples, method="percentile", rng=rng)
        out.update(ci_low=float(res.confidence_interval.low),
                   ci_high=float(res.confidence_interval.high),
                   method=f"bootstrap over seeds ({len(bn)} BN, {len(no_bn)} no-BN trials)")
        return out

    def side(series: list[np.ndarray]) -> np.ndarray:  # (n_resamples,) medians over trials
        per_trial = np.stack([np.median(circular_block_resample(a, rng, n_resamples), axis=1)
                              for a in series])
        return np.median(per_trial, axis=0)

    with np.errstate(invalid="ignore", divide="ignore"):  # inf / inf: no ratio in that resample
        boot = side(bn) / side(no_bn)
    boot = boot[~np.isnan(boot)]
    if not len(boot):
        return out
    blocks = sorted({block_length(len(a)) for a in bn + no_bn})
    out.update(ci_low=float(np.percentile(boot, 2.5)), ci_high=float(np.percentile(boot, 97.5)),
               method=f"block bootstrap over probe steps (blocks of {'/'.join(map(str, blocks))} "
                      f"probes; {len(bn)} BN, {len(no_bn)} no-BN trial{'s' if len(no_bn) > 1 else ''})")
    return out


def direction(r: dict) -> str:
    """The paper's direction (BN smoother: ratio < 1) in words."""
    if math.isnan(r["ratio"]):
        return "no data"
    if r["ci_high"] < 1:
        return "BN smoother (CI below 1)"
    if r["ci_low"] > 1:
        return "BN rougher (CI above 1): the paper's direction does not hold"
    return "no clear difference (CI includes 1)"


def per_probe(probes: pd.DataFrame) -> pd.DataFrame:
    """One row per (trial, probe step): the max over η of β and of the gradient difference; a
    probe whose loss overflowed (NaN) counts as +inf."""
    blown = probes[["beta", "grad_diff"]].fillna(np.inf)
    return probes[["trial_id", "step"]].join(blown).groupby(["trial_id", "step"]).agg(
        beta=("beta", "max"), grad_diff=("grad_diff", "max")).reset_index()


def smoothness_comparison(trials: pd.DataFrame, probes: pd.DataFrame) -> pd.DataFrame:
    """One row per setup (the swept keys other than bn and seed) with BN and no-BN trials: test
    accuracy of each side, median β and gradient difference, the BN / no-BN ratio with its CI."""
    t = trials[trials["status"].isin(["completed", "early_stopped", "diverged"])]
    at_step = per_probe(probes)
    keys = [k for k in swept_keys(trials) if k not in ("bn", "seed", "preset")]
    rows = []
    for setup, g in (t.groupby(keys, sort=True, dropna=False) if keys else [((), t)]):
        setup = setup if isinstance(setup, tuple) else (setup,)
        sides = {b: g[g["bn"].astype(bool) == b] for b in (True, False)}
        if any(s.empty for s in sides.values()):
            continue
        series = {b: [at_step.loc[at_step["trial_id"] == tid] for tid in s["trial_id"]]
                  for b, s in sides.items()}
        r = ratio_of_medians([s["beta"].to_numpy() for s in series[True]],
                             [s["beta"].to_numpy() for s in series[False]])
        acc = {b: pd.to_numeric(s["test_acc"], errors="coerce") for b, s in sides.items()}
        gmed = {b: float(np.median([np.median(s["grad_diff"]) for s in series[b] if len(s)]
                                   or [math.nan])) for b in (True, False)}
        classes = 100 if str(g["dataset"].iloc[0]) == "cifar100" else 10
        # every trial of both sides trained: not diverged, final test accuracy >= 5x chance
        both_train = all(s["status"].eq("completed").all() and (acc[b] >= TRAINS * 10 / classes).all()
                         for b, s in sides.items())
        acc = {b: float(a.mean()) for b, a in acc.items()}
        name = ", ".join(f"{k}={v}" for k, v in zip(keys, setup)) or "the one setup"
        rows.append({**dict(zip(keys, setup)), "setup": name,
                     "test_acc_no_bn": acc[False], "test_acc_bn": acc[True], "both_train": both_train,
                     "beta_no_bn": r["median_no_bn"], "beta_bn": r["median_bn"], "ratio": r["ratio"],
                     "ci_low": r["ci_low"], "ci_high": r["ci_high"], "method": r["method"],
                     "grad_diff_no_bn": gmed[False], "grad_diff_bn": gmed[True],
                     "direction": direction(r)})
    return pd.DataFrame(rows)


def band_width(trials: pd.DataFrame, steps: pd.DataFrame) -> dict[bool, float]:
    """The course's band as one number per side: at each step, max minus min of the training loss
    across the runs (different learning rates), averaged over the steps every run reached."""
    bn = trials.set_index("trial_id")["bn"].astype(bool)
    s = steps.assign(bn=steps["trial_id"].map(bn)).dropna(subset=["bn"])
    out = {}
    for side, g in s.groupby("bn"):
        wide = g.pivot_table(index="step", columns="trial_id", values="train_loss").dropna()
        out[bool(side)] = float((wide.max(axis=1) - wide.min(axis=1)).mean()) if len(wide) else math.nan
    return out


def verdict(comp: pd.DataFrame) -> str:
    """One sentence: does the paper's direction hold where both networks train?"""
    if comp.empty:
        return "No setup has both BN and no-BN trials with probes."
    trained = comp[comp["both_train"]]
    if trained.empty:
        return ("In no setup did both networks train (test accuracy below the threshold), so the "
                "comparison says nothing about the paper's claim here.")
    smoother = trained["ci_high"] < 1
    rougher = trained["ci_low"] > 1
    names = ", ".join(trained["setup"])
    if smoother.all():
        return (f"The paper's direction holds: BN's median effective β-smoothness is smaller than "
                f"no-BN's, with the 95% CI of the ratio below 1, at every setup where both "
                f"networks train ({names}).")
    parts = []
    if rougher.any():
        parts.append(f"BN's median β is larger (CI above 1) at {', '.join(trained.loc[rougher, 'setup'])}")
    if (~smoother & ~rougher).any():
        parts.append(f"the CI includes 1 at {', '.join(trained.loc[~smoother & ~rougher, 'setup'])}")
    if smoother.any():
        parts.append(f"BN is smoother (CI below 1) at {', '.join(trained.loc[smoother, 'setup'])}")
    head = ("The paper's direction does not hold here" if not smoother.any()
            else "The paper's direction holds only in part")
    return f"{head}: where both networks train, " + "; ".join(parts) + "."
