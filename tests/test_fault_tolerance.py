"""Multi-node sweeps, lost nodes, damaged checkpoints, out-of-memory trials and ASHA across a resume.

The cluster tests add real Ray nodes on this machine to the session's ray.cluster_utils.Cluster
(conftest: a head with 0 CPUs, as in cluster.yaml; each test adds its 1-CPU workers, which go after
it) and run `vggbn sweep --address` against them, the way `ray job submit` runs it on a real
cluster. A node is removed with SIGKILL, as a spot preemption takes it. The other sweeps run on a
worker of that cluster too (ray_address), but the one whose driver is killed with its own local Ray.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import SWEEPS, tiny, vggbn, wait_for
from vggbn.store.checkpoint import resume_state

pytestmark = pytest.mark.timeout(600)
TINY = tiny(width=0.125, cpu_threads=0)  # threads: the CPUs Ray gives each trial


def write_spec(tmp_path: Path, **raw) -> Path:
    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump({"storage": str(tmp_path / "results"), "metric": "test_acc",
                                    "resources": {"cpu": 1}, **raw}))
    return path


def results(exp: Path) -> dict[str, list[dict]]:
    """trial dir -> the results the driver recorded so far (result.json lines)."""
    out = {}
    for f in exp.glob("trial_*/result.json"):
        try:
            rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        except (OSError, json.JSONDecodeError):  # being written: read it on the next poll
            continue
        if rows:
            out[f.parent.name.removeprefix("trial_")] = rows
    return out


def nodes_seen(exp):
    """For a timeout's message: each trial's epochs with the node each ran on."""
    return lambda: {t: [(r["epoch"], r.get("node_id", "")[:6]) for r in rs] for t, rs in results(exp).items()}


# ---------------------------------------------------------------------- several nodes
def test_smoke_sweep_spreads_over_worker_nodes(tmp_path, cluster):
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    r = vggbn("sweep", str(SWEEPS / "smoke.yaml"), "--set", f"storage={tmp_path}",
              "--address", cluster.address)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "4 completed" in r.stdout
    exp = tmp_path / "smoke"
    t = pd.read_parquet(exp / "trials.parquet")
    e = pd.read_parquet(exp / "epochs.parquet")
    worker_ids = {w.node_id for w in workers}
    assert set(t["node_id"]) == worker_ids  # both workers ran trials, the head none
    assert set(e["node_id"]) == worker_ids
    assert (t["failures"] == 0).all() and (t["test_acc"] > 0.8).all()
    for tid in t["trial_id"]:  # every trial's checkpoints are in the shared storage
        assert list((exp / f"trial_{tid}").glob("checkpoint_*/state.pt"))


def test_lost_nodes_resume_from_checkpoints_and_exhausted_trial_is_errored(tmp_path, cluster):
    """Spot preemption twice. First a 2-CPU worker running trials A and B is killed: both resume
    from their last checkpoint on other nodes. Then the node running A's retry is killed too: with
    max_failures 1, A is errored, exported with its epochs; B and C complete."""
    w1 = cluster.add_node(num_cpus=2)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    every, epochs = 2, 12  # epochs of about a second: time for the test to see where trials run
    spec = write_spec(tmp_path, name="spot", max_failures=1, checkpoint_every=every, keep_checkpoints=2,
                      base={**TINY, "synthetic_size": 4096, "epochs": epochs},
                      space={"seed": {"grid": [0, 1, 2]}})
    exp = tmp_path / "results" / "spot"
    proc = subprocess.Popen([sys.executable, "-m", "vggbn", "sweep", str(spec), "--address", cluster.address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def on_w1():  # both of w1's trials are past a checkpoint
            live = {t: rs for t, rs in results(exp).items() if rs[-1]["node_id"] == w1.node_id}
            return live if len(live) == 2 and all(rs[-1]["epoch"] > every for rs in live.values()) else None

        victims = wait_for(on_w1, what="two trials on the first worker past their first checkpoint",
                           seen=nodes_seen(exp), timeout=180)
        cluster.remove_node(w1, allow_graceful=False)
        cluster.add_node(num_cpus=1)  # the autoscaler's replacement
        a, b = sorted(victims)

        def retry_of_a():  # rows from the killed node may still arrive; the retry runs elsewhere
            rs = [r for r in results(exp).get(a, []) if r["node_id"] != w1.node_id]
            return rs[-1]["node_id"] if rs and rs[-1]["epoch"] < epochs else None

        node_a = wait_for(retry_of_a, what=f"trial {a} running again", seen=nodes_seen(exp), timeout=180)
        cluster.remove_node(next(n for n in cluster.worker_nodes if n.node_id == node_a), allow_graceful=False)
        cluster.add_node(num_cpus=1)
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    t = pd.read_parquet(exp / "trials.parquet").set_index("trial_id")
    e = pd.read_parquet(exp / "epochs.parquet")
    assert not e.duplicated(["trial_id", "epoch"]).any()
    # A: lost twice, retried once (max_failures 1), then errored; its epochs are kept
    assert t.loc[a, "failures"] == 2, f"{a} finished before its second node was lost: {t[['status', 'failures']]}"
    assert t.loc[a, "status"] == "errored"
    assert t.loc[a, "error"] and f"errored {a}" in out
    assert 0 < (e["trial_id"] == a).sum() < epochs
    # B and C: every other trial completed, all epochs exported once
    others = t.drop(index=a)
    assert set(others["status"]) == {"completed"} and len(others) == 2, others[["status", "failures"]]
    for tid, g in e[e["trial_id"] != a].groupby("trial_id"):
        assert sorted(g["epoch"]) == list(range(1, epochs + 1)), tid
    # the lost trials continued from their last checkpoint: at most `every` epochs were redone
    # (Ray may lose a result the dying node sent while registering its checkpoint: then the retry
    # starts after an epoch this log never showed, and the export takes the epoch from the checkpoint)
    for tid in (a, b):
        rows = results(exp)[tid]
        old = [r for r in rows if r["node_id"] == w1.node_id]
        again = [r for r in rows if r["node_id"] != w1.node_id]
        restored = again[0]["epoch"] - 1
        seen = [(r["epoch"], r["node_id"][:6]) for r in rows]
        assert restored >= every and restored % every == 0, (tid, seen)  # a checkpoint, not from scratch
        assert old[-1]["epoch"] - restored <= every, (tid, seen)  # at most checkpoint_every redone
    assert t.loc[b, "failures"] == 1


# ---------------------------------------------------------------------- damaged checkpoints
def _checkpoint(d: Path, state: dict) -> Path:
    d.mkdir(parents=True)
    torch.save(state, d / "state.pt")
    sha = hashlib.sha256((d / "state.pt").read_bytes()).hexdigest()
    (d / "meta.json").write_text(json.dumps({"epoch": state["epoch"], "state_sha256": sha}))
    return d


def test_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path):
    from ray.tune import Checkpoint

    trial = tmp_path / "trial_x"
    for i in range(3):
        _checkpoint(trial / f"checkpoint_00000{i}", {"epoch": i + 1, "w": torch.full((64,), float(i))})
    (trial / "checkpoint_000003").mkdir()  # half-written by a crash after Ray's latest: never read
    latest = trial / "checkpoint_000002"
    raw = (latest / "state.pt").read_bytes()
    (latest / "state.pt").write_bytes(raw[: len(raw) // 2])  # half-written
    with pytest.warns(UserWarning, match="checkpoint_000002.*resumed from checkpoint_000001"):
        state = resume_state(Checkpoint.from_directory(str(latest)))
    assert state["epoch"] == 2 and torch.equal(state["w"], torch.full((64,), 1.0))
    note = json.loads(next(trial.glob("restore-*.json")).read_text())
    assert note["resumed_from"] == "checkpoint_000001" and note["epoch"] == 2

    # same length, one flipped byte: torch could load it, the checksum catches it
    prev = trial / "checkpoint_000001" / "state.pt"
    raw = bytearray(prev.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    prev.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="sha256"):
        assert resume_state(Checkpoint.from_directory(str(latest)))["epoch"] == 1

    (trial / "checkpoint_000000" / "meta.json").unlink()  # none readable: start again
    with pytest.warns(UserWarning, match="restarted from epoch 0"):
        assert resume_state(Checkpoint.from_directory(str(latest))) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an intact checkpoint loads without a word
        good = _checkpoint(tmp_path / "t2" / "checkpoint_000000", {"epoch": 5})
        assert resume_state(Checkpoint.from_directory(str(good)))["epoch"] == 5


def test_trial_killed_with_a_damaged_checkpoint_resumes_from_the_one_before(tmp_path, ray_address):
    """In a running sweep: the trial's newest checkpoint is truncated and its process killed (a
    crash while writing). Ray retries it; vggbn skips the damaged checkpoint, says so, and the
    trial completes from the previous one."""
    spec = write_spec(tmp_path, name="damaged", max_failures=1, keep_checkpoints=2,
                      base={**TINY, "synthetic_size": 4096, "epochs": 6})
    exp = tmp_path / "results" / "damaged"
    proc = subprocess.Popen([sys.executable, "-m", "vggbn", "sweep", str(spec), "--address", ray_address],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        rows = wait_for(lambda: next((rs for rs in results(exp).values() if rs[-1]["epoch"] >= 3), None),
                        what="the trial at epoch 3", seen=nodes_seen(exp), timeout=180)
        tid = next(iter(results(exp)))
        newest = exp / f"trial_{tid}" / rows[-1]["checkpoint_dir_name"]  # Ray's latest, registered
        before = max(c for c in newest.parent.glob("checkpoint_*") if c.name < newest.name)
        saved = json.loads((before / "meta.json").read_text())["epoch"]
        (newest / "state.pt").write_bytes((newest / "state.pt").read_bytes()[:1000])
        os.kill(rows[-1]["pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    t = pd.read_parquet(exp / "trials.parquet").iloc[0]
    assert t["status"] == "completed" and t["failures"] == 1 and t["epochs_run"] == 6
    assert f"{newest.name}: ValueError: state.pt is damaged" in t["restore_notes"]
    assert f"resumed from {before.name} (epoch {saved})" in t["restore_notes"]
    assert f"restored {tid}" in out
    epochs = [r["epoch"] for r in results(exp)[tid]]
    again = epochs[epochs.index(rows[-1]["epoch"]) + 1:]
    assert again == list(range(saved + 1, 7))  # from the checkpoint before the damaged one


# ---------------------------------------------------------------------- out of memory
def test_out_of_memory_errors_that_trial_alone(tmp_path, ray_address):
    """resources.memory_gb caps each CPU trial: the trial whose batch needs 2 GiB fails with a
    one-line reason and the fix; the small one beside it completes."""
    # 1 GiB: the small trial's process grows by several hundred MB beyond its model and batch
    # (malloc arenas of Ray's and torch's threads count against RLIMIT_DATA); 0.5 was flaky
    spec = write_spec(tmp_path, name="oom", max_failures=1, resources={"cpu": 1, "memory_gb": 1.0},
                      base={"recipe": "seed", "dataset": "synthetic", "device": "cpu",
                            "arch": "vgg_light", "width": 4.0,
                            "synthetic_size": 8192, "eval_batch_size": 256, "epochs": 1,
                            "precision": "fp32"},
                      space={"batch_size": {"grid": [128, 8192]}})
    r = vggbn("sweep", str(spec), "--address", ray_address)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 completed" in r.stdout and "1 errored" in r.stdout
    t = pd.read_parquet(tmp_path / "results" / "oom" / "trials.parquet").set_index("batch_size")
    assert t.loc[128, "status"] == "completed" and t.loc[128, "test_acc"] > 0.5
    err = t.loc[8192, "error"]
    assert t.loc[8192, "status"] == "errored" and t.loc[8192, "failures"] == 0  # deterministic: run once
    assert "TrialOutOfMemory: out of memory on cpu (resources.memory_gb=1;" in err
    assert "batch_size=8192" in err and "Fix: lower batch_size" in err
    assert "errored" in r.stdout and "out of memory" in r.stdout


def test_oom_is_recognised_from_cuda_and_cpu_errors():
    from vggbn.limits import is_oom

    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(MemoryError())
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"))
    assert not is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_oom(ValueError("out of memory"))


# ---------------------------------------------------------------------- ASHA across a resume
def asha_spec(tmp_path: Path, name: str) -> Path:
    # good and hopeless learning rates interleaved, one trial at a time: the rungs decide
    lrs = [3e-3, 1e-8, 2e-3, 3e-8, 1e-3, 2e-8, 1e-7, 5e-8, 5e-4, 4e-8]
    return write_spec(tmp_path, name=name, metric="val_acc", max_concurrent=1,
                      scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
                      base={**TINY, "width": 0.0625, "synthetic_size": 640, "val_fraction": 0.2,
                            "epochs": 4},
                      space={"lr": {"grid": lrs}})


def test_asha_killed_and_resumed_stops_the_same_trials(tmp_path, ray_address):
    env = {"TUNE_GLOBAL_CHECKPOINT_S": "1"}
    through = vggbn("sweep", str(asha_spec(tmp_path, "through")), "--address", ray_address, env=env)
    assert through.returncode == 0, through.stderr[-3000:]

    exp = tmp_path / "results" / "killed"
    # the driver and the local Ray it starts are killed together: a reboot
    proc = subprocess.Popen([sys.executable, "-m", "vggbn", "sweep", str(asha_spec(tmp_path, "killed"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, **env})
    wait_for(lambda: len(results(exp)) >= 4, what="the fourth trial", seen=nodes_seen(exp), timeout=180)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    started = set(results(exp))
    assert not (exp / "trials.parquet").exists()
    r = vggbn("resume", str(exp), "--address", ray_address, env=env)
    assert r.returncode == 0, r.stderr[-3000:]

    cols = ["status", "epochs_run"]
    a = pd.read_parquet(tmp_path / "results" / "through" / "trials.parquet").set_index("lr")[cols].sort_index()
    b = pd.read_parquet(exp / "trials.parquet").set_index("lr")[cols].sort_index()
    assert (a["status"] == "early_stopped").sum() >= 3, a  # the rungs did cut trials
    pd.testing.assert_frame_equal(a, b)
    # and some of those decisions were taken after the resume, against the restored rungs
    t = pd.read_parquet(exp / "trials.parquet")
    late = t[~t["trial_id"].isin(started)]
    assert (late["status"] == "early_stopped").sum() >= 2, (started, t[["trial_id", "lr", "status"]])
