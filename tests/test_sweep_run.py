"""Real Ray Tune sweeps, local, on the CPU: small and synthetic, as Ray's examples run --smoke-test."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import tiny, vggbn, vggbn_main
from test_data import fake_fmnist
from vggbn.config import TrialConfig
from vggbn.schema import EPOCH_METRICS
from vggbn.sweep.runner import run_sweep
from vggbn.spec.model import SweepSpec

pytestmark = pytest.mark.timeout(600)



def spec_of(tmp_path, **kw) -> SweepSpec:
    raw = {"name": "t", "storage": str(tmp_path / "results"),
           "base": tiny(cpu_threads=0),
           "resources": {"cpu": 1}}
    raw.update(kw)
    return SweepSpec.model_validate(raw)


def test_smoke_sweep_end_to_end(smoke_run, tmp_path):
    exp, r = smoke_run
    assert "4 completed" in r.stdout
    trials = pd.read_parquet(exp / "trials.parquet")
    epochs = pd.read_parquet(exp / "epochs.parquet")
    steps = pd.read_parquet(exp / "steps.parquet")
    assert len(trials) == 4 and set(trials["status"]) == {"completed"}
    assert set(TrialConfig.model_fields) <= set(trials.columns)
    for col in ("trial_id", "status", "test_acc", "best_test_acc", "best_epoch", "params",
                "wall_time_s", "node", "prov_torch_version", "prov_git_commit", "prov_device"):
        assert col in trials.columns, col
    assert trials["trial_id"].is_unique
    assert sorted(zip(trials["bn"], trials["seed"])) == [(False, 0), (False, 1), (True, 0), (True, 1)]
    assert (trials["test_acc"] > 0.8).all(), trials["test_acc"].tolist()
    assert (trials["params"] > 0).all() and (trials["prov_device"] == "cpu").all()
    assert len(epochs) == 4 * 3 and not epochs.duplicated(["trial_id", "epoch"]).any()
    assert set(EPOCH_METRICS) - {"val_loss", "val_acc"} <= set(epochs.columns)
    assert set(epochs["trial_id"]) == set(trials["trial_id"])
    assert len(steps) == 4 * 3 * (1024 // 64)
    assert list(steps.columns[:3]) == ["trial_id", "step", "epoch"]
    assert yaml.safe_load((exp / "spec.yaml").read_text())["name"] == "smoke"
    # each trial wrote its resolved config once, and the export is that config
    for tid in trials["trial_id"]:
        stored = json.loads((exp / f"trial_{tid}" / "vggbn-config.json").read_text())
        assert stored["schema_version"] == 1
        row = trials.set_index("trial_id").loc[tid]
        assert all(row[k] == v for k, v in stored["config"].items() if not isinstance(v, (list, type(None)))), tid
        # a finished trial keeps its last checkpoint only (keep_checkpoints 2 while it ran)
        assert [c.name for c in (exp / f"trial_{tid}").glob("checkpoint_*")] == ["checkpoint_000002"]


def test_export_again_and_fill_epochs_ray_lost(smoke_copy):
    exp = smoke_copy
    epochs = pd.read_parquet(exp / "epochs.parquet")
    ex = vggbn_main("export", exp)  # the real process: test_experiment.py
    assert ex.returncode == 0 and "4 trials" in ex.stdout
    pd.testing.assert_frame_equal(pd.read_parquet(exp / "epochs.parquet"), epochs)
    # results Ray lost (a node dying between a report and the driver's log) come back from the
    # trial's final checkpoint, which carries the trial's own epoch history
    tid = pd.read_parquet(exp / "trials.parquet")["trial_id"].iloc[0]
    for name in ("result.json", "progress.csv"):
        f = exp / f"trial_{tid}" / name
        lines = f.read_text().splitlines(keepends=True)
        f.write_text("".join(lines[:-2] + lines[-1:]))  # drop epoch 2 of 3
    assert vggbn_main("export", exp).returncode == 0
    again = pd.read_parquet(exp / "epochs.parquet")
    assert len(again) == 12 and sorted(again.loc[again["trial_id"] == tid, "epoch"]) == [1, 2, 3]
    cols = [c for c in EPOCH_METRICS if c in epochs]
    pd.testing.assert_frame_equal(again.set_index(["trial_id", "epoch"]).sort_index()[cols[1:]],
                                  epochs.set_index(["trial_id", "epoch"]).sort_index()[cols[1:]])


def test_asha_stops_bad_learning_rates_early(tmp_path, ray_local):
    spec = spec_of(tmp_path, metric="val_acc", scheduler={"type": "asha", "grace_period": 2,
                                                          "reduction_factor": 2},
                   base=tiny(synthetic_size=1280, width=0.125, epochs=6, val_fraction=0.2, cpu_threads=0),
                   space={"lr": {"grid": [3e-3, 2e-3, 1e-7, 3e-8, 1e-8]}})
    summary = run_sweep(spec)
    t = pd.read_parquet(Path(summary["path"]) / "trials.parquet").set_index("lr")
    stopped = t[t["status"] == "early_stopped"]
    assert len(stopped) >= 1, t[["status", "epochs_run"]]
    assert (stopped["epochs_run"] < 6).all()
    assert {1e-7, 3e-8, 1e-8} <= set(stopped.index)  # the hopeless learning rates were cut
    assert (t.loc[[3e-3, 2e-3], "status"] == "completed").any()  # a good one ran to the end


def test_optuna_runs_n_trials_within_max_concurrent(tmp_path, ray_local):
    from vggbn.sweep.runner import build_tuner

    spec = spec_of(tmp_path, metric="val_acc", search="optuna", num_samples=5, max_concurrent=1,
                   base=tiny(val_fraction=0.2, cpu_threads=0),
                   space={"lr": {"loguniform": [1e-4, 1e-2]}, "bn": {"choice": [False, True]}})
    assert build_tuner(spec)._local_tuner._tune_config.max_concurrent_trials == 1
    summary = run_sweep(spec)
    t = pd.read_parquet(Path(summary["path"]) / "trials.parquet")
    e = pd.read_parquet(Path(summary["path"]) / "epochs.parquet")
    assert len(t) == 5 and set(t["status"]) == {"completed"}
    assert t["lr"].between(1e-4, 1e-2).all() and t["lr"].nunique() == 5
    assert set(e.groupby("trial_id")["epoch"].max()) == {2}
    # one at a time: every trial ran in the one reused actor process (two trials at once would
    # need two), read from each trial's own results (Ray's `pid`), not from timestamps
    pids = {json.loads(f.read_text().splitlines()[0])["pid"]
            for f in Path(summary["path"]).glob("trial_*/result.json")}
    assert len(pids) == 1, pids


def test_one_bad_trial_config_errors_that_trial_alone(tmp_path, ray_local, monkeypatch):
    from vggbn.sweep.search import plan as search  # the plan searcher reads its variants from here

    spec = spec_of(tmp_path, max_failures=0)
    # a value that slipped past the spec check (as a hand-built plan could)
    monkeypatch.setattr(search, "variants", lambda spec: [{"width": w} for w in (0.0625, -1.0, 0.125)])
    assert "width" in spec.base
    summary = run_sweep(spec)
    t = pd.read_parquet(Path(summary["path"]) / "trials.parquet")
    assert sorted(t["status"]) == ["completed", "completed", "errored"]
    err = t[t["status"] == "errored"].iloc[0]
    assert "width" in err["error"] and "-1" in err["error"]


def test_dataset_prepared_once_by_four_concurrent_trials(tmp_path, ray_local):
    d = fake_fmnist(tmp_path / "fm", n_train=2000, n_test=200)
    base = {"recipe": "seed", "dataset": "fashion_mnist", "data_dir": str(d), "width": 0.0625,
            "batch_size": 256, "epochs": 1, "device": "cpu"}
    spec = spec_of(tmp_path, resources={"cpu": 0.5}, base=base, space={"seed": {"grid": [0, 1, 2, 3]}})
    summary = run_sweep(spec, prepare=False)  # no driver preparation: the trials race for it
    assert summary["status"] == {"completed": 4}
    log = (Path(os.environ["VGGBN_CACHE_DIR"]) / "prepare.log").read_text().splitlines()
    assert len(log) == 1 and "fashion_mnist" in log[0]
    # with the driver preparing first (here: finding the cache), a trial only reads the cache
    run_sweep(spec_of(tmp_path, name="t2", base=base, space={"seed": {"grid": [0]}}))
    assert len((Path(os.environ["VGGBN_CACHE_DIR"]) / "prepare.log").read_text().splitlines()) == 1


def _results(exp: Path) -> dict[str, list[dict]]:
    """trial dir -> the results the driver recorded (result.json lines)."""
    out = {}
    for trial in exp.glob("trial_*"):
        f = trial / "result.json"
        if f.is_file():
            out[trial.name] = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    return out


def _terminated_in_snapshot(exp: Path) -> set[str]:
    """Trial dirs that Ray's newest experiment snapshot on disk records as TERMINATED."""
    for f in sorted(exp.glob("experiment_state*.json"), reverse=True):
        try:
            data = json.loads(f.read_text())
            trials = [json.loads(t[0]) for t in data["trial_data"]]
        except (OSError, ValueError, KeyError):  # being replaced: read it on the next poll
            return set()
        return {f"trial_{t['trial_id']}" for t in trials if t.get("status") == "TERMINATED"}
    return set()


@pytest.mark.ray
def test_driver_killed_then_resume_completes_without_rerunning(tmp_path):
    spec = {"name": "killme", "storage": str(tmp_path), "metric": "test_acc",
            "base": tiny(synthetic_size=2048, width=0.125, epochs=4, cpu_threads=0),
            "space": {"seed": {"grid": list(range(10))}}, "resources": {"cpu": 1}}
    path = tmp_path / "killme.yaml"
    path.write_text(yaml.safe_dump(spec))
    exp = tmp_path / "killme"
    proc = subprocess.Popen([sys.executable, "-m", "vggbn", "sweep", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True,
                            env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(_terminated_in_snapshot(exp)) < 2:
        time.sleep(0.2)  # polling the snapshot file, not waiting for time to pass
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started: a reboot
    proc.wait()
    before = _terminated_in_snapshot(exp)
    assert 2 <= len(before) < 10, "the sweep finished before it could be killed"
    lines_before = {name: len(_results(exp)[name]) for name in before}
    assert not (exp / "trials.parquet").exists()

    r = vggbn("resume", str(exp))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "10 completed" in r.stdout
    results = _results(exp)
    for name in before:  # a trial the snapshot knew as finished reported nothing after the kill
        assert len(results[name]) == lines_before[name], f"{name} ran again: {results[name]}"
    for name in set(results) - before:  # the others finished
        assert max(r["epoch"] for r in results[name]) == 4
    e = pd.read_parquet(exp / "epochs.parquet")
    assert len(e) == 10 * 4 and not e.duplicated(["trial_id", "epoch"]).any()
    t = pd.read_parquet(exp / "trials.parquet")
    assert set(t["status"]) == {"completed"} and len(t) == 10


def test_cases_are_crossed_with_the_grid(tmp_path, ray_local):
    spec = spec_of(tmp_path, cases=[{"lr": 1e-3}, {"lr": 2e-3, "optimizer": "adamw"}],
                   space={"bn": {"grid": [False, True]}})
    assert spec.trial_count() == 4
    summary = run_sweep(spec)
    t = pd.read_parquet(Path(summary["path"]) / "trials.parquet")
    assert "_case" not in t.columns and set(t["status"]) == {"completed"}
    assert sorted(zip(t["optimizer"], t["lr"], t["bn"])) == [
        ("adam", 1e-3, False), ("adam", 1e-3, True), ("adamw", 2e-3, False), ("adamw", 2e-3, True)]


def test_surface_points_as_ray_tasks_equal_in_process(ray_local):
    """The grid points are independent: Ray tasks give exactly the in-process numbers."""
    from vggbn.landscape import surfaces
    from vggbn.models import build_model
    from vggbn.sweep.surfaces import ray_map

    cfg = TrialConfig.from_flat({"recipe": "seed", "dataset": "synthetic", "synthetic_size": 256, "width": 0.0625,
                                 "bn": True})
    weights = build_model(cfg, 3, 10).state_dict()
    kw = dict(resolution=3, samples=64, seed=1)
    local = surfaces(cfg.to_flat(), weights, **kw)
    remote = surfaces(cfg.to_flat(), weights, map_chunks=ray_map, **kw)
    pd.testing.assert_frame_equal(local, remote)
    assert len(local) == 3 + 9
