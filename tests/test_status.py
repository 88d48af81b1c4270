"""`vggbn status` of a finished, a killed and a bucket's sweep, read only; the progress lines.

The killed sweep is real: a small grid whose driver (and the local Ray it started) gets SIGKILL once
Ray's snapshot holds a finished trial and the driver's stderr has said so, as a reboot would.
"""
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import tiny, vggbn, vggbn_main, wait_for
from vggbn import progress
from vggbn.cli import main
from vggbn.sweep.status import status, status_text

pytestmark = pytest.mark.timeout(300)


def sha256s(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def status_json(path) -> dict:
    r = vggbn_main("status", path, "--json")  # the real process: test_status_of_the_finished_smoke_run
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_status_of_the_finished_smoke_run(smoke_run):
    exp, run = smoke_run
    # the sweep said a line per finished trial, and the export at its end one line
    assert [int(n) for n in re.findall(r"^\[(\d)/4 trials done · \d running", run.stderr, re.M)] == [1, 2, 3, 4]
    assert "[4/4 trials done · 0 running]" in run.stderr
    assert re.search(r"^\[export: 4/4 trials read · in [\d.]+ s\]$", run.stderr, re.M), run.stderr[-3000:]
    before = sha256s(exp)
    st = status_json(exp)
    trials = pd.read_parquet(exp / "trials.parquet")
    counts = trials["status"].value_counts()
    assert st["state"] == "finished" and st["planned"] == len(trials) == 4
    t = st["trials"]
    assert t["done"] == len(trials) and t["completed"] == counts.get("completed", 0)
    assert t["running"] == t["errored"] == t["pending"] == 0 and st["running"] == []
    best = trials.loc[trials["test_acc"].idxmax()]
    assert st["best"]["metric"] == "test_acc" and st["best"]["value"] == pytest.approx(best["test_acc"])
    row = trials.set_index("trial_id").loc[st["best"]["trial_id"]]  # a trial with that value (ties allowed)
    assert row["test_acc"] == pytest.approx(best["test_acc"])
    assert st["best"]["config"] == {"bn": bool(row["bn"]), "seed": int(row["seed"])}  # the swept keys
    # compute as the budget counts it: each trial's time x its 1 CPU
    assert st["compute"]["cpu_hours"] == pytest.approx(trials["wall_time_s"].sum() / 3600, rel=1e-6)
    assert st["compute"]["gpu_hours"] == 0
    assert st["snapshot"]["file"].startswith("experiment_state-") and st["snapshot"]["age_s"] >= 0
    text = vggbn("status", exp, timeout=120)
    assert text.returncode == 0 and text.stdout.startswith("smoke: finished · 4 of 4 trials done (4 completed)")
    assert f"best test_acc (max): {best['test_acc']:.4f}" in text.stdout and "CPU-hours" in text.stdout
    assert sha256s(exp) == before  # status only reads


def _snapshot_terminated(exp: Path) -> int:
    """Trials Ray's newest snapshot holds as TERMINATED (read here as raw JSON, not by status)."""
    names = sorted(exp.glob("experiment_state-*.json"))
    try:
        doc = json.loads(names[-1].read_text()) if names else {"trial_data": []}
        return sum(json.loads(a)["status"] == "TERMINATED" for a, _ in doc["trial_data"])
    except (OSError, ValueError, KeyError):  # being rewritten: read it on the next poll
        return 0


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver, the local Ray it started and Ray's workers (their own sessions): a
    reboot; return once every one is gone, so nothing writes into the experiment any more."""
    import psutil  # ipykernel's dependency (dev extra); Ray vendors its own copy

    try:
        tree = [psutil.Process(proc.pid)]
        tree += tree[0].children(recursive=True)
    except psutil.NoSuchProcess:  # it ended by itself (the failure is reported by the caller)
        tree = []
    os.killpg(proc.pid, signal.SIGKILL)
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    gone, alive = psutil.wait_procs(tree, timeout=60)
    assert not alive, alive


@pytest.mark.ray
def test_status_of_a_killed_sweep_and_its_progress_lines(tmp_path):
    spec = {"name": "killed", "storage": str(tmp_path), "metric": "test_acc", "base": tiny(cpu_threads=0),
            "space": {"seed": {"grid": list(range(6))}}, "resources": {"cpu": 1}}
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(spec))
    exp, err = tmp_path / "killed", tmp_path / "stderr.txt"
    with open(err, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "vggbn", "sweep", str(path)], stdout=subprocess.DEVNULL,
                                stderr=f, start_new_session=True,
                                env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"})
    line = re.compile(r"^\[1/6 trials done · \d running · ~[\d.]+ (s|min) left\]$", re.M)

    def first_trial_done():
        assert proc.poll() is None, f"the sweep ended before it was killed: {err.read_text()[-3000:]}"
        return line.search(err.read_text()) and _snapshot_terminated(exp) >= 1

    try:
        wait_for(first_trial_done, "a finished trial in the snapshot and its progress line",
                 seen=lambda: err.read_text()[-2000:])
    finally:
        kill_tree(proc)
    assert not (exp / "trials.parquet").exists()
    before = sha256s(exp)
    st = status_json(exp)
    t = st["trials"]
    assert st["state"] == "running" and st["planned"] == 6  # a fresh snapshot: it cannot tell yet
    assert t["done"] >= 1 and t["running"] + t["pending"] > 0 and t["done"] + t["running"] + t["pending"] == 6
    assert t["completed"] == t["done"] and st["compute"]["cpu_hours"] > 0
    last = json.loads((exp / f"trial_{st['best']['trial_id']}" / "result.json").read_text().splitlines()[-1])
    assert last["epoch"] == 2 and st["best"]["value"] == last["test_acc"]  # a finished trial's final value
    text = status_text(status(str(exp)))
    assert text.startswith(f"killed: running · {t['done']} of 6 trials done"), text
    if st["running"]:  # each running trial is said to be as of the snapshot, possibly stale
        assert f"running: {', '.join(st['running'])}, as of Ray's snapshot" in text and "may be stale" in text
    # an hour later nobody rewrote the snapshot: the driver is not running
    later = status(str(exp), now=(exp / st["snapshot"]["file"]).stat().st_mtime + 3600)
    assert later["state"] == "stopped" and later["snapshot"]["stale"] and later["time_left_s"] is None
    assert "driver is not running?" in status_text(later) and f"vggbn resume {exp}" in status_text(later)
    assert sha256s(exp) == before


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """moto's S3 server on 127.0.0.1 with a fresh bucket (as tests/test_s3_cluster.py)."""
    moto_server = pytest.importorskip("moto.server")
    import boto3

    monkeypatch.setattr(logging.getLogger("werkzeug"), "level", logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                 "AWS_CONFIG_FILE": str(tmp_path / "none"),
                 "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
    bucket = f"vggbn-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    try:
        yield client, bucket, f"endpoint_override={host}:{port}&scheme=http"
    finally:
        server.stop()


def test_status_of_a_bucket_experiment_reads_only(smoke_run, s3, capsys):
    client, bucket, query = s3
    exp, _ = smoke_run
    for p in sorted(exp.rglob("*")):  # as `aws s3 sync` would put it (the weights are not read)
        if p.is_file() and p.name != "state.pt":
            client.put_object(Bucket=bucket, Key=f"res/smoke/{p.relative_to(exp).as_posix()}", Body=p.read_bytes())

    def etags() -> dict[str, str]:
        return {o["Key"]: o["ETag"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}

    before = etags()
    assert main(["status", f"s3://{bucket}/res/smoke?{query}", "--json"]) == 0
    remote, local = json.loads(capsys.readouterr().out), status(str(exp))
    for key in ("state", "planned", "trials", "best", "compute"):
        assert remote[key] == local[key], key
    assert etags() == before
    assert main(["status", f"s3://no-such-bucket-{bucket}/res/smoke?{query}"]) == 2
    err = capsys.readouterr().err
    assert "no bucket" in err and "Fix:" in err and len(err.strip().splitlines()) == 2, err


def test_progress_lines_time_left_from_what_was_measured(capsys, monkeypatch):
    t = [0.0]
    c = progress.Counter("export", 10, "trials read", every_s=5, clock=lambda: t[0])
    for _ in range(10):  # 2 s per trial: a line once 5 s passed since the last, and the last one
        t[0] += 2
        c.add()
    assert capsys.readouterr().err.splitlines() == [
        "[export: 3/10 trials read · ~14 s left]", "[export: 6/10 trials read · ~8.0 s left]",
        "[export: 9/10 trials read · ~2.0 s left]", "[export: 10/10 trials read · in 20 s]"]
    # a sweep: the median finished trial (not the mean: one slow outlier) x left / at once
    assert progress.trials_left([10, 30, 20, 1000, 15], 6, 2) == 20 * 6 / 2
    assert progress.trials_left([], 6, 2) is None
    monkeypatch.setenv(progress.ENV, "0")
    progress.Steps("report", ["loading"])("loading")
    assert capsys.readouterr().err == ""


def test_bad_paths_exit_2_with_two_lines(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "spec.yaml").write_text(yaml.safe_dump({"name": "damaged", "base": tiny()}))
    (damaged / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": [["not json')
    for path, words in ((tmp_path / "nowhere", "no such directory"), (tmp_path / "plain", "not a vggbn sweep"),
                        (damaged, "not a Ray experiment state")):
        assert main(["status", str(path)]) == 2  # main() turns the error into its message
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 2 and words in lines[0] and lines[1].startswith("Fix:"), err
        assert lines[0].startswith(f"vggbn status: error: {path}")
