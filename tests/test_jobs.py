"""The documented job flow, for real: a `ray start --head --block` with token authentication on
127.0.0.1, `ray job submit` of the smoke sweep with the token (all 4 trials complete), and without it
or with a wrong one (refused: AuthenticationError, and no job is created).

The head runs in a temporary directory and its own process session, and is stopped by that
session's process group: never `ray stop`, which ends every Ray process on the machine.
`ray job submit` needs `ray[default]` (the dashboard's aiohttp & co., in the dev extras).
"""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO

pytestmark = [pytest.mark.timeout(300), pytest.mark.ray]  # a real `ray start --head`
BIN = Path(sys.executable).parent  # the `ray` and `vggbn` commands of this environment


def _dashboard_deps_missing() -> str | None:
    try:
        import ray.dashboard.optional_deps  # noqa: F401  (Ray's own check of ray[default])
    except ImportError as e:
        return f"`ray job submit` needs ray[default] ({e}): pip install 'ray[default]>=2.60,<2.61'"
    return None


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:  # all bound at once: n different ports
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _session_pids(sid: int) -> list[int]:
    """Processes of the head's session (they may have changed process group, not session)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(d.name))
    return pids


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the head's process group, then SIGKILL whatever of its session is left (Ray 2.60's
    `ray start --block` does not exit on SIGTERM within 30 s here)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        pass
    for _ in range(3):
        left = _session_pids(proc.pid)
        if not left:
            break
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    if proc.poll() is None:
        proc.wait(timeout=10)


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a head on 127.0.0.1: no proxy


def _get(url: str, token: str | None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with _DIRECT.open(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture
def token_head(tmp_path):
    """A real Ray head with token auth; yields (dashboard URL, token, client env without auth)."""
    why = _dashboard_deps_missing()
    if why:
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="vggbn-head-", dir="/tmp"))  # short: Ray's socket paths
    token = secrets.token_hex(32)
    gcs, dash, client, agent, agent_grpc, env_agent, metrics = _free_ports(7)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    base.update(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0")
    (root / "home-head").mkdir()
    (root / "home-client").mkdir()  # no ~/.ray/auth_token there
    head_env = {**base, "HOME": str(root / "home-head"), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    log = open(root / "head.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
         "--include-dashboard", "true", "--ray-client-server-port", str(client),
         "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
         "--runtime-env-agent-port", str(env_agent), "--metrics-export-port", str(metrics),
         "--num-cpus", "4", "--temp-dir", str(root / "ray"), "--disable-usage-stats"],
        env=head_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 90
        last = None
        while True:  # ready when the job API answers an authenticated request
            try:
                last = _get(f"{url}/api/jobs/", token)
                if last[0] == 200:
                    break
            except OSError as e:
                last = e
            assert proc.poll() is None, f"ray start exited {proc.returncode}: {(root / 'head.log').read_text()[-3000:]}"
            dash = next(root.glob("ray/session_*/logs/dashboard.log"), None)
            assert time.time() < deadline, (f"no job API at {url} (last answer: {last!r}): "
                                            f"{(root / 'head.log').read_text()[-1500:]}\ndashboard.log: "
                                            f"{dash.read_text()[-3000:] if dash else 'none'}")
            time.sleep(0.2)
        yield url, token, {**base, "HOME": str(root / "home-client")}
    finally:
        _stop(proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _submit(url: str, env: dict, storage: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", url, "--working-dir", str(REPO), "--",
         "vggbn", "sweep", "sweeps/smoke.yaml", "--set", f"storage={storage}"],
        env=env, capture_output=True, text=True, timeout=240)


def test_job_submit_needs_the_token(tmp_path, token_head):
    url, token, client_env = token_head

    r = _submit(url, {**client_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}, tmp_path)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "4 trials (4 completed)" in r.stdout, r.stdout[-3000:]
    t = pd.read_parquet(tmp_path / "smoke" / "trials.parquet")
    assert len(t) == 4 and set(t["status"]) == {"completed"}, t[["status", "error"]]

    no_token = _submit(url, client_env, tmp_path / "refused")
    assert no_token.returncode != 0
    assert "AuthenticationError: Authentication required" in no_token.stderr, no_token.stderr[-2000:]
    wrong = _submit(url, {**client_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)},
                    tmp_path / "refused")
    assert wrong.returncode != 0
    assert "AuthenticationError: Authentication failed" in wrong.stderr, wrong.stderr[-2000:]
    assert not (tmp_path / "refused").exists()

    assert _get(f"{url}/api/jobs/", None)[0] == 401  # the API itself, not only the CLI, refuses
    status, body = _get(f"{url}/api/jobs/", token)
    jobs = json.loads(body)
    assert status == 200 and [j["status"] for j in jobs] == ["SUCCEEDED"]  # the refused ones never ran
