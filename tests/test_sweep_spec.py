"""SweepSpec validation and dry runs: no Ray is started here."""
from pathlib import Path

import pytest
import yaml

from conftest import SWEEPS, vggbn, vggbn_main
from vggbn.plan.dry_run import dry_run
from vggbn.plan.load import load_spec
from vggbn.spec.model import SweepSpecError
OK = {"name": "t", "base": {"dataset": "synthetic", "epochs": 4}, "space": {"bn": {"grid": [False, True]}}}


def write(tmp_path, spec) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def with_(**kw):
    return {**OK, **kw}


BAD = [  # (spec, words the message must contain besides the file name)
    (with_(bogus=1), ["bogus", "unknown key"]),
    (with_(serach="optuna"), ["serach", "did you mean 'search'"]),
    (with_(base={"dropuot": 0.5}), ["base", "dropuot", "did you mean 'dropout'"]),
    (with_(base={"dropout": 1.5}), ["base", "dropout", "1.5"]),
    (with_(space={"widht": {"grid": [0.5]}}), ["space.widht", "did you mean 'width'"]),
    (with_(space={"width": {"grid": [0.5, 0]}}), ["space.width.grid[1]", "width"]),
    (with_(space={"lr": {"loguniform": [0, 1]}}, search="random"), ["space.lr", "low > 0"]),
    (with_(space={"lr": {"uniform": [0.1, 0.01]}}, search="random"), ["space.lr", "low < high"]),
    (with_(space={"lr": {"grid": [0.1], "choice": [0.2]}}), ["space.lr", "exactly one"]),
    (with_(space={"lr": {"grid": [0.1, 0.01]}}, search="optuna", metric="val_acc",
           base={"val_fraction": 0.1}), ["space.lr", "optuna", "choice"]),
    (with_(space={"lr": {"choice": [0.1, 0.01]}}), ["space.lr", "search: random or optuna"]),
    (with_(metric="accuracy"), ["metric", "accuracy", "test_acc"]),
    (with_(metric="test_loss", mode="max"), ["mode", "min"]),
    (with_(metric="val_acc"), ["val_acc", "val_fraction"]),
    (with_(scheduler={"type": "asha"}), ["test_acc", "test set", "val_acc"]),
    (with_(scheduler={"type": "asha", "max_t": 10}, metric="val_acc",
           base={"dataset": "synthetic", "epochs": 4, "val_fraction": 0.1}), ["max_t", "10"]),
    (with_(scheduler={"type": "hyperband"}), ["scheduler.type", "hyperband"]),
    (with_(resources={"gpu": 1.5}), ["gpu", "whole number"]),
    (with_(resources={"cpu": 0}), ["resources.cpu"]),
    (with_(name="my sweep"), ["name"]),
    (with_(space={"bn": {"grid": [False]}}, base={"bn": True}), ["space.bn", "also set in base"]),
    # two study rows that resolve to one config: the original study's silent mistake, refused
    (with_(space={"preset": {"grid": ["vgg_a_bn", "vgg_a_bn_sgd"]}, "seed": {"grid": [0, 1]}},
           base={"recipe": "strong"}), ["'vgg_a_bn'", "'vgg_a_bn_sgd'", "same trial config",
                                        "recipe strong"]),
    (with_(space={"lr": {"grid": [0.1, 1e-1]}}), ["lr=0.1", "twice"]),
    (with_(cases=[{"bn": True}, {"bn": True, "dropout": 0.0}], space={}), ["same trial config"]),
    ({"base": {}}, ["name", "required"]),
    # adaptive seeds: a grid of variants, every seed finishing, one source of seeds
    (with_(seeds={"min": 2, "max": 6, "ci_halfwidth": 0.5}, space={"seed": {"grid": [0, 1]}}),
     ["seeds", "space.seed"]),
    (with_(seeds={"min": 4, "max": 3, "ci_halfwidth": 0.5}), ["seeds", "max", "below min"]),
    (with_(seeds={"min": 1, "max": 3, "ci_halfwidth": 0.5}), ["seeds.min", "greater than or equal to 2"]),
    (with_(seeds={"min": 2, "max": 4, "ci_halfwidth": 0}), ["seeds.ci_halfwidth"]),
    (with_(seeds={"min": 2, "max": 4, "ci_halfwidth": 0.5}, base={"dataset": "synthetic", "seed": 3}),
     ["seeds", "fixed seed in base"]),
    (with_(seeds={"min": 2, "max": 4, "ci_halfwidth": 0.5}, scheduler={"type": "asha"}, metric="val_acc",
           base={"dataset": "synthetic", "epochs": 4, "val_fraction": 0.1}), ["seeds", "fifo"]),
    # several objectives: Optuna only, no single-metric scheduler, one mode per metric
    (with_(metric=["val_acc", "gflops"], mode=["max", "min"], base={"val_fraction": 0.1}),
     ["2 objectives", "search: optuna"]),
    (with_(metric=["val_acc", "gflops"], mode=["max"], search="optuna", space={"lr": {"choice": [0.1]}},
           base={"val_fraction": 0.1}), ["mode", "1 modes for 2 metrics"]),
    (with_(metric=["val_acc", "flops"], mode=["max", "min"], search="optuna",
           space={"lr": {"choice": [0.1]}}, base={"val_fraction": 0.1}), ["flops", "gflops"]),
    (with_(metric=["val_acc", "gflops"], mode=["max", "min"], search="optuna", scheduler={"type": "asha"},
           space={"lr": {"choice": [0.1]}}, base={"val_fraction": 0.1}), ["asha", "one metric"]),
    (with_(metric=["test_acc", "params"], mode=["max", "min"], search="optuna",
           space={"lr": {"choice": [0.1]}}), ["test_acc", "test set"]),
]


@pytest.mark.parametrize("spec,words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_spec_fails_with_file_key_and_reason(tmp_path, spec, words):
    path = write(tmp_path, spec)
    with pytest.raises(SweepSpecError) as e:
        load_spec(path)
    msg = str(e.value)
    assert str(path) in msg
    for w in words:
        assert w in msg, (w, msg)


def test_at_least_ten_bad_specs():
    assert len(BAD) >= 10


def test_not_yaml_and_missing_file(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: [unclosed")
    with pytest.raises(SweepSpecError, match="not valid YAML"):
        load_spec(p)
    with pytest.raises(SweepSpecError, match="no such sweep file"):
        load_spec(tmp_path / "nope.yaml")


def test_overrides_with_dotted_paths(tmp_path):
    spec = load_spec(write(tmp_path, OK), {"base.epochs": 7, "resources.gpu": 0.5, "name": "x"})
    assert spec.base["epochs"] == 7 and spec.resources.gpu == 0.5 and spec.name == "x"
    with pytest.raises(SweepSpecError, match="base.dropout"):
        load_spec(write(tmp_path, OK), {"base.dropout": 2})


@pytest.mark.parametrize("name,count", [("ablation", 24), ("ablation_strong", 21), ("hpo", 40),
                                        ("landscape", 12), ("quick", 16), ("smoke", 4),
                                        ("quick_adaptive", 48), ("factorial", 24), ("hpo_pareto", 30),
                                        ("pbt", 4), ("data_parallel", 4)])
def test_shipped_sweeps_are_valid_and_counted(name, count):
    spec = load_spec(SWEEPS / f"{name}.yaml")
    assert spec.name == name and spec.trial_count() == count
    assert spec.description
    header = (SWEEPS / f"{name}.yaml").read_text().splitlines()[0]
    assert header.startswith("# ")


def test_ablations_are_fifo_and_hpo_tunes_on_validation():
    for name in ("ablation", "ablation_strong", "quick", "landscape"):
        assert load_spec(SWEEPS / f"{name}.yaml").scheduler.type == "fifo"
    hpo = load_spec(SWEEPS / "hpo.yaml")
    assert hpo.search == "optuna" and hpo.scheduler.type == "asha"
    assert hpo.metric == "val_acc" and hpo.base["val_fraction"] == 0.1


def test_the_study_rows_are_distinct_under_its_own_recipe():
    """Under `seed` (Adam) the optimizer row is a real row; the grid check lets it through."""
    spec = load_spec(SWEEPS / "ablation.yaml")
    assert "vgg_a_bn_sgd" in spec.space["preset"].values and spec.trial_count() == 24


def test_grid_counts_multiply():
    spec = load_spec(SWEEPS / "smoke.yaml", {"space.seed": {"grid": [0, 1, 2]}, "num_samples": 2})
    assert spec.trial_count() == 2 * 3 * 2
    assert len([ln for ln in dry_run(spec).splitlines() if ln.startswith("  ")]) == 12


def test_dry_run_cli_lists_24_trials_without_ray():
    r = vggbn("sweep", SWEEPS / "ablation.yaml", "--dry-run", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "24 trials" in r.stdout.splitlines()[0]
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("  ")]
    assert len(rows) == 24 and "preset=vgg_a_bn_sgd, seed=2" in rows[-1]
    assert "ray" not in r.stderr.lower()


def test_cli_bad_spec_exits_2(tmp_path):
    path = write(tmp_path, with_(scheduler={"type": "asha"}))
    r = vggbn_main("sweep", path, "--dry-run")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(path) in r.stderr and "test set" in r.stderr


def test_bad_case_is_rejected(tmp_path):
    with pytest.raises(SweepSpecError, match=r"cases\[1\]: .*dropout"):
        load_spec(write(tmp_path, with_(cases=[{"lr": 0.1}, {"dropout": 3}])))
    with pytest.raises(SweepSpecError, match=r"cases\[0\]\.bn: also in space"):
        load_spec(write(tmp_path, with_(cases=[{"bn": True}])))


def test_storage_expands_home_and_reads_file_uris_as_their_path(tmp_path, monkeypatch):
    """storage=~/x is in the home directory, as data_dir=~/x is (not a directory named "~" here);
    file:///abs and file://localhost/abs are that path."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    smoke = SWEEPS / "smoke.yaml"
    assert load_spec(smoke, {"storage": "~/vggbn-results"}).experiment_path() == str(tmp_path / "home" / "vggbn-results"
                                                                                     / "smoke")
    for uri in (f"file://{tmp_path}/r", f"file://localhost{tmp_path}/r"):
        assert load_spec(smoke, {"storage": uri}).experiment_path() == str(tmp_path / "r" / "smoke")
    assert not (tmp_path / "~").exists()
