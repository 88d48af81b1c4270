"""Statistics for a whole table against published worked examples (Holm, Welch, paired t, Hedges'
g, a 2^3 factorial), and the table and report built on them: Holm drives the mark, pairing uses the
shared seeds only, a design that is not a full factorial says why."""
import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import report, stats, table
from analysis.results import label_variants
from vggbn.config import TrialConfig


def test_holm_on_the_wikipedia_example():
    # Wikipedia, "Holm–Bonferroni method", example: four hypotheses at alpha 0.05; H1 and H4 rejected
    p = [0.01, 0.04, 0.03, 0.005]
    assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert list(stats.holm(p) < 0.05) == [True, False, False, True]
    # a row not tested (NaN) is not part of the family: still 4 hypotheses, not 5
    adj = stats.holm([0.01, math.nan, 0.04, 0.03, 0.005])
    assert math.isnan(adj[1]) and adj[[0, 2, 3, 4]] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(stats.holm([math.nan, math.nan])).all() and len(stats.holm([])) == 0


WELCH = [  # Wikipedia, "Welch's t-test", examples 1 and 2: published t, df, p
    ([27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4],
     [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4],
     -2.46, 25.0, 0.021),
    ([17.2, 20.9, 22.6, 18.1, 21.7, 21.4, 23.5, 24.2, 14.7, 21.8],
     [21.5, 22.8, 21.0, 23.0, 21.6, 23.6, 22.5, 20.7, 23.4, 21.8, 20.7, 21.7, 21.5, 22.5, 23.6, 21.5,
      22.5, 23.5, 21.5, 21.8],
     -1.57, 9.9, 0.149),
]


@pytest.mark.parametrize("a, b, t, df, p", WELCH)
def test_welch_on_the_wikipedia_examples(a, b, t, df, p):
    w = stats.welch(a, b)
    assert (round(w["t"], 2), round(w["df"], 1), round(w["p"], 3)) == (t, df, p)
    # the CI of the difference by hand: Δ ± t(0.975, df) · sqrt(s1²/n1 + s2²/n2)
    a, b = np.array(a), np.array(b)
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    half = sps.t.ppf(0.975, w["df"]) * se
    assert w["delta"] == pytest.approx(a.mean() - b.mean())
    assert (w["ci_low"], w["ci_high"]) == (pytest.approx(w["delta"] - half), pytest.approx(w["delta"] + half))
    assert stats.welch_p(a, b) == w["p"]
    assert math.isnan(stats.welch(a[:1], b)["p"]) and not math.isnan(stats.welch(a[:1], b)["delta"])


def test_paired_on_students_sleep_data():
    """R: t.test(extra ~ group, data = sleep, paired = TRUE) -> t = -4.0621, df = 9,
    p-value = 0.002833, 95% CI -2.4598858 -0.7001142, mean difference -1.58."""
    g1 = pd.Series([0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0], index=range(1, 11))
    g2 = pd.Series([1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4], index=range(1, 11))
    r = stats.paired(g1, g2)
    assert r["n_pairs"] == 10 and r["delta"] == pytest.approx(-1.58)
    assert round(r["p"], 6) == 0.002833
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(-2.4598858, abs=1e-7), pytest.approx(-0.7001142, abs=1e-7))
    # pairs by key: shuffled order, an extra unmatched patient and a missing value change nothing
    r2 = stats.paired(g1.sample(frac=1, random_state=0), pd.concat([g2, pd.Series({11: 9.9})]))
    assert r2["n_pairs"] == 10 and r2["p"] == pytest.approx(r["p"])
    one = stats.paired(g1.loc[[1]], g2)
    assert one["n_pairs"] == 1 and math.isnan(one["delta"]) and math.isnan(one["p"])


def test_hedges_g_on_published_examples():
    # Borenstein et al. (2009), Introduction to Meta-Analysis, ch. 4: means 103 / 100, SDs 5.5 / 4.5,
    # n 50 / 50 -> d = 0.5970, J = 0.9923, g = 0.5924, SE(g) = 0.2028
    r = stats.hedges_g_from_stats(103, 5.5, 50, 100, 4.5, 50)
    assert (round(r["d"], 4), round(r["g"], 4), round(r["se"], 4)) == (0.5970, 0.5924, 0.2028)
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(0.5924 - 1.96 * 0.2028, abs=1e-3),
                                           pytest.approx(0.5924 + 1.96 * 0.2028, abs=1e-3))
    # R package baselinr, hedges_g(c(5, 6, 7, 4, 5, 6), c(1, 1, 1, 0, 0, 0)) -> 0.8 (d = 1, J = 1 - 3/15)
    assert stats.hedges_g([5, 6, 7], [4, 5, 6])["g"] == pytest.approx(0.8)
    assert stats.hedges_g([4, 5, 6], [5, 6, 7])["g"] == pytest.approx(-0.8)
    assert math.isnan(stats.hedges_g([0.7], [0.6, 0.7])["g"]) and math.isnan(stats.hedges_g([1, 1], [1, 1])["g"])


def trials_frame(cells: dict, metric: str = "test_acc") -> pd.DataFrame:
    """cells: {flags: [value per seed, None = errored]} -> a labelled trials frame."""
    rows = []
    for flags, values in cells.items():
        for seed, v in enumerate(values):
            cfg = TrialConfig.from_flat({**dict(flags), "seed": seed, "width": 0.125}).to_flat()
            rows.append({"trial_id": f"t{len(rows)}", "sweep": "s", **cfg, metric: v,
                         "status": "completed" if v is not None else "errored", "params": 10,
                         "best_epoch": 1, "wall_time_s": 1.0})
    return label_variants(pd.DataFrame(rows))


def flags(bn, dropout, residual):
    return (("bn", bn), ("dropout", dropout), ("residual", residual))


# Montgomery, Design and Analysis of Experiments, Example 6.1 (plasma etch, a 2^3 with 2 replicates):
# A = gap, B = gas flow, C = RF power -> here bn, dropout, residual; response: etch rate
ETCH = {"(1)": [550, 604], "a": [669, 650], "b": [633, 601], "ab": [642, 635],
        "c": [1037, 1052], "ac": [749, 868], "bc": [1075, 1063], "abc": [729, 860]}


def test_factorial_effects_match_montgomerys_plasma_etch_example():
    cells = {flags("a" in k, 0.5 if "b" in k else 0.0, "c" in k): v for k, v in ETCH.items()}
    eff = stats.factorial_effects(trials_frame(cells), scale=1.0)
    assert eff.ok and eff.factors == ["bn", "dropout", "residual"] and eff.n == 16 and eff.cells == 8
    t = eff.terms.set_index("term")
    # the book's effect estimates: A -101.625, B 7.375, C 306.125; AB -24.875, AC -153.625,
    # BC -2.125 (an interaction here is the change of A's effect between B's levels = 2 x the book's)
    assert t.loc[["bn", "dropout", "residual"], "effect"].tolist() == pytest.approx([-101.625, 7.375, 306.125])
    assert t.loc[["bn × dropout", "bn × residual", "dropout × residual"], "effect"].tolist() == \
        pytest.approx([2 * -24.875, 2 * -153.625, 2 * -2.125])
    # the book's sums of squares (SS_A 41,310.5625, SS_C 374,850.0625, SS_AC 94,402.5625) and SS_E
    # 18,020.50 on 8 df; without the ABC term (SS 126.5625) in the model it joins the residual
    mse = (18020.50 + 126.5625) / 9
    assert eff.resid_df == 9
    for term, ss in (("bn", 41310.5625), ("residual", 374850.0625), ("bn × residual", 94402.5625)):
        assert t.loc[term, "p"] == pytest.approx(sps.f.sf(ss / mse, 1, 9))
    # the CI is the coefficient's t interval, in the same units as the effect
    half = sps.t.ppf(0.975, 9) * math.sqrt(mse / 16)
    assert t.loc["bn", "ci_high"] - t.loc["bn", "effect"] == pytest.approx(2 * half)
    assert t.loc["bn × residual", "ci_high"] - t.loc["bn × residual", "effect"] == pytest.approx(4 * half)
    assert (t["p_holm"] >= t["p"]).all()
    # the book's conclusions: gap, power and their interaction matter; gas flow does not
    assert set(t.index[t["p_holm"] < 0.05]) == {"bn", "residual", "bn × residual"}
    said = " ".join(eff.sentences)
    assert "The residual connection's gain depends on BN: +459.8 points without BN, +152.5 with BN" in said
    assert "BN lowers test accuracy by 101.6 points" in said
    assert "Dropout 0.5 has no measurable effect" in said
    assert "does not measurably depend on dropout" in said


def test_factorial_effects_known_by_construction():
    """y = 0.80 + 0.03 bn + 0.01 bn·dropout/0.5, noise ±0.001 balanced within each cell: BN's gain
    is 3 points without dropout and 4 with; residual does nothing and interacts with nothing."""
    cells = {flags(bn, d, res): [0.80 + 0.03 * bn + 0.02 * bn * d + e for e in (0.001, -0.001)]
             for bn, d, res in itertools.product([False, True], [0.0, 0.5], [False, True])}
    eff = stats.factorial_effects(trials_frame(cells))
    t = eff.terms.set_index("term")
    assert t.loc["bn", "effect"] == pytest.approx(3.5) and t.loc["dropout", "effect"] == pytest.approx(0.5)
    assert t.loc["bn × dropout", "effect"] == pytest.approx(1.0)
    for null in ("residual", "bn × residual", "dropout × residual"):
        assert t.loc[null, "effect"] == pytest.approx(0, abs=1e-9) and t.loc[null, "p_holm"] > 0.5
    assert t.loc["bn × dropout", "p_holm"] < 0.05
    s = eff.sentences
    assert s[0].startswith("BN raises test accuracy by 3.5 points [+3.")
    assert "BN's gain depends on dropout: +3.0 points without dropout, +4.0 with dropout 0.5" in s[3]
    assert s[4].startswith("BN's gain does not measurably depend on the residual connection (interaction p = ")
    assert s[2].startswith("The residual connection has no measurable effect on test accuracy: +0.0 points")


def test_not_a_full_factorial_says_why():
    full = {flags(bn, d, False): [0.8, 0.81] for bn, d in itertools.product([False, True], [0.0, 0.5])}
    assert stats.factorial_effects(trials_frame(full)).ok  # 2 x 2, two seeds each: fine
    one_seed = {**full, flags(True, 0.5, False): [0.8, None]}  # its second seed errored
    r = stats.factorial_effects(trials_frame(one_seed))
    assert not r.ok and "only one completed trial (seed) at bn=True, dropout=0.5" in r.reason
    missing = {k: v for k, v in full.items() if k != flags(False, 0.5, False)}
    r = stats.factorial_effects(trials_frame(missing))
    assert not r.ok and "no completed trial at bn=False, dropout=0.5" in r.reason and r.terms.empty
    # the study's presets: their flags follow from the preset, so there is one factor
    presets = {(("preset", p),): [0.7, 0.72] for p in ("vgg_a", "vgg_a_bn", "vgg_a_dropout_bn_res")}
    r = stats.factorial_effects(trials_frame(presets))
    assert r.factors == ["preset"] and r.reason.startswith("only one factor varies (preset)")
    lrs = {(("bn", b), ("lr", lr)): [0.7, 0.71] for b in (False, True) for lr in np.geomspace(1e-4, 1e-2, 7)}
    assert "lr takes 7 values" in stats.factorial_effects(trials_frame(lrs)).reason


NO_EPOCHS = pd.DataFrame(columns=["trial_id", "epoch", "test_acc", "images_per_s", "time_total_s"])


def study():
    """vgg_a (the baseline; seed 3 errored), vgg_a_bn far above it, vgg_a_l2 just above it (Welch
    p < 0.05, not after Holm), vgg_a_leaky_relu like it."""
    acc = {"vgg_a": [0.700, 0.710, 0.720, None], "vgg_a_bn": [0.80, 0.79, 0.82, 0.81],
           "vgg_a_l2": [0.725, 0.735, 0.745], "vgg_a_leaky_relu": [0.70, 0.72, 0.69]}
    return trials_frame({(("preset", p),): v for p, v in acc.items()})


def test_table_holm_marks_and_pairs_on_shared_seeds_only():
    trials = study()
    tab, info = table.comparison_table(trials, NO_EPOCHS)
    row = tab.set_index("preset")
    assert info["family"] == 3 and math.isnan(row.loc["vgg_a", "p_holm"])
    tested = tab[tab["p_value"].notna()]
    assert (tested["p_holm"] >= tested["p_value"]).all()
    assert list(tested["p_holm"]) == pytest.approx(list(stats.holm(tested["p_value"])))
    l2, bn = row.loc["vgg_a_l2"], row.loc["vgg_a_bn"]
    assert l2["p_value"] < 0.05 < l2["p_holm"] and l2["significant"] == False  # noqa: E712
    assert bn["p_holm"] < 0.05 and bn["significant"] == True  # noqa: E712
    d = table.display_frame(tab, info).set_index("Variant")
    assert d.loc["VGG_A + L2 (1e-4)", "Δ vs baseline [95% CI]"].endswith("†")  # Welch alone: no mark
    assert "†" not in d.loc["VGG_BatchNorm", "Δ vs baseline [95% CI]"]
    assert d.loc["VGG_A + L2 (1e-4)", "p (Welch / Holm)"] == f"{l2['p_value']:.3f} / {l2['p_holm']:.3f}"
    # paired: seeds 0-2 only (the baseline's seed 3 errored), differences 0.10, 0.08, 0.10
    assert bn["n_pairs"] == 3 and bn["paired_delta"] == pytest.approx(np.mean([0.10, 0.08, 0.10]))
    assert bn["paired_ci_low"] < bn["paired_delta"] < bn["paired_ci_high"]
    assert bn["delta"] == pytest.approx(0.805 - 0.71)  # Welch: all of the variant's seeds
    assert d.loc["VGG_BatchNorm", "Paired Δ [95% CI] (seeds)"].endswith("(3)")
    assert bn["hedges_g"] == pytest.approx(stats.hedges_g([0.80, 0.79, 0.82, 0.81], [0.70, 0.71, 0.72])["g"])
    md = table.to_markdown(tab, info)
    assert "family of the 3 rows tested" in md and "only on the seeds both" in md
    assert {"p_holm", "delta_ci_low", "delta_ci_high", "hedges_g", "g_ci_low", "g_ci_high", "n_pairs",
            "paired_delta", "paired_ci_low", "paired_ci_high", "paired_p", "paired_p_holm"} <= set(tab.columns)
    assert list(tab.columns).index("p_holm") == list(tab.columns).index("p_value") + 1


def test_report_opens_with_the_conclusions_and_the_effects_section():
    trials = study()
    tab, info = table.comparison_table(trials, NO_EPOCHS)
    effects = {"s": stats.factorial_effects(trials)}
    md = "\n".join(report._conclusions(tab, info, effects, None))
    assert "**VGG_BatchNorm** is 9.50 points higher: Δ +9.50" in md and "paired on the 3 shared seeds" in md
    assert "No difference at 0.05 after correction: VGG_A + L2 (1e-4) Δ +2.50" in md
    assert "Factorial" not in md  # the presets are not crossed flags
    sec = "\n".join(report._effects_section(effects, "test_acc"))
    assert "No factorial model: only one factor varies (preset)" in sec
    cells = {flags(bn, d, res): [0.80 + 0.03 * bn + 0.02 * bn * d + e for e in (0.001, -0.001)]
             for bn, d, res in itertools.product([False, True], [0.0, 0.5], [False, True])}
    fac = trials_frame(cells)
    tab, info = table.comparison_table(fac, NO_EPOCHS)
    effects = {"s": stats.factorial_effects(fac)}
    md = "\n".join(report._conclusions(tab, info, effects, None))
    assert "- Factorial bn × dropout × residual, 16 trials: BN raises test accuracy by 3.5 points" in md
    assert "BN's gain depends on dropout" in md and "does not measurably depend" not in md
    sec = "\n".join(report._effects_section(effects, "test_acc"))
    assert "| bn × dropout |  | +1.00 [" in sec and "| bn | False → True | +3.50 [" in sec
