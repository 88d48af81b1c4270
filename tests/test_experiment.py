"""An experiment directory: what is exported is what was trained, one directory = one sweep,
atomic writes, checkpoints loaded as data."""
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from conftest import DATA, SWEEPS, vggbn, vggbn_main
from vggbn.store import checkpoint
from vggbn.store.experiment import Experiment, ExperimentError
from vggbn.spec.model import SweepSpecError

OLD = DATA / "exp_08213c0" / "smoke"  # made by tests/data/make_exp_08213c0.sh


def listing(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------- the resolved config is the truth
def test_an_experiment_from_commit_08213c0_exports_what_it_trained(tmp_path, ray_address):
    """Made when the default recipe was `seed` (Adam, lr 1e-3, batch 1024); its trials' raw Ray
    configs name none of that. Today's default is `strong` (SGD 0.1, batch 128): the export must
    read the config each trial trained (from its checkpoint), not re-resolve the raw dict."""
    exp = tmp_path / "smoke"
    shutil.copytree(OLD, exp)
    raw = [json.loads(p.read_text()) for p in exp.glob("trial_*/params.json")]
    assert len(raw) == 4 and not any({"recipe", "optimizer", "lr", "batch_size"} & set(r) for r in raw)
    r = vggbn("export", exp)  # the real process; the other exports here run in this one
    assert r.returncode == 0, r.stderr[-2000:]
    t = pd.read_parquet(exp / "trials.parquet")
    assert len(t) == 4 and set(t["status"]) == {"completed"}
    for key, value in {"recipe": "seed", "optimizer": "adam", "lr": 1e-3, "batch_size": 1024,
                       "normalize": "half", "init": "xavier", "precision": "fp32", "augment": False}.items():
        assert set(t[key]) == {value}, (key, t[key].tolist())
    assert sorted(zip(t["bn"], t["seed"])) == [(False, 0), (False, 1), (True, 0), (True, 1)]
    assert set(t["prov_git_commit"].str[:7]) == {"08213c0"}  # the trials' own provenance
    meta = json.loads(pq.read_schema(exp / "trials.parquet").metadata[b"vggbn"])
    assert meta["schema_version"] == 1 and meta["spec"]["name"] == "smoke"
    # its tuner.pkl names the old module paths (vggbn.sweep.FIFO, vggbn.sweep.vggbn_trial):
    # a resume of the finished sweep restores it, trains nothing and exports the same trials
    before = {p.parent.name: p.read_text() for p in exp.glob("trial_*/result.json")}
    r = vggbn("resume", exp, "--address", ray_address)
    assert r.returncode == 0 and "4 completed" in r.stdout, r.stderr[-2000:]
    assert {p.parent.name: p.read_text() for p in exp.glob("trial_*/result.json")} == before
    again = pd.read_parquet(exp / "trials.parquet")
    assert set(again["optimizer"]) == {"adam"} and set(again["batch_size"]) == {1024}


def test_a_stored_spec_is_read_as_data(tmp_path):
    """An old spec that today's rules refuse (two presets that resolve to one config under the
    strong recipe, as the old ablation_strong.yaml had) still exports."""
    exp = tmp_path / "smoke"
    shutil.copytree(OLD, exp)
    spec = yaml.safe_load((exp / "spec.yaml").read_text())
    spec["space"] = {"preset": {"grid": ["vgg_a_bn", "vgg_a_bn_sgd"]}, "seed": {"grid": [0, 1]}}
    spec["base"] = {**spec["base"], "recipe": "strong"}
    (exp / "spec.yaml").write_text(yaml.safe_dump(spec))
    r = vggbn_main("export", exp)
    assert r.returncode == 0, r.stderr[-2000:]
    assert set(pd.read_parquet(exp / "trials.parquet")["optimizer"]) == {"adam"}  # what was trained


def test_re_export_removes_stale_optional_files(tmp_path):
    exp = tmp_path / "smoke"
    shutil.copytree(OLD, exp)  # per-step losses, no probes
    pd.DataFrame({"trial_id": ["gone"], "step": [1], "beta": [1.0]}).to_parquet(exp / "probes.parquet")
    assert vggbn_main("export", exp).returncode == 0
    assert not (exp / "probes.parquet").exists()  # it described trials that are not here
    assert set(pd.read_parquet(exp / "steps.parquet")["trial_id"]) <= set(
        pd.read_parquet(exp / "trials.parquet")["trial_id"])
    assert not [p for p in exp.rglob("*") if ".tmp-" in p.name]  # no temporary files left


# ---------------------------------------------------------------------- one experiment = one sweep
def claim_race(uri: str, n: int) -> tuple[list[int], list[str]]:
    """n threads claim one experiment directory at the same moment: (winners, losers' messages)."""
    won, lost, go = [], [], threading.Barrier(n)

    def start(i):
        go.wait()
        try:
            Experiment(uri).claim(f"s{i}")
            won.append(i)
        except ExperimentError as e:
            lost.append(str(e))

    threads = [threading.Thread(target=start, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, lost


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_a_second_sweep_into_a_finished_one_exits_2_and_leaves_it_intact(smoke_run, scheme):
    exp, _ = smoke_run
    before = listing(exp)
    r = vggbn_main("sweep", SWEEPS / "smoke.yaml", "--set", f"storage={scheme}{exp.parent}")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "vggbn resume" in r.stderr and "--set name=" in r.stderr
    assert listing(exp) == before


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_claim_is_exclusive_under_concurrent_starts(tmp_path, scheme):
    won, lost = claim_race(f"{scheme}{tmp_path}/exp", 8)
    assert len(won) == 1 and len(lost) == 7
    assert all("vggbn resume" in m for m in lost)
    assert json.loads((tmp_path / "exp" / "vggbn-claim.json").read_text())["sweep"] == f"s{won[0]}"


def test_two_sweeps_started_together_one_runs_one_exits_2(tmp_path, ray_address):
    args = [sys.executable, "-m", "vggbn", "sweep", str(SWEEPS / "smoke.yaml"), "--set", f"storage={tmp_path}",
            "--set", "base.epochs=1", "--address", ray_address]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[1][-1500:] for o in outs]
    loser = outs[[p.returncode for p in procs].index(2)]
    assert "already holds a sweep" in loser[1] and "Traceback" not in loser[1]
    t = pd.read_parquet(tmp_path / "smoke" / "trials.parquet")
    assert len(t) == 4 and set(t["status"]) == {"completed"}


def test_a_start_that_fails_before_any_trial_gives_its_claim_back(tmp_path):
    spec = yaml.safe_load((SWEEPS / "smoke.yaml").read_text())
    spec["base"].update(dataset="fashion_mnist", data_dir=str(tmp_path / "no-data"), storage=None)
    spec["base"].pop("storage")
    spec["storage"] = str(tmp_path / "results")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    closed = "http://127.0.0.1:9"  # nothing listens: the download fails at once
    env = {"http_proxy": closed, "https_proxy": closed, "HTTP_PROXY": closed, "HTTPS_PROXY": closed}
    r = vggbn_main("sweep", tmp_path / "s.yaml", env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    exp = tmp_path / "results" / "smoke"
    assert not (exp / "vggbn-claim.json").exists() and not (exp / "spec.yaml").exists()
    Experiment(str(exp)).claim("retry")  # the retry is not blocked


def test_claim_on_s3_is_a_conditional_put(tmp_path, monkeypatch):
    """moto's S3 server on 127.0.0.1: If-None-Match: * lets exactly one of concurrent starts win."""
    moto_server = pytest.importorskip("moto.server")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for k, v in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                     "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                     "AWS_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        boto3.client("s3").create_bucket(Bucket="vggbn-test")
        won, lost = claim_race("s3://vggbn-test/results/exp", 6)
        assert len(won) == 1 and len(lost) == 5, (won, lost)
        body = boto3.client("s3").get_object(Bucket="vggbn-test", Key="results/exp/vggbn-claim.json")["Body"]
        assert json.loads(body.read())["sweep"] == f"s{won[0]}"
        exp = Experiment("s3://vggbn-test/results/exp")  # atomic writes and reads through pyarrow's S3
        exp.write_bytes("a/b.txt", b"hello")
        assert exp.read_bytes("a/b.txt") == b"hello" and exp.read_bytes("nope") is None
        exp.release_claim()
        Experiment("s3://vggbn-test/results/exp").claim("again")
    finally:
        server.stop()


# ---------------------------------------------------------------------- checkpoints are data
class _RunsCode:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    """Whoever can write the bucket must not run code on the nodes: state.pt is loaded with
    weights_only=True, so a pickle with a callable is refused even with a matching sha256."""
    trial = tmp_path / "trial_x"
    good = trial / "checkpoint_000000"
    good.mkdir(parents=True)
    checkpoint.write(good, {"epoch": 1, "model": {"w": torch.ones(3)}}, {"config": {}})
    evil = trial / "checkpoint_000001"
    evil.mkdir()
    buf = io.BytesIO()
    torch.save({"epoch": 2, "model": {}, "x": _RunsCode(tmp_path / "pwned")}, buf)
    (evil / "state.pt").write_bytes(buf.getvalue())
    sha = hashlib.sha256(buf.getvalue()).hexdigest()
    (evil / "meta.json").write_text(json.dumps({"epoch": 2, "state_sha256": sha}))
    exp = Experiment(str(tmp_path))
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|unsupported"):
        checkpoint.load_state(exp.fs, exp.path("trial_x", "checkpoint_000001"))
    state, used, bad = checkpoint.newest_readable(exp.fs, checkpoint.list_checkpoints(exp.fs, exp.path("trial_x")))
    assert state["epoch"] == 1 and used.endswith("checkpoint_000000") and "checkpoint_000001" in bad[0]
    assert not (tmp_path / "pwned").exists()
    # and a finished trial is pruned down to its newest intact checkpoint only (never the evil one's past)
    assert checkpoint.prune_finished(exp.fs, exp.path("trial_x")) == 0  # the newest intact is the oldest


def test_surfaces_are_merged_by_trial(smoke_copy):
    exp = smoke_copy
    ids = sorted(pd.read_parquet(exp / "trials.parquet")["trial_id"])
    args = ["--resolution", "3", "--samples", "32"]
    r = vggbn_main("landscape", exp, "--trials", ids[0], *args)
    assert r.returncode == 0, r.stderr[-2000:]
    first = pd.read_parquet(exp / "surfaces.parquet")
    assert set(first["trial_id"]) == {ids[0]} and len(first) == 3 + 9
    r = vggbn_main("landscape", exp, "--trials", ids[1], *args)
    assert r.returncode == 0, r.stderr[-2000:]
    both = pd.read_parquet(exp / "surfaces.parquet")
    assert set(both["trial_id"]) == {ids[0], ids[1]}
    pd.testing.assert_frame_equal(both[both["trial_id"] == ids[0]].reset_index(drop=True), first)


def test_an_asha_sweep_interrupted_under_the_previous_release_resumes(tmp_path, ray_address):
    """Killed mid-run under b7b995a (tests/data/make_exp_b7b995a.sh): its tuner.pkl names the old
    module paths and holds that release's own PersistentASHA; its ASHA rungs are in the old format.
    Resumed with this code, it ends as the same sweep run through by the old release. Ray 2.60
    cannot resume a moved experiment whose searcher still has trials to create, so the copy goes
    where the sweep was made."""
    from filelock import FileLock

    where = Path("/tmp/vggbn-exp-b7b995a")
    expected = json.loads((DATA / "exp_b7b995a" / "expected.json").read_text())
    with FileLock(str(where) + ".lock"):
        shutil.rmtree(where, ignore_errors=True)
        shutil.copytree(DATA / "exp_b7b995a" / "asha", where / "asha")
        try:
            r = vggbn("resume", where / "asha", "--address", ray_address)
            assert r.returncode == 0, r.stderr[-3000:]
            t = pd.read_parquet(where / "asha" / "trials.parquet")
        finally:
            shutil.rmtree(where, ignore_errors=True)
    got = {repr(float(row.lr)): {"status": row.status, "epochs_run": int(row.epochs_run)} for row in t.itertuples()}
    assert got == expected


def test_make_sweep_resumes_the_specs_own_experiment(smoke_copy, ray_address):
    """`make sweep` is `vggbn sweep FILE --resume --report`: with the experiment there already (here
    through a file:// storage URI) it resumes it instead of refusing, then writes the report."""
    before = {p.parent.name: p.read_text() for p in smoke_copy.glob("trial_*/result.json")}
    r = vggbn("sweep", SWEEPS / "smoke.yaml", "--set", f"storage=file://{smoke_copy.parent}", "--resume", "--report",
              "--address", ray_address)  # make sweep SWEEP_ARGS="--address ..."; smoke_run starts a local Ray
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming it" in r.stderr and "4 completed" in r.stdout
    assert {p.parent.name: p.read_text() for p in smoke_copy.glob("trial_*/result.json")} == before  # nothing re-run
    assert (smoke_copy / "report" / "report.md").is_file() and "report:" in r.stdout


def test_a_ray_without_the_internals_vggbn_uses_is_refused_at_start(monkeypatch):
    from ray.tune.execution.tune_controller import TuneController

    from vggbn.sweep.runner import check_ray

    check_ray()
    monkeypatch.delattr(TuneController, "_mark_trial_to_checkpoint")
    with pytest.raises(SweepSpecError, match=r"_mark_trial_to_checkpoint.*tested with Ray 2\.60"):
        check_ray()
