"""One driver per experiment (vggbn/store/lease.py): on local disk an OS lock that ends with its
process, on S3 a conditional put with a heartbeat that a later driver takes over once it is stale.
Races are run for real (threads started together, processes started together); a killed holder
is a SIGKILLed process, never a simulated one."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ray_worker, tiny, vggbn_main, wait_for
from vggbn.errors import ExperimentError
from vggbn.store.experiment import Experiment
from vggbn.store.lease import Lease

HOLD = Path(__file__).parent / "worker_hold"  # hold points in the sweep's trials (sitecustomize.py)
HOST = socket.gethostname()


def _race(make) -> tuple[list[Lease], list[ExperimentError]]:
    """Two leases acquired by two threads released together: (the ones taken, the refusals)."""
    start = threading.Barrier(2)
    won, refused = [], []

    def take():
        lease = make()
        start.wait()
        try:
            lease.acquire()
            won.append(lease)
        except ExperimentError as e:
            refused.append(e)

    threads = [threading.Thread(target=take) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, refused


# ---------------------------------------------------------------------- local disk
def test_a_second_driver_is_refused_naming_the_first_then_gets_it(tmp_path):
    exp = Experiment(str(tmp_path / "e"))
    first = Lease(exp, "resume")
    first.acquire()
    with pytest.raises(ExperimentError) as e:
        Lease(exp, "extend").acquire()
    what, fix = e.value.what, e.value.fix
    assert f"is being run by `vggbn resume` on {HOST} pid {os.getpid()} since " in what, what
    assert "(vggbn extend would run it too)" in what and f"vggbn status {exp.uri}" in fix, fix
    first.release()
    with Lease(exp, "extend"):  # given back: the next one gets it
        holder = json.loads((tmp_path / "e" / "vggbn-lease.json").read_text())
        assert holder["command"] == "extend" and holder["pid"] == os.getpid()


def test_two_drivers_at_once_on_local_disk_one_wins(tmp_path):
    exp = Experiment(str(tmp_path / "e"))
    won, refused = _race(lambda: Lease(exp, "resume"))
    assert len(won) == 1 and len(refused) == 1
    won[0].release()


def test_a_killed_holders_lease_is_free_at_once(tmp_path):
    """The OS lock ends with its process: SIGKILL, then the next driver takes the lease at once."""
    where = str(tmp_path / "e")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom vggbn.store.experiment import Experiment\n"
         "from vggbn.store.lease import Lease\nLease(Experiment(sys.argv[1]), 'resume').acquire()\n"
         "print('held', flush=True)\nsys.stdin.read()", where],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ExperimentError) as e:
            Lease(Experiment(where), "resume").acquire()
        assert f"pid {holder.pid}" in e.value.what
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        with Lease(Experiment(where), "resume"):
            pass
    finally:
        if holder.poll() is None:
            holder.kill()


# ---------------------------------------------------------------------- S3 (moto's server)
def _s3_exp(s3, name: str) -> Experiment:
    return Experiment(f"s3://{s3.bucket}/sweeps/{name}?{s3.query}")


def _lease_doc(s3, name: str) -> dict | None:
    try:
        return json.loads(s3.client.get_object(Bucket=s3.bucket, Key=f"sweeps/{name}/vggbn-lease.json")["Body"].read())
    except s3.client.exceptions.NoSuchKey:
        return None


def test_s3_lease_beats_refuses_a_second_and_is_gone_after(s3):
    exp = _s3_exp(s3, "e")
    first = Lease(exp, "resume", heartbeat_s=0.05)
    first.acquire()
    try:
        t0 = _lease_doc(s3, "e")["heartbeat"]
        wait_for(lambda: _lease_doc(s3, "e")["heartbeat"] > t0, "a heartbeat", timeout=60)
        with pytest.raises(ExperimentError) as e:
            Lease(exp, "sweep").acquire()
        assert f"`vggbn resume` on {HOST} pid {os.getpid()}" in e.value.what
        assert "its last heartbeat" in e.value.what and "loses the lease" in e.value.fix
    finally:
        first.release()
    assert _lease_doc(s3, "e") is None  # given back: the object is gone


def test_s3_two_drivers_at_once_one_wins(s3):
    won, refused = _race(lambda: Lease(_s3_exp(s3, "race"), "resume"))
    assert len(won) == 1 and len(refused) == 1, refused
    won[0].release()


def test_s3_a_stale_lease_is_taken_over_by_one_of_two(s3):
    """A driver that died (no heartbeat for longer than stale_s): the next one takes its lease
    over, says whose, and of two trying at once exactly one gets it."""
    key = "sweeps/stale/vggbn-lease.json"
    dead = {"host": "lost-node", "pid": 4242, "command": "resume", "since": time.time() - 900,
            "heartbeat": time.time() - 600}
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=json.dumps(dead).encode())
    with pytest.raises(ExperimentError):  # not stale yet at a 1-hour threshold
        Lease(_s3_exp(s3, "stale"), "resume", stale_s=3600).acquire()
    won, refused = _race(lambda: Lease(_s3_exp(s3, "stale"), "resume", stale_s=60))
    assert len(won) == 1 and len(refused) == 1, refused
    assert won[0].taken_over["pid"] == 4242 and _lease_doc(s3, "stale")["pid"] == os.getpid()
    assert f"pid {os.getpid()}" in refused[0].what  # the loser names the new holder, not the dead one
    won[0].release()


# ---------------------------------------------------------------------- the commands
def _notes(hold: Path) -> dict[str, dict]:
    out = {}
    for f in hold.glob("pid*.json"):
        try:
            out[f.stem] = json.loads(f.read_text())
        except (OSError, ValueError):
            pass
    return out


def _held_at(hold: Path, epoch: int, old: set[str]) -> bool:
    """Both trials (new processes, not in `old`) waiting at the start of `epoch`."""
    return sum(1 for k, n in _notes(hold).items() if k not in old and n["epoch"] == epoch) == 2


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_two_resumes_at_once_one_runs_and_a_killed_holder_is_taken_over(tmp_path, ray_cluster):
    """A sweep killed mid-run; two `vggbn resume` of it started together: one runs, the other
    exits 2 naming it. The runner is SIGKILLed while its trials run; a third resume takes over and
    completes the same trials."""
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "hold-epoch-2").touch()  # trials wait at the start of epoch 2 (after epoch 1's checkpoint)
    path = os.pathsep.join(filter(None, [str(HOLD), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": path, "VGGBN_TEST_HOLD_DIR": str(hold), "VGGBN_TEST_HOLD_SINGLE": "1"}
    spec = tmp_path / "lease.yaml"
    spec.write_text(yaml.safe_dump({"name": "lease", "storage": str(tmp_path / "results"), "metric": "test_acc",
                                    "checkpoint_every": 1, "base": tiny(epochs=3),
                                    "space": {"seed": {"grid": [0, 1]}}, "resources": {"cpu": 1}}))
    exp = tmp_path / "results" / "lease"
    with ray_worker(ray_cluster, env=env) as address:
        def start(*args):
            return subprocess.Popen([sys.executable, "-m", "vggbn", *args, "--address", address],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)

        sweep = start("sweep", str(spec))
        a = b = None
        try:
            wait_for(lambda: _held_at(hold, 2, set()) and list(exp.glob("experiment_state*.json")),
                     "both trials past epoch 1", proc=sweep)
            trial_ids = {p.name.removeprefix("trial_") for p in exp.glob("trial_*")}
            _kill(sweep)  # its trials were its actors: Ray ends them with it

            old = set(_notes(hold))
            a, b = start("resume", str(exp)), start("resume", str(exp))
            wait_for(lambda: a.poll() is not None or b.poll() is not None, "one resume to end")
            loser, runner = (a, b) if a.poll() is not None else (b, a)
            err = loser.stderr.read()
            assert loser.returncode == 2 and "Traceback" not in err, err[-3000:]
            assert f"is being run by `vggbn resume` on {HOST} pid {runner.pid} since " in err, err
            assert runner.poll() is None
            spec_before = (exp / "spec.yaml").read_bytes()
            ext = vggbn_main("extend", exp, "--set", "space.seed.grid=[0,1,2]")  # beside the running resume
            assert ext.returncode == 2 and f"pid {runner.pid} since " in ext.stderr, ext.stderr[-3000:]
            assert "Traceback" not in ext.stderr and (exp / "spec.yaml").read_bytes() == spec_before
            wait_for(lambda: _held_at(hold, 2, old), "the runner's trials at epoch 2", proc=runner)
            _kill(runner)  # the lease's holder dies with its trials mid-run
        finally:
            for p in (sweep, a, b):
                if p is not None and p.poll() is None:
                    _kill(p)
        (hold / "hold-epoch-2").unlink()
        r = subprocess.run([sys.executable, "-m", "vggbn", "resume", str(exp), "--address", address],
                           capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 trials (2 completed)" in r.stdout, r.stdout[-2000:]
    t = pd.read_parquet(exp / "trials.parquet")
    assert set(t["trial_id"]) == trial_ids and set(t["status"]) == {"completed"}  # the same trials
    assert (t["epochs_run"] == 3).all()


def test_s3_take_over_without_waiting_and_never_a_local_lock(s3, tmp_path):
    """--take-over: the user knows the holder is dead (its machine is gone) and does not wait for
    its heartbeat to go stale. A local lease is never taken: its lock held means its process lives."""
    key = "sweeps/gone/vggbn-lease.json"
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=json.dumps(
        {"host": "gone", "pid": 7, "command": "resume", "since": time.time(), "heartbeat": time.time()}).encode())
    with pytest.raises(ExperimentError) as e:
        Lease(_s3_exp(s3, "gone"), "resume").acquire()
    assert "`vggbn resume --take-over`" in e.value.fix
    with Lease(_s3_exp(s3, "gone"), "resume", take_over=True) as lease:
        assert lease.taken_over["host"] == "gone" and _lease_doc(s3, "gone")["pid"] == os.getpid()
    exp = Experiment(str(tmp_path / "e"))
    with Lease(exp, "resume"), pytest.raises(ExperimentError):
        Lease(exp, "resume", take_over=True).acquire()
