"""Adaptive seeds and `vggbn extend`: the plan searcher adds seeds only where a variant's CI is still
wider than the target, its intervals keep their coverage, its state survives a restore, and a
finished study grows by seeds or variants in place."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps

from conftest import SWEEPS, vggbn, vggbn_main
from vggbn.store.experiment import Experiment
from vggbn.sweep.search import FAILED, PlanSearch
from vggbn.spec.model import SweepSpec

RULE = {"min": 2, "max": 6, "ci_halfwidth": 0.5}


def spec(**kw) -> SweepSpec:
    raw = {"name": "t", "base": {"dataset": "synthetic", "epochs": 2},
           "space": {"bn": {"grid": [False, True]}}, "seeds": RULE}
    raw.update(kw)
    return SweepSpec.model_validate(raw)


def drive(plan: PlanSearch, value_of, limit: int = 1000) -> dict[str, list[float]]:
    """Run the searcher to FINISHED, completing each suggested trial at once with value_of(variant,
    seed). Returns each variant's values in seed order."""
    got: dict[str, list[float]] = {}
    for i in range(limit):
        cfg = plan.suggest(f"t{i}")
        if cfg == PlanSearch.FINISHED:
            return got
        assert cfg is not None, "nothing running, yet the searcher waits"
        v = value_of(cfg)
        got.setdefault(json.dumps({k: cfg[k] for k in cfg if k != "seed"}), []).append(v)
        plan.on_trial_complete(f"t{i}", {"test_acc": v, "epoch": 2, "diverged": False})
    raise AssertionError("the searcher never finished")


def test_seeds_go_only_where_the_interval_is_still_wide():
    plan = PlanSearch(spec(), "unused")
    first = [plan.suggest(f"a{i}") for i in range(4)]  # every variant starts before any gets seed 2
    assert [(c["bn"], c["seed"]) for c in first] == [(False, 0), (True, 0), (False, 1), (True, 1)]
    assert plan.suggest("a4") is None  # the rest waits on results, not a global barrier
    noisy = {0: 0.80, 1: 0.90, 2: 0.84, 3: 0.86, 4: 0.83, 5: 0.88}
    for i, c in enumerate(first):
        value = noisy[c["seed"]] if not c["bn"] else 0.91 + 0.0001 * c["seed"]
        plan.on_trial_complete(f"a{i}", {"test_acc": value, "epoch": 2})
    # bn=True: half-width well under 0.5 points -> closed at 2 seeds; bn=False: one more seed
    assert plan.closed == {json.dumps({"bn": True}): "target met"}
    nxt = plan.suggest("a5")
    assert (nxt["bn"], nxt["seed"]) == (False, 2)
    for i in range(6, 30):
        plan.on_trial_complete(f"a{i - 1}", {"test_acc": noisy[nxt["seed"]], "epoch": 2})
        nxt = plan.suggest(f"a{i}")
        if nxt == PlanSearch.FINISHED:
            break
        assert nxt["bn"] is False
    assert plan.closed[json.dumps({"bn": False})] == "max seeds"
    assert sum(t["key"] == json.dumps({"bn": False}) for t in plan.trials.values()) == 6


def test_a_failed_or_diverged_seed_counts_as_used_and_gives_no_value():
    plan = PlanSearch(spec(space={"bn": {"grid": [True]}}), "unused")
    a, b = plan.suggest("a"), plan.suggest("b")
    plan.on_trial_complete("a", {"test_acc": 0.1, "epoch": 1, "diverged": True})
    plan.on_trial_complete("b", None, error=True)
    assert plan.trials["a"]["state"] == plan.trials["b"]["state"] == FAILED
    assert (a["seed"], b["seed"], plan.suggest("c")["seed"]) == (0, 1, 2)


@pytest.mark.parametrize("sigma", [0.2, 0.5, 1.0])
def test_reported_intervals_cover_the_true_mean(sigma):
    """Normal seeds (sd sigma points) around a known mean: the interval the searcher stops on (the
    corrected one) covers the mean at >= 95%, where the plain t interval on the same stops does not."""
    rng = np.random.default_rng(int(sigma * 10))
    rule = spec().seeds
    hits, plain_hits, n_used, reps = 0, 0, [], 1500
    for _ in range(reps):
        draws = iter(rng.normal(0.9, sigma / 100, rule.max))
        got = drive(PlanSearch(spec(space={"bn": {"grid": [True]}}), "unused"),
                    lambda c, d=draws: next(d))
        x = np.array(next(iter(got.values())))
        n_used.append(len(x))
        hits += abs(x.mean() - 0.9) <= rule.halfwidth(x)
        plain = sps.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
        plain_hits += abs(x.mean() - 0.9) <= plain
    cover, plain_cover = hits / reps, plain_hits / reps
    assert 0.945 <= cover <= 0.995, cover
    assert plain_cover < cover - 0.02  # why the correction: stopping on the width lowers coverage
    assert 2 <= np.mean(n_used) <= 6


def test_state_survives_a_restore_and_extends_with_the_stored_spec(tmp_path):
    exp = Experiment(str(tmp_path / "t"))
    s = spec(storage=str(tmp_path))
    exp.write_spec(s)
    plan = PlanSearch(s, exp.uri)
    plan.suggest("a"), plan.suggest("b")
    plan.on_trial_complete("a", {"test_acc": 0.9, "epoch": 2})
    plan.save(str(tmp_path / "state.json"))
    # the same state, restored by a fresh searcher (as after a killed driver), and a variant added
    exp.write_spec(spec(storage=str(tmp_path), space={"bn": {"grid": [False, True]},
                                                      "dropout": {"grid": [0.0, 0.5]}}))
    again = PlanSearch(s, exp.uri)
    again.restore(str(tmp_path / "state.json"))
    assert again.trials == plan.trials
    queued = [json.loads(k) for k, _ in again.queue]
    assert {"bn": True, "dropout": 0.5} in queued and {"bn": False, "dropout": 0.0} in queued
    assert not again.is_done()


def test_adaptive_sweep_on_synthetic_data_then_extend(tmp_path, ray_address):
    """The real entry points: an adaptive sweep adds seeds only where the target is missed; the
    report lists seeds per variant; `vggbn extend` raises max and the finished trials stay."""
    raw = yaml.safe_load((SWEEPS / "smoke.yaml").read_text())
    del raw["space"]["seed"]
    raw.update(seeds={"min": 2, "max": 4, "ci_halfwidth": 0.5}, storage=str(tmp_path))
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(raw))
    r = vggbn("sweep", tmp_path / "a.yaml", "--address", ray_address)
    assert r.returncode == 0, r.stderr[-3000:]
    t = pd.read_parquet(tmp_path / "smoke" / "trials.parquet")
    rule = SweepSpec.model_validate(raw).seeds
    assert (t["status"] == "completed").all()
    for _, g in t.sort_values("seed").groupby("bn"):
        vals = g["test_acc"].to_list()
        assert g["seed"].to_list() == list(range(len(vals)))
        if len(vals) > rule.min:  # it went on: the look before was still wider than the target
            assert rule.halfwidth(vals[:-1]) * 100 > rule.ci_halfwidth
        if len(vals) < rule.max:  # it stopped early: the target was met
            assert rule.halfwidth(vals) * 100 <= rule.ci_halfwidth
    assert t.groupby("bn").size().nunique() == 2, "this setup should give the variants different counts"

    rep = vggbn_main("report", tmp_path / "smoke", "--out", tmp_path / "rep")
    assert rep.returncode == 0, rep.stderr[-2000:]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Seeds: smoke (adaptive)" in md and "Trial-epochs spent" in md
    tab = pd.read_csv(tmp_path / "rep" / "table.csv")
    for _, row in tab.iterrows():  # the table reports the corrected interval, not the plain t one
        vals = t.loc[t["bn"] == (row["variant"] == "bn=True"), "test_acc"]
        hw = rule.halfwidth(vals)
        assert row["ci_low"] == pytest.approx(vals.mean() - hw) and row["ci_high"] == pytest.approx(vals.mean() + hw)

    before = t.set_index("trial_id")["test_acc"]
    r = vggbn("extend", tmp_path / "smoke", "--set", "seeds.max=5", "--address", ray_address)
    assert r.returncode == 0, r.stderr[-3000:]
    t2 = pd.read_parquet(tmp_path / "smoke" / "trials.parquet").set_index("trial_id")
    assert t2.loc[before.index, "test_acc"].equals(before)  # the finished trials stay as they were
    grew = t2.groupby("bn").size() - t.groupby("bn").size()
    for bn, g in t.groupby("bn"):  # only a variant that had reached max and missed gets one more
        missed = len(g) == rule.max and rule.halfwidth(g["test_acc"]) * 100 > rule.ci_halfwidth
        assert grew[bn] == (1 if missed else 0)

    bad = vggbn_main("extend", tmp_path / "smoke", "--set", "base.epochs=5")
    assert bad.returncode == 2 and "base" in bad.stderr and "Traceback" not in bad.stderr
    # a sweep that ran on Ray's own grid (vggbn before 2026-11-28) has no plan state to extend
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "smoke", old)
    for f in old.glob("searcher-state-*"):
        f.unlink()
    bad = vggbn_main("extend", old, "--set", "seeds.max=6")
    assert bad.returncode == 2 and "no vggbn plan state" in bad.stderr and "Traceback" not in bad.stderr


def test_plan_agrees_with_rays_trials_after_a_crash():
    """Ray saves its trials and the plan in two files: after a killed driver either may be newer.
    A trial the plan suggested after Ray's snapshot is queued again; a trial Ray has and the plan
    lost takes its (variant, seed) off the queue; an errored trial Ray re-runs is running again."""
    from types import SimpleNamespace as Ray  # the attributes of ray.tune.experiment.Trial it reads

    plan = PlanSearch(spec(), "unused")
    a, b = plan.suggest("a"), plan.suggest("b")
    plan.on_trial_complete("a", None, error=True)
    # Ray's snapshot: "a" (errored, reset to PENDING by resume) and "x", which the plan never saved
    # (it holds the queue's next entry); "b" was suggested after the snapshot
    nxt = plan.queue[0]
    x_cfg = {**json.loads(nxt[0]), "seed": nxt[1]}
    plan.sync([Ray(trial_id="a", config=a, status="PENDING", last_result={}),
               Ray(trial_id="x", config=x_cfg, status="TERMINATED",
                   last_result={"test_acc": 0.9, "epoch": 2})])
    assert plan.trials["a"]["state"] == "running" and "b" not in plan.trials
    assert plan.queue[0] == (json.dumps({"bn": b["bn"]}), b["seed"])
    assert nxt not in plan.queue and plan.trials["x"]["value"] == 0.9


def test_max_concurrent_is_kept_by_the_plan():
    plan = PlanSearch(spec(max_concurrent=1), "unused")
    assert plan.suggest("a") is not None and plan.suggest("b") is None
    plan.on_trial_complete("a", {"test_acc": 0.9, "epoch": 2})
    assert plan.suggest("b") is not None
