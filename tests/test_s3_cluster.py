"""S3 end to end, on real Ray nodes and a real S3 API.

The store is moto's standalone S3 server (HTTP on 127.0.0.1, a free port); the cluster is the
session's ray.cluster_utils.Cluster (conftest: a 0-CPU head, as cluster.yaml's) with two 1-CPU
workers the test adds. The smoke
sweep runs with `storage=s3://BUCKET/sweeps?endpoint_override=...` (the endpoint only in the URI's
query: AWS_ENDPOINT_URL is unset, so the query must reach Ray, the trials and the claim); a worker
is killed mid-trial (a spot loss), then the driver is SIGKILLed and `vggbn resume s3://...` finishes
the sweep; `vggbn export`, `report` and `landscape` read the bucket in place (no sync) and write
the report and figures locally. Also: the URI handling itself, AWS_ENDPOINT_URL as the other way
to name the endpoint, and the errors people see for a bucket that is not there, a prefix with
nothing, no trials.parquet, an unreachable endpoint, denied access and no credentials.
"""
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import DATA, SWEEPS, vggbn, vggbn_main, wait_for
from test_bad_input import assert_user_error

pytestmark = pytest.mark.timeout(600)
OLD = DATA / "exp_08213c0" / "smoke"  # a finished smoke experiment (tests/data/make_exp_08213c0.sh)


def upload(s3, local: Path, prefix: str, only: tuple[str, ...] = ()) -> None:
    """A local experiment directory into the bucket, as `aws s3 sync` would put it there."""
    for p in sorted(local.rglob("*")):
        rel = p.relative_to(local).as_posix()
        if p.is_file() and (not only or rel in only):
            s3.client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{rel}", Body=p.read_bytes())


def keys(s3, prefix: str) -> set[str]:
    pages = s3.client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix)
    return {o["Key"].removeprefix(prefix) for page in pages for o in page.get("Contents", [])}


# ---------------------------------------------------------------------- URIs
def test_storage_uris_keep_their_query_and_their_scheme(tmp_path):
    """`<storage>/<name>` puts the name before a query of pyarrow's options, everywhere an
    experiment's path is made; Ray gets the filesystem built from the URI plus the plain path; a
    bucket's report goes to reports/<name>/ (never a local `s3:/...`)."""
    from vggbn.store.exports import report_dir
    from vggbn import uri as storage
    from vggbn.store.experiment import Experiment, ExperimentError
    from vggbn.plan.load import load_spec

    q = "endpoint_override=127.0.0.1:9000&scheme=http"
    spec = load_spec(SWEEPS / "smoke.yaml", {"storage": f"s3://bkt/a/b/?{q}"})
    assert spec.experiment_path() == f"s3://bkt/a/b/smoke?{q}"
    exp = Experiment(spec.experiment_path())
    assert (exp.uri, exp.storage, exp.name, exp.root) == (f"s3://bkt/a/b/smoke?{q}", f"s3://bkt/a/b?{q}",
                                                          "smoke", "bkt/a/b/smoke")
    assert exp.ray_storage() == ("bkt/a/b", exp.fs) and exp.ray_path() == ("bkt/a/b/smoke", exp.fs)
    assert exp.join("trial_x", "meta.json") == f"s3://bkt/a/b/smoke/trial_x/meta.json?{q}"
    assert type(exp.fs).__name__ == "S3FileSystem"
    assert storage.s3_client(exp.uri).meta.endpoint_url == "http://127.0.0.1:9000"  # the claim's put
    assert storage.parent_and_name("s3://bkt/smoke") == ("s3://bkt", "smoke")
    assert storage.normalize(f"gs://bkt/p/?{q}") == f"gs://bkt/p?{q}"  # gs:// takes the same path

    assert report_dir(exp.uri) == Path("reports") / "smoke"  # pathlib would make it s3:/bkt/...
    assert report_dir(str(tmp_path / "x")) == tmp_path / "x" / "report"
    assert report_dir(f"file://{tmp_path}/x") == tmp_path / "x" / "report"

    local = Experiment(str(tmp_path / "a?b" / "smoke"))  # a local path keeps its '?': no query there
    assert (local.storage, local.name, local.ray_storage()) == (str(tmp_path / "a?b"), "smoke",
                                                                (str(tmp_path / "a?b"), None))
    with pytest.raises(ExperimentError, match=r"(?s)s3://bkt/p/smoke\?bogus=1: .*'bogus'.*Fix: .*endpoint_override"):
        Experiment("s3://bkt/p/smoke?bogus=1")  # pyarrow's options only, said before anything starts


def test_export_and_report_read_a_bucket_through_aws_endpoint_url(s3, tmp_path, monkeypatch):
    """The other way to name an S3-compatible endpoint: AWS_ENDPOINT_URL and a plain s3:// URI.
    A finished experiment put in the bucket is exported and reported in place."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    upload(s3, OLD, "old/smoke")
    exp = f"s3://{s3.bucket}/old/smoke"
    r = vggbn("export", exp, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and "4 trials (4 completed)" in r.stdout, r.stderr[-3000:]
    assert {"trials.parquet", "epochs.parquet"} <= keys(s3, "old/smoke/")
    r = vggbn("report", exp, cwd=tmp_path, timeout=300)  # default: reports/<name>/ here
    assert r.returncode == 0, r.stderr[-3000:]
    md = (tmp_path / "reports" / "smoke" / "report.md").read_text()
    assert "4 trials: 4 completed" in md and exp in md
    assert (tmp_path / "reports" / "smoke" / "figures" / "learning_curves.png").stat().st_size > 10_000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("s3")]  # nothing like ./s3:/bucket


# ---------------------------------------------------------------------- errors for people
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bucket_errors_are_two_lines_with_the_fix(s3, tmp_path):
    """Each refusal: exit 2, no traceback, the URI and the fix; nothing written to the bucket."""
    import moto.settings

    upload(s3, OLD, "spec-only/smoke", only=("spec.yaml",))  # a sweep that never exported
    q = s3.query
    uri = {"no-bucket": f"s3://no-such-{s3.bucket}/sweeps/smoke?{q}",
           "no-prefix": f"s3://{s3.bucket}/nothing/smoke?{q}",
           "no-trials": f"s3://{s3.bucket}/spec-only/smoke?{q}",
           "unreachable": f"s3://{s3.bucket}/sweeps/smoke?endpoint_override=127.0.0.1:{closed_port()}&scheme=http",
           "denied": f"s3://{s3.bucket}/spec-only/smoke?{q}"}
    cases = {  # (command, case): what the message must say
        ("report", "no-bucket"): f"no bucket no-such-{s3.bucket}",
        ("landscape", "no-bucket"): f"no bucket no-such-{s3.bucket}",
        ("report", "no-prefix"): "nothing at this path",
        ("export", "no-prefix"): "nothing at this path",
        ("report", "no-trials"): "no trials.parquet here",
        ("landscape", "no-trials"): "no trials.parquet here",
        ("report", "unreachable"): "cannot reach the S3 endpoint",
        ("export", "unreachable"): "cannot reach the S3 endpoint",
    }
    before = keys(s3, "")

    def run(case):
        (command, which) = case
        extra = ["--resolution", "2", "--samples", "1"] if command == "landscape" else []
        return vggbn(command, uri[which], *extra, cwd=tmp_path, timeout=120)

    with ThreadPoolExecutor(4) as pool:
        got = dict(zip(cases, pool.map(run, cases)))
    for (command, which), r in got.items():
        assert_user_error(r, uri[which], cases[command, which])
    # wrong credentials: moto checks them once asked to (this process's moto settings, restored after)
    no_auth = moto.settings.INITIAL_NO_AUTH_ACTION_COUNT
    moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    try:
        denied = run(("report", "denied"))
    finally:
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = no_auth
    assert_user_error(denied, uri["denied"], "access denied", "AWS_ACCESS_KEY_ID")
    # no credentials at all: the sweep's claim (boto3) says so before Ray starts
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    r = subprocess.run([sys.executable, "-m", "vggbn", "sweep", str(SWEEPS / "smoke.yaml"), "--set",
                        f"storage=s3://{s3.bucket}/fresh?{q}"], capture_output=True, text=True, timeout=120,
                       env=env, cwd=tmp_path)
    assert_user_error(r, f"s3://{s3.bucket}/fresh/smoke?{q}", "no credentials")
    assert keys(s3, "") == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("s3")]


# ---------------------------------------------------------------------- the cluster
# conftest's `cluster`: the session's head; the workers a test adds after `s3` inherit its
# environment (credentials, no AWS_ENDPOINT_URL)
def staged(session: Path, name: str, skip: set[Path]) -> dict[str, list[dict]]:
    """trial id -> the results the driver recorded so far: result.json in the driver's staging
    directory under the Ray session (Ray uploads these to s3:// only now and then), but in the
    `skip` directories (earlier tests' sweeps on the session's cluster)."""
    out: dict[str, list[dict]] = {}
    for f in sorted(session.glob(f"artifacts/*/{name}/driver_artifacts/trial_*/result.json")):
        if f.parents[2] in skip:
            continue
        try:
            rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        except (OSError, json.JSONDecodeError):  # being written: read it on the next poll
            continue
        if rows:
            out.setdefault(f.parent.name.removeprefix("trial_"), []).extend(rows)
    return out


def test_s3_sweep_survives_a_lost_node_and_a_killed_driver_and_reports_from_the_bucket(s3, cluster, tmp_path):
    t_start = time.time()
    w1 = cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    session = Path(cluster.head_node.get_session_dir_path())
    earlier = set(session.glob("artifacts/*/smoke"))
    every, epochs = 2, 8  # epochs of about a second: time to see where trials run
    storage_uri = f"s3://{s3.bucket}/sweeps?{s3.query}"
    exp = f"s3://{s3.bucket}/sweeps/smoke?{s3.query}"
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}

    def seen():
        return {t: [(r["epoch"], r["node_id"][:6]) for r in rs] for t, rs in staged(session, "smoke", earlier).items()}

    log = tmp_path / "sweep.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vggbn", "sweep", str(SWEEPS / "smoke.yaml"),
                                 "--set", f"storage={storage_uri}", "--set", f"base.epochs={epochs}",
                                 "--set", f"checkpoint_every={every}", "--address", cluster.address],
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    try:
        def on_w1():  # a trial on the first worker, past its first checkpoint, not finished
            return next((t for t, rs in staged(session, "smoke", earlier).items()
                         if rs[-1]["node_id"] == w1.node_id and every < rs[-1]["epoch"] < epochs), None)

        a = wait_for(on_w1, "a trial on the first worker past a checkpoint", seen=seen)
        cluster.remove_node(w1, allow_graceful=False)  # a spot loss
        cluster.add_node(num_cpus=1)  # the autoscaler's replacement
        t_lost = time.time()
        wait_for(lambda: [r for r in staged(session, "smoke", earlier).get(a, []) if r["node_id"] != w1.node_id],
                 f"trial {a} running again on another node", seen=seen)
        proc.kill()  # the driver dies (SIGKILL): no export, no last upload
        proc.wait()
        t_kill = time.time()
        first = staged(session, "smoke", earlier)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "trials.parquet" not in keys(s3, "sweeps/smoke/"), log.read_text()[-3000:]

    # the killed driver's lease is fresh (its last heartbeat seconds ago): refused, naming it, until
    # it goes stale or the user, who knows that driver is dead, takes it over
    r = vggbn_main("resume", exp, cwd=tmp_path)
    assert r.returncode == 2 and f"pid {proc.pid}" in r.stderr and "--take-over" in r.stderr, r.stderr[-2000:]
    r = vggbn("resume", exp, "--take-over", "--address", cluster.address, env={"TUNE_GLOBAL_CHECKPOINT_S": "1"},
              cwd=tmp_path, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "4 trials (4 completed)" in r.stdout, r.stdout[-3000:]
    t_resumed = time.time()

    # straight from the bucket (the resume's export is there): report (--out), landscape (its figures to
    # reports/<name>/); `vggbn export` and `report` as processes on a bucket: the test above
    r = vggbn_main("report", exp, "--out", tmp_path / "report", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = vggbn("landscape", exp, "--resolution", "3", "--samples", "32", "--address", cluster.address,
              cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "surfaces of 4 trials" in r.stdout and f"sweeps/smoke/surfaces.parquet?{s3.query}" in r.stdout
    stored = keys(s3, "sweeps/smoke/")
    assert {"trials.parquet", "epochs.parquet", "steps.parquet", "probes.parquet", "surfaces.parquet",
            "spec.yaml"} <= stored
    md = (tmp_path / "report" / "report.md").read_text()
    assert "4 trials: 4 completed" in md and "None: every trial completed." in md
    for f in ("accuracy.png", "learning_curves.png", "santurkar_fig4.png"):
        assert (tmp_path / "report" / "figures" / f).stat().st_size > 10_000, f
    for f in ("landscape_1d.png", "landscape_2d.png"):
        assert (tmp_path / "reports" / "smoke" / "figures" / f).stat().st_size > 10_000, f
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("s3")]  # nothing like ./s3:/bucket

    # nothing lost: read back from the bucket in place
    from analysis.results import load

    res = load(exp)
    t, e = res.trials.set_index("trial_id"), res.epochs
    assert len(t) == 4 and set(t["status"]) == {"completed"}, t[["status", "failures"]]
    assert not e.duplicated(["trial_id", "epoch"]).any()
    for tid, g in e.groupby("trial_id"):
        assert sorted(g["epoch"]) == list(range(1, epochs + 1)), tid
    assert set(e["node_id"].dropna()) and cluster.head_node.node_id not in set(e["node_id"])
    assert t.loc[a, "failures"] >= 1 and res.surfaces is not None and res.surfaces["trial_id"].nunique() == 4
    # the lost trial continued from its last checkpoint: at most checkpoint_every epochs again
    rows = first[a]
    old = [r for r in rows if r["node_id"] == w1.node_id]
    again = [r for r in rows if r["node_id"] != w1.node_id]
    restored = again[0]["epoch"] - 1
    assert restored >= every and restored % every == 0, (a, seen())  # a checkpoint, not from scratch
    redone_node = old[-1]["epoch"] - restored
    assert 0 <= redone_node <= every, (a, seen())
    assert w1.node_id not in set(e.loc[(e["trial_id"] == a) & (e["epoch"] > restored), "node_id"])
    # the driver's kill: epochs trained again after the resume (Ray's experiment state, uploaded
    # every TUNE_GLOBAL_CHECKPOINT_S, may name a checkpoint older than the newest in the bucket)
    after = {tid: {r["epoch"] for r in rs if r["timestamp"] > t_kill}
             for tid, rs in staged(session, "smoke", earlier).items()}
    redone_kill = {tid: sorted(ep & {r["epoch"] for r in first.get(tid, [])}) for tid, ep in after.items()}
    print(f"\nS3 cluster figures: {len(t)} of 4 trials completed, {len(e)} epoch rows, no duplicates; node loss: "
          f"trial {a} lost at epoch {old[-1]['epoch']} on the removed worker, resumed from its checkpoint at "
          f"epoch {restored}: {redone_node} epoch(s) redone (checkpoint_every={every}); driver SIGKILL: epochs "
          f"redone after the resume {redone_kill} ({sum(map(len, redone_kill.values()))} in all); failures "
          f"{t['failures'].to_dict()}; times: node lost at {t_lost - t_start:.0f} s, driver killed at "
          f"{t_kill - t_start:.0f} s, resumed sweep done at {t_resumed - t_start:.0f} s, report + "
          f"landscape from the bucket done at {time.time() - t_start:.0f} s")
