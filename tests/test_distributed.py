"""One trial on two CPU workers (gloo) through Ray Train's TorchTrainer inside the Tuner.

One real `vggbn sweep` with `resources: {cpu: 1, workers: 2}` runs for the module: a model without
BatchNorm or dropout, 4 epochs, a checkpoint every 2. Its rank-1 worker is killed (SIGKILL) as it
starts epoch 3, after the epoch-2 checkpoint: the trial is retried from that checkpoint and
completes. The tests then compare it with a single-process fit() of the same global batches,
and read its export and checkpoint as a single-process trial's are read.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import tiny, wait_for
from vggbn.schema import EPOCH_EXTRA, EPOCH_METRICS
from vggbn.store.checkpoint import list_checkpoints, load_state
from vggbn.plan.load import load_spec
from vggbn.spec.model import SweepSpecError

pytestmark = pytest.mark.timeout(400)
EPOCHS, EVERY, KILL_AT = 4, 2, 3  # rank 1 dies as it starts epoch 3; the checkpoint is epoch 2's
# SGD, not Adam: Adam's step does not see a gradient's scale, SGD's does (a wrong DDP weighting shows)
BASE = tiny(synthetic_size=512, batch_size=64, epochs=EPOCHS, bn=False, dropout=0.0, record_steps=True,
            optimizer="sgd", lr=0.02)
# tolerance: float32 sums in another order (each rank's half-batch, then gloo's all-reduce of the
# gradients) against one process's: measured 3e-8 (parameters) and 8e-8 (losses).
# A wrong weighting of the halves moves SGD's parameters by ~lr x gradient, orders of magnitude more.
# (At lr 0.05 this net's 4th epoch amplifies the rounding to 1e-3: chaotic dynamics, not a bug.)
PARAM_TOL, LOSS_TOL = 1e-5, 1e-6
HOLD = Path(__file__).parent / "worker_hold"  # the test's hold points, loaded by the sweep's workers


def _rows(exp: Path) -> list[dict]:
    """What the driver recorded for the one trial (Tune's result.json lines)."""
    for f in exp.glob("trial_*/result.json"):
        try:
            return [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        except (OSError, json.JSONDecodeError):
            return []
    return []


def _note(pids: Path, rank: int) -> dict:
    try:
        return json.loads((pids / f"rank{rank}.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    spec = root / "ddp.yaml"
    spec.write_text(yaml.safe_dump({"name": "ddp", "storage": str(root / "results"), "metric": "test_acc",
                                    "max_failures": 1, "checkpoint_every": EVERY,
                                    "resources": {"cpu": 1, "workers": 2}, "base": BASE}))
    pids = root / "pids"
    pids.mkdir()
    (pids / f"hold-epoch-{KILL_AT}").touch()  # the workers wait here until the test removes it
    # worker_hold/sitecustomize.py: each worker notes its pid and epoch and waits at the hold
    path = os.pathsep.join(filter(None, [str(HOLD), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "VGGBN_TEST_HOLD_DIR": str(pids),
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
           "VGGBN_CACHE_DIR": str(root / "cache"), "VGGBN_DATA_DIR": str(root / "datasets")}
    exp = root / "results" / "ddp"
    proc = subprocess.Popen([sys.executable, "-m", "vggbn", "sweep", str(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        wait_for(lambda: all(_note(pids, r).get("epoch") == KILL_AT for r in (0, 1)),
                 f"both workers at epoch {KILL_AT}", proc=proc)
        wait_for(lambda: any(r["epoch"] == EVERY and r.get("checkpoint_dir_name") for r in _rows(exp)),
                 f"the epoch-{EVERY} checkpoint in the trial", proc=proc)
        before = _rows(exp)
        victim = _note(pids, 1)["pid"]
        os.kill(victim, signal.SIGKILL)
        (pids / f"hold-epoch-{KILL_AT}").unlink()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    return {"exp": exp, "out": out, "before": before, "victim": victim, "pids": pids}


def _single_process():
    """fit() in this process on the same config: the global batches the two workers split."""
    from vggbn.train import fit

    final = {}

    def keep(metrics, state):
        final["model"] = {k: v.clone() for k, v in state["model"].items()}

    result = fit(BASE, on_epoch=keep)
    return result, final["model"]


@pytest.mark.ray
def test_two_workers_match_one_process_on_the_same_global_batch(killed_run):
    """No BN, no dropout: DDP's mean of two half-batch gradients is the global batch's gradient, so
    the parameters and losses agree with one process up to float32 summation order, across the
    worker's death and the resume too."""
    exp = killed_run["exp"]
    result, ref = _single_process()
    trial_dir = next(exp.glob("trial_*"))
    state = load_state(_fs(), list_checkpoints(_fs(), str(trial_dir))[0])
    assert state["epoch"] == EPOCHS and state["model"].keys() == ref.keys()  # no "module." prefix
    diff = max((state["model"][k].float() - ref[k].float()).abs().max().item() for k in ref)
    scale = max(ref[k].float().abs().max().item() for k in ref)
    e = pd.read_parquet(exp / "epochs.parquet").sort_values("epoch")
    loss_diff = max(abs(a - h["train_loss"]) for a, h in zip(e["train_loss"], result["history"]))
    print(f"max |param diff| {diff:.3g} (params up to {scale:.3g}); max |train_loss diff| {loss_diff:.3g}")
    assert diff < PARAM_TOL, diff
    assert loss_diff < LOSS_TOL, loss_diff
    assert list(e["train_acc"]) == [h["train_acc"] for h in result["history"]]  # counts: exact
    assert e["test_acc"].iloc[-1] == pytest.approx(result["test_acc"], abs=1 / 256)
    steps = pd.read_parquet(exp / "steps.parquet").sort_values("step")
    assert len(steps) == len(result["steps"]) == EPOCHS * 8  # 512 / 64 global batches an epoch
    assert max(abs(a - b["train_loss"]) for a, b in zip(steps["train_loss"], result["steps"])) < LOSS_TOL


def _fs():
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem()


def test_sweep_exports_what_a_single_process_trial_does(killed_run):
    exp = killed_run["exp"]
    e = pd.read_parquet(exp / "epochs.parquet")
    want = [m for m in EPOCH_METRICS if not m.startswith("val_")] + list(EPOCH_EXTRA)
    assert not set(want) - set(e.columns), sorted(set(want) - set(e.columns))
    t = pd.read_parquet(exp / "trials.parquet").iloc[0]
    assert t["status"] == "completed" and t["params"] > 0 and t["gflops"] > 0
    # the checkpoint: vggbn's format, the trial's resolved config; the Train run's copies are gone
    trial_dir = next(exp.glob("trial_*"))
    ckpts = sorted(trial_dir.glob("checkpoint_*"))
    meta = json.loads((ckpts[-1] / "meta.json").read_text())
    assert meta["epoch"] == EPOCHS and meta["provenance"]["workers"] == 2
    assert meta["config"] == json.loads((trial_dir / "vggbn-config.json").read_text())["config"]
    assert not list(trial_dir.glob("ddp-*"))
    from vggbn.sweep.surfaces import landscape  # what `vggbn landscape` runs (no Ray without --address)

    assert landscape(str(exp), resolution=2, samples=32)["trials"] == 1
    s = pd.read_parquet(exp / "surfaces.parquet")
    assert set(s["trial_id"]) == {t["trial_id"]} and s["loss"].notna().all()


def test_killed_worker_resumes_from_the_last_checkpoint(killed_run):
    exp = killed_run["exp"]
    t = pd.read_parquet(exp / "trials.parquet").iloc[0]
    assert t["status"] == "completed" and t["failures"] == 1 and t["epochs_run"] == EPOCHS
    e = pd.read_parquet(exp / "epochs.parquet")
    assert sorted(e["epoch"]) == list(range(1, EPOCHS + 1))  # each epoch once
    epochs = [r["epoch"] for r in _rows(exp)]
    seen = [r["epoch"] for r in killed_run["before"]]
    assert seen[:EVERY] == list(range(1, EVERY + 1))
    # after the kill: from the epoch-2 checkpoint, not from scratch; epochs 1-2 are not run again
    again = epochs[epochs.index(EVERY) + 1:]
    assert again == list(range(EVERY + 1, EPOCHS + 1)), epochs
    assert _note(killed_run["pids"], 1)["pid"] != killed_run["victim"]  # a new worker process


# ---------------------------------------------------------------------- the spec, without Ray
def _spec(tmp_path, **resources) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"name": "s", "storage": str(tmp_path), "metric": "test_acc",
                                 "resources": resources, "base": BASE}))
    return p


@pytest.mark.parametrize("resources, words", [
    ({"gpu": 2, "workers": 3}, ["gpu: 2 with workers: 3", "gpu: 2 alone"]),
    ({"gpu": 0.5, "workers": 2}, ["gpu: 0.5 with workers: 2", "whole GPU"]),
    ({"gpu": 2.5}, ["whole number"]),
])
def test_contradictory_resources_are_refused(tmp_path, resources, words):
    with pytest.raises(SweepSpecError) as e:
        load_spec(_spec(tmp_path, **resources))
    for w in words:
        assert w in str(e.value), str(e.value)
    assert "Fix:" in str(e.value)


def test_probes_need_one_process(tmp_path):
    with pytest.raises(SweepSpecError, match="probe_every: 4 with resources.workers 2"):
        load_spec(_spec(tmp_path, cpu=1, workers=2), {"base.probe_every": 4})


def test_resources_count_every_worker(tmp_path):
    from vggbn.plan.dry_run import dry_run

    s = load_spec(_spec(tmp_path, gpu=2))  # gpu: 2 = 2 workers x 1 GPU
    r = s.resources
    assert (r.n_workers, r.worker_gpu, r.trial_gpu, r.trial_cpu) == (2, 1.0, 2.0, 2.0)
    assert "2 workers x (1 CPU + 1 GPU) each, data-parallel" in dry_run(s)
    s = load_spec(_spec(tmp_path, cpu=2, workers=3), {"budget.cpu_hours": 5})
    assert (s.resources.n_workers, s.resources.trial_cpu) == (3, 6.0)
    from vggbn.sweep.schedulers import build

    sched, _ = build(s)
    assert sched.budget["per_trial"] == 6.0  # the budget counts all of a trial's CPUs
    assert "1 CPU + 0 GPU each" in dry_run(load_spec(_spec(tmp_path, cpu=1)))  # one process: as before


@pytest.mark.ray
def test_a_worker_group_larger_than_the_machine_is_refused(tmp_path):
    """On a local Ray, a trial whose workers need more CPUs than the machine has would wait forever:
    exit 2 after Ray starts, the claim given back."""
    import os

    from conftest import vggbn

    cpus = (os.cpu_count() or 2) + 1
    r = vggbn("sweep", _spec(tmp_path, cpu=cpus, workers=2), timeout=180)
    assert r.returncode == 2 and "would wait forever" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "s" / "vggbn-claim.json").exists()


@pytest.mark.parametrize("sizes", [[2, 64], [64, 256]])
def test_a_searched_batch_size_below_the_workers_is_refused(tmp_path, sizes):
    p = _spec(tmp_path, cpu=1, workers=4)
    raw = yaml.safe_load(p.read_text())
    raw["base"] = {k: v for k, v in raw["base"].items() if k != "batch_size"}
    raw.update(search="random", space={"batch_size": {"choice": sizes}})
    p.write_text(yaml.safe_dump(raw))
    if min(sizes) < 4:
        with pytest.raises(SweepSpecError, match="space.batch_size: 2 is smaller than resources.workers 4"):
            load_spec(p)
    else:
        assert load_spec(p).resources.n_workers == 4
