"""The BN / no-BN smoothness statistics: the block bootstrap respects correlation, the seed
bootstrap is scipy's, the verdict only counts setups where both networks train."""
import numpy as np
import pandas as pd

from analysis import smoothness as stats
from analysis.results import label_variants
from vggbn.config import TrialConfig


def ar1(n: int, phi: float, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    x = np.empty(n)
    x[0] = rng.normal()
    for i in range(1, n):
        x[i] = phi * x[i - 1] + np.sqrt(1 - phi ** 2) * rng.normal()
    return scale * np.exp(0.5 * x)  # positive, like beta


def test_block_resample_keeps_runs_of_consecutive_probes():
    x = np.arange(20.0)
    rows = stats.circular_block_resample(x, np.random.default_rng(0), 50, block=4)
    assert rows.shape == (50, 20)
    steps = np.diff(rows, axis=1) % 20  # within a block: +1 (wrapping 19 -> 0)
    assert (steps[:, [i for i in range(19) if i % 4 != 3]] == 1).all()
    assert not (steps == 1).all()  # blocks start at random places


def test_block_bootstrap_is_wider_than_iid_on_correlated_probes():
    """Neighbouring probes are correlated; resampling them one by one understates the uncertainty."""
    widths = {"iid": [], "block": []}
    for s in range(20):
        rng = np.random.default_rng(s)
        a, b = ar1(60, 0.9, rng), ar1(60, 0.9, rng)
        for name, block in (("iid", 1), ("block", None)):
            r = np.random.default_rng(100 + s)
            ma = np.median(stats.circular_block_resample(a, r, 2000, block), axis=1)
            mb = np.median(stats.circular_block_resample(b, r, 2000, block), axis=1)
            lo, hi = np.percentile(ma / mb, [2.5, 97.5])
            widths[name].append(hi - lo)
    assert np.median(widths["block"]) > 1.3 * np.median(widths["iid"])


def test_ratio_of_medians_one_seed_and_many():
    rng = np.random.default_rng(1)
    bn, no = rng.exponential(1.0, 80), rng.exponential(3.0, 80)  # true ratio of medians 1/3
    r = stats.ratio_of_medians([bn], [no])
    assert r["ratio"] == np.median(bn) / np.median(no)
    assert "block bootstrap over probe steps" in r["method"]
    assert r["ci_low"] < r["ratio"] < r["ci_high"] < 1 and r["ci_low"] < 1 / 3 < r["ci_high"]
    assert stats.direction(r).startswith("BN smoother")
    # >= 3 seeds a side: the trials are the units (scipy's bootstrap over seeds)
    bns = [rng.exponential(1.0, 40) for _ in range(4)]
    nos = [rng.exponential(1.1, 40) for _ in range(3)]
    r = stats.ratio_of_medians(bns, nos)
    assert "bootstrap over seeds (4 BN, 3 no-BN" in r["method"]
    assert r["ratio"] == np.median([np.median(a) for a in bns]) / np.median([np.median(a) for a in nos])
    assert r["ci_low"] <= r["ratio"] <= r["ci_high"]
    assert stats.direction({**r, "ci_low": 0.8, "ci_high": 1.2}).startswith("no clear difference")
    assert "does not hold" in stats.direction({**r, "ci_low": 1.1, "ci_high": 1.5})


def synthetic_study(no_bn_acc: dict, beta_scale: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """bn off/on x lr; beta_scale[(lr, bn)] sets the size of that trial's beta."""
    trials, probes = [], []
    rng = np.random.default_rng(0)
    for lr in no_bn_acc:
        for bn in (False, True):
            tid = f"lr{lr}-bn{bn}"
            cfg = TrialConfig.from_flat({"preset": "vgg_a", "recipe": "seed", "optimizer": "sgd",
                                         "lr": lr, "bn": bn, "dataset": "fashion_mnist"}).to_flat()
            trials.append({"trial_id": tid, "sweep": "s", "status": "completed", **cfg,
                           "test_acc": 0.88 if bn else no_bn_acc[lr]})
            for step in range(0, 1000, 25):
                b = ar1(1, 0.0, rng, beta_scale[(lr, bn)])[0]
                probes += [{"trial_id": tid, "step": step, "eta_mult": m, "beta": b * m / 4,
                            "grad_diff": b * m} for m in (1, 2, 4)]
    return label_variants(pd.DataFrame(trials)), pd.DataFrame(probes)


def test_verdict_counts_only_setups_where_both_train():
    # lr 0.1: no-BN stuck at chance with a flat (small-beta) landscape; lr 0.05: both train, BN smoother
    t, p = synthetic_study({0.1: 0.10, 0.05: 0.86},
                           {(0.1, False): 0.5, (0.1, True): 4.0, (0.05, False): 9.0, (0.05, True): 4.0})
    comp = stats.smoothness_comparison(t, p).set_index("setup")
    assert set(comp.index) == {"lr=0.1", "lr=0.05"}
    assert not comp.loc["lr=0.1", "both_train"] and comp.loc["lr=0.05", "both_train"]
    assert comp.loc["lr=0.1", "ratio"] > 1 > comp.loc["lr=0.05", "ci_high"]
    # per trial: median over probe steps of the max over eta
    assert np.isclose(comp.loc["lr=0.05", "beta_bn"],
                      p[p["trial_id"] == "lr0.05-bnTrue"].groupby("step")["beta"].max().median())
    v = stats.verdict(comp.reset_index())
    assert v.startswith("The paper's direction holds") and "lr=0.05" in v and "lr=0.1" not in v
    # where both train and BN is the rougher one, the verdict says so
    t, p = synthetic_study({0.05: 0.86}, {(0.05, False): 3.0, (0.05, True): 9.0})
    v = stats.verdict(stats.smoothness_comparison(t, p))
    assert v.startswith("The paper's direction does not hold here") and "larger (CI above 1) at the one setup" in v


def test_band_width_is_the_mean_spread_across_learning_rates():
    trials = pd.DataFrame({"trial_id": ["a", "b", "c", "d"], "bn": [False, False, True, True]})
    steps = pd.DataFrame([{"trial_id": t, "step": s, "train_loss": loss}
                          for t, base, spread in (("a", 1.0, 0.0), ("b", 1.0, 0.6), ("c", 1.0, 0.0),
                                                  ("d", 1.0, 0.2))
                          for s in range(10) for loss in [base + spread * (s % 2)]]
                         + [{"trial_id": "a", "step": 10, "train_loss": 9.0}])  # only one run got there
    w = stats.band_width(trials, steps)
    assert np.isclose(w[False], 0.3) and np.isclose(w[True], 0.1)


def test_probes_that_blew_up_count_as_roughest_not_dropped():
    """A diverging run's last probes overflow (NaN/inf); dropping them would make it look smooth."""
    steady, blown = np.ones(8), np.array([1, 1, 2, np.nan, np.inf, np.nan, np.nan, np.nan])
    r = stats.ratio_of_medians([steady], [blown])
    assert r["median_no_bn"] == np.inf and r["ratio"] == 0.0
    t, p = synthetic_study({0.1: 0.10}, {(0.1, False): 1.0, (0.1, True): 4.0})
    t.loc[~t["bn"], "status"] = "diverged"
    p.loc[(p["trial_id"] == "lr0.1-bnFalse") & (p["step"] >= 500), ["beta", "grad_diff"]] = np.nan
    comp = stats.smoothness_comparison(t, p)
    assert comp["beta_no_bn"].iloc[0] == np.inf and not comp["both_train"].iloc[0]
    assert stats.verdict(comp).startswith("In no setup did both networks train")
