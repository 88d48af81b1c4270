import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FMNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
REPO = Path(__file__).resolve().parent.parent
SWEEPS = REPO / "sweeps"
DATA = Path(__file__).resolve().parent / "data"


_RUN: dict = {}


def pytest_sessionstart(session):
    _RUN["session"] = session


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the test process as the vggbn command ends (vggbn.cli.exit_without_teardown), after
    pytest has written everything. The suite runs Ray (ray.init, Cluster), gRPC and pyarrow in this
    process; in one CI run (2026-11-28, after "516 passed") a native thread they left behind
    segfaulted the interpreter's teardown (dmesg: a thread jumping into freed heap), so make failed
    a passed run. VGGBN_TEST_PLAIN_EXIT=1 keeps Python's own exit, to look for that thread."""
    session = _RUN.get("session")
    if session is not None and not os.environ.get("VGGBN_TEST_PLAIN_EXIT"):
        from vggbn.cli import exit_without_teardown

        exit_without_teardown(int(session.exitstatus))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own tensor cache and default data dir: no test sees another's files."""
    root = tmp_path_factory.mktemp("vggbn-cache")
    monkeypatch.setenv("VGGBN_CACHE_DIR", str(root / "tensors"))
    monkeypatch.setenv("VGGBN_DATA_DIR", str(root / "datasets"))


@pytest.fixture
def fmnist_dir():
    """The Debian package dataset-fashion-mnist's four archive files (.ci/run installs it)."""
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    if not all((FMNIST_DEBIAN / n).is_file() for n in names):
        if os.environ.get("CI"):
            pytest.fail("CI must have the Debian package dataset-fashion-mnist (see .ci/run)")
        pytest.skip("apt-get install dataset-fashion-mnist to run the real-data tests")
    return FMNIST_DEBIAN


def tiny(**kw):
    """A seconds-fast trial on synthetic data, with the study's recipe (Adam, constant lr, fp32)."""
    base = dict(recipe="seed", dataset="synthetic", synthetic_size=512, width=0.0625, batch_size=64, epochs=2,
                device="cpu", cpu_threads=1)
    base.update(kw)
    return base


def vggbn(*args, env=None, timeout=540, cwd=None, **kw) -> subprocess.CompletedProcess:
    """The `vggbn` command, as a user runs it (in a fresh process; never in the repository)."""
    return subprocess.run([sys.executable, "-m", "vggbn", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd, **kw)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """sweeps/smoke.yaml run once per test session with `vggbn sweep` (4 trials on a local Ray).
    Tests read it; a test that changes files works on `smoke_copy`."""
    root = tmp_path_factory.mktemp("smoke")
    env = {"VGGBN_CACHE_DIR": str(root / "cache"), "VGGBN_DATA_DIR": str(root / "datasets")}
    r = vggbn("sweep", SWEEPS / "smoke.yaml", "--set", f"storage={root}", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "smoke", r


@pytest.fixture
def smoke_copy(smoke_run, tmp_path) -> Path:
    dst = tmp_path / "smoke"
    shutil.copytree(smoke_run[0], dst)
    return dst


def wait_for(cond, what: str, *, proc=None, seen=None, timeout: float = 240):
    """Poll (files, a state) until cond() holds and return what it gave; fail at once if `proc`
    (a Popen) ended first, and say what was `seen()` on a timeout."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the command ended before {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f": {seen()}" if seen else ""))
