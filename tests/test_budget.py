"""Cost in view: the dry run's estimate from stated or measured epoch times, and a budget past
which no new trial starts (the report says it was reached)."""
import json

import pandas as pd

from conftest import SWEEPS, vggbn, vggbn_main


def dry(*sets, cwd=None):
    args = ["sweep", str(SWEEPS / "smoke.yaml"), "--dry-run"]
    for s in sets:
        args += ["--set", s]
    return vggbn_main(*args, cwd=cwd)


def test_dry_run_estimates_hours_and_dollars(tmp_path):
    r = dry("cost.epoch_seconds=30", "resources.gpu=0.25", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # 4 trials x 3 epochs x 30 s = 0.1 trial-hours; 0.25 GPU and 1 CPU each
    assert "12 trial-epochs x 30 s (stated: cost.epoch_seconds) = 0.10 trial-hours: 0.03 GPU-hours, " \
           "0.10 CPU-hours" in r.stdout
    (tmp_path / "cluster.yaml").write_text(
        "available_node_types:\n  gpu: {node_config: {InstanceType: g5.xlarge}}\n"
        "  head: {node_config: {InstanceType: m5.xlarge}}\n")
    r = dry("cost.epoch_seconds=3600", "resources.gpu=1", cwd=tmp_path)  # 12 GPU-hours
    assert "g5.xlarge on demand: $1.01/GPU-hour -> about $12.07" in r.stdout and "m5" not in r.stdout
    r = dry("cost.epoch_seconds=3600", "resources.gpu=1", "cost.usd_per_gpu_hour=0.5", cwd=tmp_path)
    assert "cost.usd_per_gpu_hour: $0.5/GPU-hour -> about $6.00" in r.stdout
    assert "no epoch time known" in dry(cwd=tmp_path).stdout


def test_dry_run_uses_the_epochs_a_run_measured(smoke_run, tmp_path):
    path, _ = smoke_run
    median = pd.read_parquet(path / "epochs.parquet")["epoch_time_s"].median()
    r = dry(f"storage={path.parent}", f"name={path.name}", "cost.epoch_seconds=999")
    assert r.returncode == 0, r.stderr
    assert f"x {median:.3g} s (measured: median of 12 epochs already run)" in r.stdout


def test_a_budget_that_cannot_be_reached_is_refused():
    r = dry("budget.gpu_hours=1")
    assert r.returncode == 2 and "budget.gpu_hours" in r.stderr and "resources.gpu is 0" in r.stderr
    r = dry("budget.gpu_hours=1", "budget.cpu_hours=1", "resources.gpu=1")
    assert r.returncode == 2 and "not both" in r.stderr


def test_no_new_trial_starts_past_the_budget(tmp_path, ray_address):
    """One trial at a time; a budget of 0.0036 CPU-seconds is spent by the first trial's first epoch."""
    r = vggbn("sweep", str(SWEEPS / "smoke.yaml"), "--set", f"storage={tmp_path}",
              "--set", "max_concurrent=1", "--set", "budget.cpu_hours=1e-6", "--report", "--address", ray_address,
              timeout=600)
    assert r.returncode == 0, r.stderr
    exp = tmp_path / "smoke"
    note = json.loads((exp / "vggbn-budget.json").read_text())
    t = pd.read_parquet(exp / "trials.parquet").set_index("trial_id")
    assert (t["status"] == "completed").sum() == 1
    assert sorted(note["not_started"]) == sorted(t.index[t["status"] != "completed"])
    assert len(note["not_started"]) == 3 and note["unit"] == "cpu_hours" and note["spent"] > 1e-6
    assert (t.loc[note["not_started"], "status"] == "incomplete").all()
    assert (t.loc[note["not_started"], "epochs_run"] == 0).all()
    md = (exp / "report" / "report.md").read_text()
    assert "Budget reached" in md and "3 trials not started" in md
    # resuming does not start them: the budget is spent
    r = vggbn("resume", str(exp), "--address", ray_address, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (pd.read_parquet(exp / "trials.parquet")["status"] == "completed").sum() == 1
