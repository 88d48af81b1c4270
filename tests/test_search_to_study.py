"""Search the way users expect it: conditional spaces (each optimizer in its own lr range), warm
starts from an earlier export, an ablation whose base is an HPO's best trial, and one stored trial
trained again with `vggbn train --from`.

One real Optuna sweep with a conditional space (module fixture) serves the run-time checks."""
import json
import math

import pandas as pd
import pytest
import yaml

from conftest import SWEEPS, ray_worker, tiny, vggbn, vggbn_main
from vggbn.plan.load import load_spec
from vggbn.spec.model import SweepSpecError, stored_spec

SGD, ADAMW = (0.01, 0.4), (1e-4, 3e-3)
SPACE = {"optimizer": {"choice": ["sgd", "adamw"]},
         "lr": {"when": "optimizer", "sgd": {"loguniform": list(SGD)}, "adamw": {"loguniform": list(ADAMW)}},
         "momentum": {"when": "optimizer", "sgd": {"uniform": [0.8, 0.95]}}}


def hpo_spec(tmp_path, **kw) -> dict:
    base = {k: v for k, v in tiny(epochs=3, val_fraction=0.25, synthetic_size=1024).items()
            if k not in ("optimizer", "lr", "momentum")}
    return {"name": "hpo", "metric": "val_acc", "mode": "max", "base": base, "space": SPACE,
            "search": "optuna", "num_samples": 6, "resources": {"cpu": 1}, "storage": str(tmp_path), **kw}


def write(path, spec: dict):
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def in_range(v, lo_hi) -> bool:
    return lo_hi[0] <= v <= lo_hi[1]


@pytest.fixture(scope="module")
def hpo(tmp_path_factory, ray_cluster):
    """A real Optuna sweep of 6 trials over the conditional space: its directory and trials."""
    root = tmp_path_factory.mktemp("hpo")
    with ray_worker(ray_cluster) as address:
        r = vggbn("sweep", write(root / "hpo.yaml", hpo_spec(root)), "--address", address)
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "hpo", pd.read_parquet(root / "hpo" / "trials.parquet")


# ---------------------------------------------------------------------- conditional spaces
def test_shipped_hpo_dry_run_keeps_each_optimizer_in_its_own_lr_range():
    r = vggbn_main("sweep", SWEEPS / "hpo.yaml", "--dry-run")
    assert r.returncode == 0, r.stderr
    spec = load_spec(SWEEPS / "hpo.yaml")
    ranges = {o: spec.space["lr"].branch(o).values for o in ("sgd", "adamw")}
    numbered = [line for line in r.stdout.splitlines() if line.strip().split(" ")[0].isdigit()]
    rows = [dict(kv.split("=", 1) for kv in line.split(None, 1)[1].split(", ")) for line in numbered
            if "lr=" in line]
    assert len(numbered) == 40 and len(rows) == 10  # TPE's random start; then TPE's own choices
    for row in rows:
        assert in_range(float(row["lr"]), ranges[row["optimizer"]]), row
    assert {row["optimizer"] for row in rows} == {"sgd", "adamw"}
    assert "if optimizer=adamw" in r.stdout  # the space itself is stated once


def test_conditional_optuna_sweep_samples_each_branch_in_its_range(hpo):
    d, t = hpo
    assert len(t) == 6 and (t["status"] == "completed").all()
    assert set(t["optimizer"]) == {"sgd", "adamw"}
    for _, row in t.iterrows():
        assert in_range(row["lr"], SGD if row["optimizer"] == "sgd" else ADAMW), row[["optimizer", "lr"]]
        stored = json.loads((d / f"trial_{row['trial_id']}" / "vggbn-config.json").read_text())["config"]
        assert stored["lr"] == row["lr"] and stored["optimizer"] == row["optimizer"]
        if row["optimizer"] == "sgd":  # searched only under sgd; AdamW keeps the recipe's value
            assert 0.8 <= row["momentum"] <= 0.95
        else:
            assert row["momentum"] == 0.9


def test_conditional_random_search_draws_each_branch_in_its_range(tmp_path):
    """search: random with a conditional space: Optuna's random sampler with the spec's seed, the
    same draws as the dry run lists, each lr in its optimizer's range, momentum only under SGD."""
    from vggbn.sweep import search
    from vggbn.plan.optuna_space import sample

    spec = load_spec(write(tmp_path / "r.yaml", hpo_spec(tmp_path, search="random", num_samples=30)))
    alg, param_space, n, _ = search.build(spec, str(tmp_path / "hpo"))
    assert n == 30 and not set(spec.space) & set(param_space)  # the searcher samples them all
    got = [alg.suggest(f"t{i}") for i in range(30)]
    assert got == sample(spec, 30)  # what --dry-run shows is what runs
    assert {g["optimizer"] for g in got} == {"sgd", "adamw"}
    for g in got:
        assert in_range(g["lr"], SGD if g["optimizer"] == "sgd" else ADAMW)
        assert ("momentum" in g) == (g["optimizer"] == "sgd")


BAD = [  # (space/spec changes, what the message must say)
    ({"space": {**SPACE, "lr": {"when": "optimiser", "sgd": {"uniform": [0.1, 0.2]}}}},
     ["space.lr.when", "'optimiser'", "did you mean 'optimizer'"]),
    ({"space": {**SPACE, "lr": {"when": "optimizer", "adam_w": {"uniform": [0.1, 0.2]}}}},
     ["space.lr.adam_w", "not a value of optimizer"]),
    ({"space": {"label_smoothing": {"uniform": [0.0, 0.2]},
                "lr": {"when": "label_smoothing", "0.1": {"uniform": [0.1, 0.2]}}}},
     ["space.lr.when", "a uniform", "depends on a choice"]),
    ({"space": {**SPACE, "lr": {"when": "optimizer", "sgd": {"uniform": [-1.0, 0.2]}}}}, ["space.lr.sgd"]),
    ({"space": {**SPACE, "lr": {"when": "optimizer", "sgd": {"grid": [0.1, 0.2]}}}}, ["grid inside a conditional"]),
    ({"space": {**SPACE, "lr": {"when": "optimizer"}}}, ["space.lr", "gives no distribution"]),
    ({"search": "grid", "space": {"optimizer": {"grid": ["sgd", "adamw"]}, "lr": SPACE["lr"]}},
     ["space.lr", "needs search: random or optuna"]),
    ({"search": "random", "warm_start": "/nowhere"}, ["warm_start", "does not learn"]),
    ({"cases": [{"width": 0.125}]}, ["cases", "Optuna samples every trial"]),
    ({"warm_start": "/nowhere/at/all"}, ["warm_start", "/nowhere/at/all", "no such directory"]),
    ({"search": "random", "space": {**SPACE, "seed": {"grid": [0, 1, 2]}}},
     ["space.seed", "would be sampled, not crossed"]),
    ({"base_from": {"experiment": "/nowhere", "metric": "test_acc"}}, ["base_from.metric", "never the test set"]),
]


@pytest.mark.parametrize("change,says", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_conditional_and_earlier_specs_say_where(tmp_path, change, says):
    f = write(tmp_path / "s.yaml", {**hpo_spec(tmp_path), **change})
    with pytest.raises(SweepSpecError) as e:
        load_spec(f)
    msg = str(e.value)
    assert msg.startswith(str(f)) and "\nFix: " in msg, msg
    for s in says:
        assert s in msg, (s, msg)


def test_a_conditional_val_fraction_is_checked_branch_by_branch(tmp_path):
    """val_acc needs a split on every branch; a parent value with no branch keeps base's (none)."""
    spec = hpo_spec(tmp_path)
    spec["base"] = {k: v for k, v in spec["base"].items() if k != "val_fraction"}
    vf = {"when": "optimizer", "sgd": {"uniform": [0.1, 0.2]}, "adamw": {"uniform": [0.2, 0.3]}}
    assert load_spec(write(tmp_path / "ok.yaml", {**spec, "space": {**SPACE, "val_fraction": vf}}))
    del vf["adamw"]
    with pytest.raises(SweepSpecError, match="needs a validation split"):
        load_spec(write(tmp_path / "bad.yaml", {**spec, "space": {**SPACE, "val_fraction": vf}}))


def test_bad_conditional_space_through_the_command(tmp_path):
    f = write(tmp_path / "s.yaml", {**hpo_spec(tmp_path), **BAD[6][0]})
    r = vggbn_main("sweep", f)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "space.lr" in r.stderr, r.stderr
    assert not (tmp_path / "hpo").exists()  # nothing claimed


def test_search_insight_keeps_conditional_keys_on_their_whole_range(hpo):
    """The report's parallel coordinates (and importance) read a stored conditional key as one
    axis spanning its branches: lr from AdamW's 1e-4 to SGD's 0.4."""
    from analysis.hpo import parallel_coordinates

    d, t = hpo
    spec = yaml.safe_load((d / "spec.yaml").read_text())
    fig = parallel_coordinates(t, spec)
    ax = fig.axes[0]
    names = [tick.get_text() for tick in ax.get_xticklabels()]
    assert names[:3] == ["optimizer", "lr", "momentum"]
    texts = {x.get_text() for x in ax.texts}
    assert {"0.0001", "0.4", "0.8", "0.95"} <= texts


# ---------------------------------------------------------------------- warm start
def test_warm_start_adds_the_earlier_finished_trials_inside_this_space(hpo, tmp_path):
    from vggbn.sweep import search

    d, t = hpo
    narrower = {**SPACE, "lr": {"when": "optimizer", "sgd": {"loguniform": [0.01, 0.1]},
                                "adamw": {"loguniform": list(ADAMW)}}}
    spec = load_spec(write(tmp_path / "w.yaml", hpo_spec(tmp_path, name="w", space=narrower, warm_start=str(d))))
    alg, _, _, _ = search.build(spec, str(tmp_path / "w"))
    warm = alg.study.trials
    inside = t[(t["optimizer"] == "adamw") | (t["lr"] <= 0.1)]
    assert sorted(tr.user_attrs["warm_start_trial"] for tr in warm) == sorted(inside["trial_id"])
    for tr in warm:
        row = t.set_index("trial_id").loc[tr.user_attrs["warm_start_trial"]]
        assert tr.value == row["val_acc"]
        assert tr.params[f"lr|optimizer={row['optimizer']}"] == row["lr"]
    note = json.loads((tmp_path / "w" / "vggbn-warm-start.json").read_text())
    assert note["from"] == str(d) and len(note["trials"]) == len(inside)
    assert f"{len(inside)} of 6 trials" in note["summary"]
    # the searcher then asks the same study: its next trial is a new one, inside this space
    config = alg.suggest("new-trial")
    assert len(alg.study.trials) == len(warm) + 1 and not any("|" in k for k in config)
    assert in_range(config["lr"], (0.01, 0.1) if config["optimizer"] == "sgd" else ADAMW)

    other = hpo_spec(tmp_path, name="x", metric="val_loss", mode="min", warm_start=str(d))
    with pytest.raises(SweepSpecError, match="optimised val_acc, this sweep val_loss"):
        load_spec(write(tmp_path / "x.yaml", other))


# ---------------------------------------------------------------------- from search to study
def test_ablation_takes_its_base_from_the_best_trial_on_val_acc(hpo, tmp_path):
    d, t = hpo
    best = t.loc[t["val_acc"].idxmax()]
    ablation = {"name": "abl", "base_from": str(d), "base": {"epochs": 1},
                "space": {"bn": {"grid": [False, True]}, "seed": {"grid": [0, 1]}}, "storage": str(tmp_path)}
    spec = load_spec(write(tmp_path / "abl.yaml", ablation))
    b = spec.base_from
    assert b.trial_id == best["trial_id"] and math.isclose(b.value, best["val_acc"]) and b.metric == "val_acc"
    assert spec.base["optimizer"] == best["optimizer"] and spec.base["lr"] == best["lr"]
    assert spec.base["epochs"] == 1  # this file's own base wins
    assert "seed" not in spec.base and "bn" not in spec.base  # what the ablation varies stays its own
    r = vggbn_main("sweep", tmp_path / "abl.yaml", "--dry-run")
    assert r.returncode == 0 and f"trial {best['trial_id']}" in r.stdout, r.stderr
    # stored as data: the record is kept and not re-read (the HPO directory may be gone by then)
    again = stored_spec(yaml.safe_dump(spec.model_dump(mode="json")), "spec.yaml")
    assert again.base == spec.base and again.base_from.trial_id == best["trial_id"]
    with pytest.raises(SweepSpecError, match="base_from.keys: 3"):
        load_spec(write(tmp_path / "k.yaml", dict(ablation, base_from={"experiment": str(d), "keys": 3})))
    moved = dict(ablation, base_from={"experiment": str(tmp_path / "gone"), "trial_id": "x", "value": 0.5,
                                      "taken": {"lr": 0.1}})
    assert stored_spec(yaml.safe_dump(moved), "spec.yaml").base_from.taken == {"lr": 0.1}


def test_train_from_a_stored_trial_reproduces_its_epochs(hpo, tmp_path):
    d, t = hpo
    tid = t["trial_id"].iloc[0]
    r = vggbn_main("train", "--from", d, "--trial", tid, "--quiet", "--out", tmp_path / "again")
    assert r.returncode == 0, r.stderr[-3000:]
    again = [json.loads(line) for line in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()]
    e = pd.read_parquet(d / "epochs.parquet")
    first = e[e["trial_id"] == tid].sort_values("epoch")
    assert [m["epoch"] for m in again] == list(first["epoch"])
    for m, (_, row) in zip(again, first.iterrows()):  # every epoch, as the sweep's trial had it
        for k in ("train_loss", "val_acc", "test_loss", "test_acc", "lr"):
            assert math.isclose(m[k], row[k], rel_tol=1e-6, abs_tol=1e-9), (m["epoch"], k, m[k], row[k])

    r = vggbn_main("train", "--from", d, "--trial", "nope")
    assert r.returncode == 2 and "nope" in r.stderr and tid in r.stderr and "Fix:" in r.stderr
    r = vggbn_main("train", "--from", d)
    assert r.returncode == 2 and "--from and --trial go together" in r.stderr


def test_shipped_follow_up_sweeps_read_results_hpo(hpo, tmp_path):
    """sweeps/hpo_continue.yaml (warm_start) and sweeps/ablation_tuned.yaml (base_from) name
    results/hpo: from a directory holding one, their dry runs say what they take from it."""
    import shutil

    d, t = hpo
    shutil.copytree(d, tmp_path / "results" / "hpo")
    r = vggbn_main("sweep", SWEEPS / "ablation_tuned.yaml", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    best = t.loc[t["val_acc"].idxmax()]
    assert f"trial {best['trial_id']}" in r.stdout and f"optimizer={best['optimizer']}" in r.stdout
    assert sum(line.strip()[:1].isdigit() for line in r.stdout.splitlines()) == 18
    r = vggbn_main("sweep", SWEEPS / "hpo_continue.yaml", "--dry-run", cwd=tmp_path)
    # the test HPO's trials (width 1/16, synthetic data) lie outside hpo.yaml's space: counted, not used
    assert r.returncode == 0 and "warm start: 0 of 6 trials" in r.stdout and "6 of them outside" in r.stdout, r.stderr
    r = vggbn_main("sweep", SWEEPS / "hpo_continue.yaml", "--dry-run")  # no results/hpo where it runs
    assert r.returncode == 2 and "warm_start" in r.stderr and "Traceback" not in r.stderr
