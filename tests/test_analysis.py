"""Analysis: statistics against scipy, incomplete trials, sections, FLOPs, figures, `vggbn report`."""
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.collections import PathCollection, PolyCollection
from scipy import stats

from analysis import plots, table
from analysis.results import label_variants, status_counts
from conftest import vggbn, vggbn_main
from vggbn.config import TrialConfig

ACC = {  # preset -> (status, final test_acc) per seed
    "vgg_a": [("completed", 0.70), ("completed", 0.72), ("completed", 0.71), ("errored", None)],
    "vgg_a_bn": [("completed", 0.80), ("completed", 0.78), ("completed", 0.83), ("diverged", 0.1)],
    "vgg_a_l2": [("completed", 0.69), ("completed", 0.73), ("early_stopped", 0.5)],
    "vgg_a_bn_sgd": [("completed", 0.76)],
}


def hand_built():
    trials, epochs = [], []
    for preset, runs in ACC.items():
        for seed, (status, acc) in enumerate(runs):
            tid = f"{preset}-{seed}"
            cfg = TrialConfig.from_flat({"preset": preset, "seed": seed, "epochs": 3}).to_flat()
            trials.append({"trial_id": tid, "sweep": "hand", "status": status, **cfg,
                           "test_acc": acc, "params": 100, "best_epoch": 3, "wall_time_s": 10.0})
            if acc is not None:
                for e in (1, 2, 3):
                    epochs.append({"trial_id": tid, "epoch": e, "test_acc": acc * e / 3,
                                   "train_loss": 2.0 / e, "time_total_s": 5.0 * e,
                                   "images_per_s": 1000.0})
    return label_variants(pd.DataFrame(trials)), pd.DataFrame(epochs)


def test_statistics_match_scipy():
    trials, epochs = hand_built()
    tab, info = table.comparison_table(trials, epochs, baseline="vgg_a")
    row = tab.set_index("preset")
    a = np.array([0.70, 0.72, 0.71])
    b = np.array([0.80, 0.78, 0.83])
    bn = row.loc["vgg_a_bn"]
    assert bn["n"] == 3
    assert bn["mean"] == pytest.approx(b.mean()) and bn["std"] == pytest.approx(b.std(ddof=1))
    lo, hi = stats.t.interval(0.95, 2, loc=b.mean(), scale=stats.sem(b))
    assert (bn["ci_low"], bn["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert bn["p_value"] == pytest.approx(stats.ttest_ind(b, a, equal_var=False).pvalue)
    assert bn["delta"] == pytest.approx(b.mean() - a.mean()) and bn["significant"]
    l2 = row.loc["vgg_a_l2"]
    assert l2["p_value"] == pytest.approx(stats.ttest_ind([0.69, 0.73], a, equal_var=False).pvalue)
    assert l2["significant"] is False or l2["significant"] == False  # noqa: E712
    assert row.loc["vgg_a"]["baseline"] and math.isnan(row.loc["vgg_a"]["p_value"])
    one = row.loc["vgg_a_bn_sgd"]  # one seed: no std, no CI, no test
    assert one["n"] == 1 and math.isnan(one["std"]) and math.isnan(one["p_value"])
    assert info["target"] == pytest.approx(a.mean())
    # epochs to the target (baseline's mean 0.71): test_acc = acc * e / 3
    assert bn["epochs_to_target"] == pytest.approx(3.0) and bn["reached"] == "3/3"


def test_incomplete_trials_are_counted_not_dropped():
    trials, epochs = hand_built()
    c = status_counts(trials)
    assert c.sum().sum() == len(trials)
    tab, _ = table.comparison_table(trials, epochs)
    row = tab.set_index("preset")
    assert (row.loc["vgg_a", "n_errored"], row.loc["vgg_a_bn", "n_diverged"],
            row.loc["vgg_a_l2", "n_early_stopped"]) == (1, 1, 1)
    md = table.to_markdown(tab, _)
    assert "1 errored" in md and "1 diverged" in md and "1 early stopped" in md


def test_sections_in_the_study_order_with_labels_and_reference():
    trials, epochs = hand_built()
    tab, info = table.comparison_table(trials, epochs)
    assert list(tab["section"]) == ["Loss function", "Network structure", "Network structure",
                                    "Optimizer"]
    assert list(tab["variant"]) == ["VGG_A + L2 (1e-4)", "VGG_A", "VGG_BatchNorm",
                                    "VGG_BatchNorm + SGD (momentum 0.9)"]
    assert tab.set_index("preset").loc["vgg_a_bn", "reference"] == 80.43
    md = table.to_markdown(tab, info)
    assert "VGG_A (baseline)" in md and "80.43" in md and "†" in md
    assert "\\begin{tabular}" in table.to_latex(tab, info)


def test_best_epoch_column_only_for_seed_recipe_runs():
    """The study picked its epoch on the test set: shown beside its numbers, never as the main column."""
    trials, epochs = [], []
    for seed, curve in enumerate(([0.5, 0.8, 0.7], [0.6, 0.75, 0.74])):
        cfg = TrialConfig.from_flat({"preset": "vgg_a", "recipe": "seed", "seed": seed}).to_flat()
        trials.append({"trial_id": f"t{seed}", "sweep": "s", "status": "completed", **cfg,
                       "test_acc": curve[-1], "params": 1, "best_epoch": 2, "wall_time_s": 1.0})
        epochs += [{"trial_id": f"t{seed}", "epoch": e + 1, "test_acc": a, "time_total_s": e,
                    "images_per_s": 1.0} for e, a in enumerate(curve)]
    tab, info = table.comparison_table(label_variants(pd.DataFrame(trials)), pd.DataFrame(epochs))
    assert np.isclose(tab["mean"].iloc[0], 0.72) and np.isclose(tab["best_epoch_test_acc"].iloc[0], 0.775)
    d = table.display_frame(tab, info)
    assert d["Best-epoch test % (seed recipe)"].iloc[0] == "77.50"
    assert d["Test acc % (mean ± std)"].iloc[0].startswith("72.00")
    assert "flatters it" in table.to_markdown(tab, info)
    strong, strong_epochs = hand_built()  # the `strong` recipe: no such column
    tab, info = table.comparison_table(strong, strong_epochs)
    assert tab["best_epoch_test_acc"].isna().all()
    assert "Best-epoch test % (seed recipe)" not in table.display_frame(tab, info)


def test_own_reference_csv_and_baseline(tmp_path):
    trials, epochs = hand_built()
    ref = tmp_path / "ref.csv"
    ref.write_text("preset,reference_test_acc\nvgg_a_bn,90.5\n")
    tab, info = table.comparison_table(trials, epochs, baseline="vgg_a_bn",
                                       reference=table.load_reference(ref))
    row = tab.set_index("preset")
    assert row.loc["vgg_a_bn", "baseline"] and row.loc["vgg_a_bn", "reference"] == 90.5
    assert pd.isna(row.loc["vgg_a", "reference"])
    assert row.loc["vgg_a", "delta"] == pytest.approx(0.71 - np.mean([0.80, 0.78, 0.83]))


def test_flops_of_vgg_a_conv_and_linear_part():
    from torch.utils.flop_counter import FlopCounterMode

    from vggbn.models import build_model

    model = build_model(TrialConfig.from_flat({"preset": "vgg_a"}), 3, 10).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    ops = counter.get_flop_counts()["Global"]
    conv_linear = sum(v for op, v in ops.items()
                      if any(n in str(op) for n in ("convolution", "addmm", ".mm")))
    assert conv_linear == 2 * 153_293_824
    assert table.gflops(TrialConfig.from_flat({"preset": "vgg_a"}).to_flat()) * 1e9 >= conv_linear
    res = table.gflops(TrialConfig.from_flat({"preset": "vgg_a_dropout_bn_res"}).to_flat())
    assert res > 2 * table.gflops(TrialConfig.from_flat({"preset": "vgg_a"}).to_flat()) * 0.9


def test_figures_have_the_expected_artists(tmp_path):
    trials, epochs = hand_built()
    tab, info = table.comparison_table(trials, epochs)
    fig = plots.learning_curves(trials, epochs)
    ax_l, ax_a = fig.axes
    assert len(ax_l.get_lines()) == len(ax_a.get_lines()) == 4  # one mean line per variant
    assert len([c for c in ax_a.collections if isinstance(c, PolyCollection)]) == 4
    assert ax_a.get_ylabel() == "test accuracy (%)" and ax_l.get_xlabel() == "epoch"
    assert plots.save(fig, tmp_path / "lc.png").stat().st_size > 10_000
    fig = plots.accuracy_dots(tab, info, trials)
    ax = fig.axes[0]
    dots = np.concatenate([c.get_offsets()[:, 0] for c in ax.collections
                           if isinstance(c, PathCollection)
                           and not str(c.get_label()).startswith(("original", "mean"))])
    done = trials.loc[trials["status"] == "completed", "test_acc"]
    assert sorted(np.round(dots, 6)) == sorted(np.round(100 * done, 6))  # every seed, as a dot
    assert ax.get_xlim()[0] <= 0 and ax.get_xlim()[1] >= 100  # the axis is not cut to the data
    assert len(tab) == 4 and plots.save(fig, tmp_path / "acc.png").stat().st_size > 10_000
    # the loss band: per step across learning rates, one band each for BN off / on
    rows = []
    for bn in (False, True):
        for lr in (1e-3, 1e-4):
            tid = f"{bn}-{lr}"
            rows += [{"trial_id": tid, "step": s, "epoch": 1, "train_loss": 2 / s + lr * 100 + bn}
                     for s in range(1, 21)]
    tr = pd.DataFrame([{"trial_id": f"{bn}-{lr}", "bn": bn, "lr": lr}
                       for bn in (False, True) for lr in (1e-3, 1e-4)])
    fig = plots.loss_band(tr, pd.DataFrame(rows))
    polys = [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]
    assert len(polys) == 2 and fig.axes[0].get_xlabel() == "training step"
    band = polys[0].get_paths()[0].vertices
    assert band[:, 1].max() == pytest.approx(2 + 0.1) and band[:, 1].min() == pytest.approx(2 / 20 + 0.01)
    hp = trials.assign(lr=np.linspace(1e-4, 1e-2, len(trials)), best_val_acc=trials["test_acc"])
    fig = plots.hpo_progress(hp, "best_val_acc", "max", ["lr", "bn"])
    assert len([a for a in fig.axes if a.get_visible()]) == 3
    assert plots.save(fig, tmp_path / "hpo.png").stat().st_size > 10_000


@pytest.fixture
def smoke_dir(smoke_run):
    return smoke_run[0]


def report(*args):
    """`vggbn report` in this process (test_report_end_to_end_on_the_smoke_sweep runs the real one)."""
    return vggbn_main("report", *args)


def test_report_end_to_end_on_the_smoke_sweep(smoke_dir, tmp_path):
    out = tmp_path / "rep"
    r = vggbn("report", str(smoke_dir), "--out", str(out), timeout=300)
    assert r.returncode == 0, r.stderr
    md = (out / "report.md").read_text()
    assert "bn=False" in md and "bn=True" in md and "(baseline)" in md
    assert "Partial" not in md and "every trial completed" in md
    for f in ("figures/accuracy.png", "figures/learning_curves.png", "table.csv", "table.tex",
              "table.md"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
        if f.endswith(".png"):
            assert (out / f).read_bytes()[:4] == b"\x89PNG"
            assert f"]({f})" in md
    assert "git_commit" in md and "torch_version" in md
    csv = pd.read_csv(out / "table.csv")
    assert len(csv) == 2 and set(csv["n"]) == {2}
    # the study's statistic beside its column: each seed run's best epoch on the test set, averaged
    ep, tr = pd.read_parquet(smoke_dir / "epochs.parquet"), pd.read_parquet(smoke_dir / "trials.parquet")
    best = ep.groupby("trial_id")["test_acc"].max()
    for bn, want in tr.assign(best=tr["trial_id"].map(best)).groupby("bn")["best"].mean().items():
        assert np.isclose(csv.set_index("variant").loc[f"bn={bn}", "best_epoch_test_acc"], want)
    assert "Best-epoch test % (seed recipe)" in md and "flatters it" in md
    # the paper's claim as a number: BN / no-BN median beta with a CI, in words
    assert "## Is BN smoother?" in md and "block bootstrap over probe steps" in md
    assert any(w in md for w in ("The paper's direction holds", "does not hold", "In no setup"))


def test_report_on_a_partial_sweep_names_missing_trials(smoke_dir, tmp_path):
    part = tmp_path / "smoke"
    shutil.copytree(smoke_dir, part)
    t = pd.read_parquet(part / "trials.parquet")
    dropped = t.iloc[0]
    t = t.iloc[1:].copy()
    t.loc[t.index[0], "status"] = "incomplete"
    t.to_parquet(part / "trials.parquet")
    # keep the spec metadata (the export writes it) so the report knows the grid
    import pyarrow.parquet as pq
    meta = pq.read_schema(smoke_dir / "trials.parquet").metadata
    tbl = pq.read_table(part / "trials.parquet")
    pq.write_table(tbl.replace_schema_metadata({**(tbl.schema.metadata or {}), **meta}),
                   part / "trials.parquet")
    r = report(str(part))
    assert r.returncode == 0, r.stderr
    md = (part / "report" / "report.md").read_text()
    assert "Partial sweep" in md and "1 trials unfinished and 1 not started" in md
    assert f"missing: bn={dropped['bn']}, seed={dropped['seed']}" in md
    assert "1 missing" in r.stdout


def test_report_on_a_directory_without_results_exits_2(tmp_path):
    r = report(str(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "trials.parquet" in r.stderr


def test_study_reference_only_beside_its_own_dataset():
    trials, epochs = hand_built()
    fm = label_variants(trials.assign(dataset="fashion_mnist"))
    tab, _ = table.comparison_table(fm, epochs)
    assert tab["reference"].isna().all()  # the study's numbers are CIFAR-10 numbers


def test_probes_exported_and_landscape_end_to_end(smoke_dir, tmp_path):
    exp = tmp_path / "smoke"
    shutil.copytree(smoke_dir, exp)
    probes = pd.read_parquet(exp / "probes.parquet")
    assert list(probes.columns[:2]) == ["trial_id", "step"]
    assert {"eta", "loss", "grad_diff", "beta"} <= set(probes.columns)
    assert len(probes) == 4 * (3 * 16 // 4) * 4  # trials x probes x etas
    r = vggbn("landscape", exp, "--resolution", "3", "--samples", "64", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    surf = pd.read_parquet(exp / "surfaces.parquet")
    assert len(surf) == 4 * (3 + 9) and set(surf["kind"]) == {"1d", "2d"}
    assert surf["loss"].notna().all() and surf["acc"].between(0, 1).all()
    centre = surf[(surf["kind"] == "2d") & (surf["alpha"] == 0) & (surf["beta"] == 0)]
    assert (centre["loss"] < surf.groupby("trial_id")["loss"].transform("max")[centre.index]).all()
    rep = report(str(exp))
    assert rep.returncode == 0, rep.stderr
    md = (exp / "report" / "report.md").read_text()
    for f in ("santurkar_fig4.png", "landscape_1d.png", "landscape_2d.png", "landscape_3d.png"):
        assert (exp / "report" / "figures" / f).stat().st_size > 10_000, f
        assert f"figures/{f}" in md
    # one line per variant, its trials' β in seed order
    block = md.split("Median effective β-smoothness")[1].split("\n\n")[1].splitlines()
    from analysis.results import load

    t = load(exp).trials
    assert len(block) == t["label"].nunique()
    for label, g in t.sort_values("seed").groupby("label"):
        line = next(x for x in block if x.startswith(f"- {label}: "))
        assert line.endswith(" (seed " + ", ".join(map(str, g["seed"])) + ")")
        assert len(line.split(": ", 1)[1].split(" (seed")[0].split(", ")) == len(g)


def test_an_export_written_before_a_config_field_existed_reads_with_its_default(smoke_copy, tmp_path):
    """trials.parquet from before bn_position/dropout_position: the trials had the standard
    layouts, and loaded beside a new export, equal configs are one variant."""
    import pyarrow.parquet as pq

    from analysis.results import load

    old = tmp_path / "old"
    shutil.copytree(smoke_copy, old)
    t = pq.read_table(old / "trials.parquet")
    pq.write_table(t.drop_columns(["bn_position", "dropout_position"]), old / "trials.parquet")
    assert "bn_position" not in pd.read_parquet(old / "trials.parquet")
    r = load(old)
    assert set(r.trials["bn_position"]) == {"before_activation"}
    assert set(r.trials["dropout_position"]) == {"after_hidden"}
    both = load(old, smoke_copy).trials
    assert both.groupby("variant")["trial_id"].count().tolist() == [4, 4]  # 2 bn values x 2 seeds x 2 exports
    assert all(np.isfinite(table.gflops(row.to_dict())) for _, row in r.trials.iterrows())


def test_santurkar_figure_of_presets_shows_a_few_trials_each_named_once():
    """Presets differ in more than BN (no clean BN pairs): the figure shows the first two trials
    without BN and the first two with BN, each with its own legend entry, not all of them."""
    trials, _ = hand_built()
    rows = [{"trial_id": tid, "step": s, "eta_mult": m, "loss": 1.0 + m / s, "grad_diff": m / s, "beta": 10.0 / s}
            for tid in trials["trial_id"] for s in range(1, 11) for m in (0.5, 1.0)]
    fig = plots.santurkar_triple(trials, pd.DataFrame(rows))
    names = [t.get_text() for t in fig.legends[0].get_texts()]
    bn = trials.set_index("trial_id")["bn"].astype(bool)
    assert len(names) == len(set(names)) == 4 < len(trials)
    assert sum(n.startswith("with BN") for n in names) == 2 == sum(n.startswith("without BN") for n in names)
    assert bn.sum() >= 2 and (~bn).sum() >= 2
    assert all("seed" in n for n in names)
