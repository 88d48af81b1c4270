"""Cost trade-offs and search insight: Pareto fronts with known answers, importance that finds the
parameter the metric depends on, the accuracy dot plot's axis and CIs, report sections. No Ray."""
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.container import ErrorbarContainer

from analysis import hpo, plots, tradeoffs
from analysis.results import Results, label_variants

NAN = math.nan


def test_pareto_front_known_answer_with_ties_and_nans():
    df = pd.DataFrame({"acc": [0.9, 0.8, 0.7, 0.9, NAN, 0.6, 0.95, 0.8],
                       "cost": [10, 5, 8, 10, 1, 2, NAN, 6]}, index=list("ABCDEFGH"))
    front = tradeoffs.pareto_front(df, "acc", ["cost"])
    # C is dominated by B; H ties B's accuracy at a higher cost; A and D tie exactly (both kept);
    # E and G lack a value: off the front and dominating nothing (else F and A would drop)
    assert list(front[front].index) == ["A", "B", "D", "F"]
    assert front.index.equals(df.index) and front.dtype == bool
    two = pd.DataFrame({"acc": [0.9, 0.9, 0.9], "gflops": [1.0, 2.0, 1.0], "params": [5, 1, 6]})
    assert tradeoffs.pareto_front(two, "acc", ["gflops", "params"]).tolist() == [True, True, False]


def _table():
    return pd.DataFrame({
        "variant": ["VGG_A", "VGG_BatchNorm", "Wide", "Never"], "variant_id": ["a", "bn", "w", "x"],
        "section": ["Network structure"] * 4, "n": [3, 3, 3, 1],
        "mean": [0.70, 0.80, 0.81, 0.60], "ci_low": [0.68, 0.77, 0.78, NAN],
        "ci_high": [0.72, 0.83, 0.84, NAN], "baseline": [True, False, False, False],
        "params": [100, 101, 400, 50], "gflops": [0.30, 0.31, 1.2, 0.35],
        "seconds_to_target": [50.0, 20.0, 40.0, NAN]})


def test_pareto_table_per_cost():
    pt = tradeoffs.pareto_table(_table()).set_index("variant")
    assert pt["front_gflops"].tolist() == [True, True, True, False]
    assert pt["front_params"].tolist() == [True, True, True, True]  # "Never" is the smallest
    # never reached the target: no seconds, not on that front; VGG_A is slower and worse than BN
    assert pt["front_seconds_to_target"].tolist() == [False, True, True, False]
    md = tradeoffs.pareto_markdown(pt.reset_index(), {"target": 0.7, "metric": "test_acc"})
    assert "Seconds to 70.0%" in md and "(n < 2: no CI)" in md and md.count("★") == 9


def _hpo_trials(n=60, seed=0):
    """Val accuracy peaks at lr = 1e-2 and does not depend on dropout or width; gflops = width."""
    rng = np.random.default_rng(seed)
    lr = 10 ** rng.uniform(-4, 0, n)
    dropout = rng.uniform(0, 0.6, n)
    width = rng.choice([0.5, 1.0], n)
    acc = 0.9 - 0.08 * (np.log10(lr) + 2) ** 2 + rng.normal(0, 0.002, n)
    return pd.DataFrame({"trial_id": [f"t{i:02d}" for i in range(n)], "sweep": "hpo",
                         "status": "completed", "lr": lr, "dropout": dropout, "width": width,
                         "val_acc": acc - 0.01, "best_val_acc": acc, "gflops": 0.3 * width,
                         "params": (1e6 * width).astype(int)})


SPEC = {"name": "hpo", "search": "optuna", "metric": ["val_acc", "gflops"], "mode": ["max", "min"],
        "space": {"lr": {"loguniform": [1e-4, 1.0], "grid": None}, "dropout": {"uniform": [0.0, 0.6]},
                  "width": {"choice": [0.5, 1.0]}, "seed": {"randint": [0, 100]}}}


def test_importance_ranks_the_parameter_the_metric_depends_on():
    imp = hpo.importance(_hpo_trials(), SPEC)
    assert list(imp.columns) == ["val_acc", "gflops"] and set(imp.index) == {"lr", "dropout", "width"}
    assert imp.index[0] == "lr" and imp.loc["lr", "val_acc"] > 2 * imp.loc["dropout", "val_acc"]
    assert imp["val_acc"].sum() == pytest.approx(1.0)
    assert imp["gflops"].idxmax() == "width"  # gflops is width's alone
    # not computable: the reason, not an exception
    assert "at least 2" in hpo.importance(_hpo_trials(), {**SPEC, "space": {"lr": SPEC["space"]["lr"]}})
    assert "at least 10" in hpo.importance(_hpo_trials(5), SPEC)
    errored = _hpo_trials().assign(status="errored")
    assert isinstance(hpo.importance(errored, SPEC), str)


def test_pareto_trials_of_a_multi_objective_search():
    t = pd.DataFrame({"trial_id": list("abcde"), "status": ["completed", "completed", "completed",
                                                             "early_stopped", "errored"],
                      "val_acc": [0.8, 0.9, 0.85, 0.7, 0.99], "best_val_acc": [0.82, 0.9, 0.8, 0.75, 0.99],
                      "gflops": [0.3, 1.2, 1.2, 0.1, 0.1]})
    front = hpo.pareto_trials(t, ["val_acc", "gflops"], ["max", "min"])
    # best_val_acc is used; c is dominated by b; the errored trial counts for nothing
    assert front["trial_id"].tolist() == ["b", "a", "d"]
    assert hpo.objectives({"metric": "val_acc", "mode": "max"}) == [("val_acc", "max")]


def _ablation_trials():
    accs = {"vgg_a": [0.70, 0.72, 0.71], "vgg_a_bn": [0.80, 0.78, 0.83, None], "vgg_a_l2": [0.99]}
    rows = [{"trial_id": f"{p}-{s}", "sweep": "abl", "status": "completed" if a is not None else "errored",
             "preset": p, "seed": s, "test_acc": a} for p, runs in accs.items() for s, a in enumerate(runs)]
    rows.append({"trial_id": "wide-0", "sweep": "abl", "status": "completed", "preset": "vgg_a_bn",
                 "seed": 9, "test_acc": 0.95})  # a second seed 0.95 vs 0.99 below: CI past 100%
    t = label_variants(pd.DataFrame(rows))
    return t


def test_accuracy_dots_every_seed_full_axis_unclipped_cis():
    trials = _ablation_trials()
    table = pd.DataFrame({
        "variant": ["VGG_A", "VGG_BatchNorm", "L2"], "variant_id": ["vgg_a", "vgg_a_bn", "vgg_a_l2"],
        "section": ["Network structure", "Network structure", "Loss function"], "n": [3, 4, 1],
        "mean": [0.71, 0.84, 0.99], "ci_low": [0.685, 0.70, NAN], "ci_high": [0.735, 1.05, NAN],
        "baseline": [True, False, False]})
    ax = plots.accuracy_dots(table, {"metric": "test_acc"}, trials).axes[0]
    dots = [c for c in ax.collections if isinstance(c, PathCollection)]
    xs = np.concatenate([c.get_offsets()[:, 0] for c in dots])
    seeds = 100 * trials.loc[trials["status"] == "completed", "test_acc"]
    assert sorted(xs) == pytest.approx(sorted([*seeds, 99.0]))  # every seed + the n=1 mean marker
    lo, hi = ax.get_xlim()
    assert lo <= 0 and hi >= 105  # from 0, and past the CI that reaches 105%
    bars = next(c for c in ax.containers if isinstance(c, ErrorbarContainer))
    segs = [s for lc in bars.lines[2] if isinstance(lc, LineCollection) for s in lc.get_segments()]
    ends = sorted(x for s in segs for x in (s[0][0], s[1][0]))
    assert ends == pytest.approx(sorted([68.5, 73.5, 70.0, 105.0]))  # exact: nothing clipped
    assert all(lo <= e <= hi for e in ends)
    assert any(abs(line.get_xdata()[0] - 71.0) < 1e-9 for line in ax.get_lines()
               if line.get_linestyle() == "--")  # the baseline's mean
    assert [t.get_text() for t in ax.get_yticklabels()][-1].endswith("(n=3)")  # first row on top


def test_parallel_coordinates_one_line_per_finished_trial():
    t = _hpo_trials(12)
    t.loc[0, "status"] = "errored"
    fig = hpo.parallel_coordinates(t, SPEC)
    lc = next(c for c in fig.axes[0].collections if isinstance(c, LineCollection))
    segs = lc.get_segments()
    assert len(segs) == 11 and len(segs[0]) == 5  # 3 params + 2 objectives
    assert all(-1e-9 <= y <= 1 + 1e-9 for s in segs for y in s[:, 1])


def test_report_sections_headings_and_pngs(tmp_path):
    figs = tmp_path / "figures"
    results = Results(trials=pd.concat([_ablation_trials(), _hpo_trials()], ignore_index=True),
                      epochs=pd.DataFrame(), steps=None,
                      specs=[{"spec": {"name": "abl", "search": "grid", "space": {}}}, {"spec": SPEC}])
    rel = lambda p: p.relative_to(tmp_path).as_posix()  # noqa: E731
    md = "\n".join(tradeoffs.report_sections(results, _table(), {"target": 0.7, "metric": "test_acc"},
                                             figs, rel) + hpo.report_sections(results, figs, rel))
    assert "## Cost trade-offs" in md and "## Search insight: hpo" in md and "## Search insight: abl" not in md
    assert "| lr |" in md and "Pareto trials" in md
    for png in ("pareto.png", "hpo_hpo_parallel.png"):
        assert (figs / png).read_bytes()[:4] == b"\x89PNG" and f"](figures/{png})" in md
    # one variant and a small search: no trade-off section, importance explained not computed
    small = Results(trials=_hpo_trials(4), epochs=pd.DataFrame(), steps=None, specs=[{"spec": SPEC}])
    md = "\n".join(tradeoffs.report_sections(small, _table().iloc[:1], {"target": 0.7}, figs, rel)
                    + hpo.report_sections(small, figs, rel))
    assert "Cost trade-offs" not in md and "not computed (4 finished trials" in md
    other = Results(trials=_ablation_trials(), epochs=pd.DataFrame(), steps=None, specs=[{"spec": SPEC}])
    md = "\n".join(tradeoffs.report_sections(other, _table(), {"target": 0.7}, figs, rel)
                    + hpo.report_sections(other, figs, rel))
    assert "## Search insight: hpo" in md and "nothing to show" in md  # no trials of that sweep
