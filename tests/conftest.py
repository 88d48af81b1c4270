import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

FMNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
REPO = Path(__file__).resolve().parent.parent
SWEEPS = REPO / "sweeps"
DATA = Path(__file__).resolve().parent / "data"
# fixtures that start Ray or stand on an experiment a Ray sweep made: their tests are marked `ray`
# (make test-fast leaves them out); a test that starts a `vggbn sweep` of its own says @pytest.mark.ray
RAY_FIXTURES = {"smoke_run", "ray_cluster", "cluster", "ray_address", "ray_local"}
RAY_COMMANDS = {"sweep", "resume", "extend", "landscape"}  # the commands that start or join a Ray


_RUN: dict = {}


def pytest_sessionstart(session):
    _RUN["session"] = session


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _RUN["item"] = item  # before its fixtures: a module fixture's commands count for this test


def pytest_collection_modifyitems(items):
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)
    # The modules with the most Ray runs of their own (the longest) first: `make test`'s xdist
    # workers take a module each as they come free, so a long one started last would leave the
    # other worker idle. Reading the shared smoke_run is not a run of one's own.
    runs: dict[str, int] = {}
    for item in items:
        own = bool(item.get_closest_marker("ray")) and "smoke_run" not in getattr(item, "fixturenames", ())
        runs[item.module.__name__] = runs.get(item.module.__name__, 0) + own
    items.sort(key=lambda item: -runs[item.module.__name__])  # stable: each module's own order kept


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the test process as the vggbn command ends (vggbn.cli.exit_without_teardown), after
    pytest has written everything. Ray still lives in this process in a `make test` run: the
    session's cluster (ray_cluster: its nodes' Python objects and their gRPC clients) and the
    in-process sweeps of test_sweep_run.py (ray_local connects this process as a driver). A native
    thread of theirs (gRPC, or pyarrow's pools) has segfaulted the interpreter's teardown after
    every test had passed (dmesg: a thread jumping into freed heap), so make failed a passed run.
    When no Ray started here (make test-fast) Python's own exit runs; VGGBN_TEST_PLAIN_EXIT=1 keeps
    it always, to look for that thread."""
    session = _RUN.get("session")
    if session is not None and _RUN.get("ray_started") and not os.environ.get("VGGBN_TEST_PLAIN_EXIT"):
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
    r = subprocess.run([sys.executable, "-m", "vggbn", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd, **kw)
    argv = [str(a) for a in args]
    item = _RUN.get("item")
    if (r.returncode == 0 and argv and argv[0] in RAY_COMMANDS and "--dry-run" not in argv and item is not None
            and item.get_closest_marker("ray") is None):  # make test-fast would run this Ray
        raise AssertionError(f"`vggbn {' '.join(argv)}` ran Ray: mark {item.nodeid} @pytest.mark.ray")
    return r


@contextlib.contextmanager
def environ(env: dict | None):
    """os.environ with `env` on top (a value None: unset) for the block, as it was after."""
    saved = dict(os.environ)
    for k, v in (env or {}).items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = str(v)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _captured_fd(fd: int):
    """What is written to file descriptor `fd` (native code, a child process) in the block."""
    with tempfile.TemporaryFile(mode="w+b") as f:
        saved = os.dup(fd)
        os.dup2(f.fileno(), fd)
        out = SimpleNamespace(text="")
        try:
            yield out
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            f.seek(0)
            out.text = f.read().decode(errors="replace")


def vggbn_main(*args, env=None, cwd=None, **_) -> subprocess.CompletedProcess:
    """`vggbn ARGS` in this process, through vggbn.cli.main(argv): its exit code, stdout and stderr
    as `vggbn` gives them (an exception main() lets through is its traceback and exit 1, as the
    interpreter would print it), without a new interpreter importing torch and pandas again.
    For error paths; each command's real process (the entry point, its exit code, no traceback,
    nothing else on stderr) keeps a test that runs `vggbn` itself. The timeout of `vggbn()` is
    not needed: nothing here waits on a process."""
    from vggbn.cli import main

    argv = [str(a) for a in args]
    ray_before = _ray_initialized()
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch else None  # `vggbn train` sets them for its process
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    sys.stdout.flush()
    sys.stderr.flush()
    with environ(env), _captured_fd(1) as fd1, _captured_fd(2) as fd2:
        try:
            if cwd is not None:
                os.chdir(cwd)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = main(argv)
                except SystemExit as e:  # argparse's own errors (exit 2) and --help
                    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                except Exception:  # noqa: BLE001  (what the interpreter prints for an uncaught one)
                    sys.stderr.write(traceback.format_exc())
                    code = 1
        finally:
            for stream in (sys.__stdout__, sys.__stderr__):  # into the captured descriptors
                stream.flush()
            os.chdir(here)
            if threads is not None:
                torch.set_num_threads(threads)
            # urlopen builds its global opener once, with the proxies of that moment: a command
            # run here with a test's http_proxy would leave every later urlopen going through it
            urllib.request.install_opener(None)
    if _ray_initialized() and not ray_before:  # it would stay in this process for every later test
        import ray

        ray.shutdown()
        raise AssertionError(f"vggbn {' '.join(argv)} started Ray in the test process: run it with vggbn()")
    return subprocess.CompletedProcess(["vggbn", *argv], int(code or 0), out.getvalue() + fd1.text,
                                       err.getvalue() + fd2.text)


def _ray_initialized() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray and getattr(ray, "is_initialized", lambda: False)())


# ---------------------------------------------------------------------- Ray: one cluster for the session
# A 0-CPU head (as cluster.yaml's) started once; each test adds the worker nodes it needs and the
# fixtures remove them after it. A node inherits the environment of this process when it is added
# (the test's cache dirs, credentials), as a local Ray inherits its driver's. The head checks its
# nodes' health every 0.5 s: a node a test killed is seen dead in seconds (Ray's default, 3 s x 5
# checks, would leave the next test a dead node that looks alive, or a 16 s wait for it).
RAY_HEAD = {"num_cpus": 0, "include_dashboard": False,
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4}}
RAY_CPUS = 2  # a worker for a test that needs *a* Ray: the 2 CPUs of the suite's machine, as a local Ray has


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """The session's Ray cluster (ray.cluster_utils.Cluster): only its head, until a test adds workers."""
    from ray.cluster_utils import Cluster

    root = tmp_path_factory.mktemp("ray-head")
    _RUN["ray_started"] = True
    with environ({"VGGBN_CACHE_DIR": root / "cache", "VGGBN_DATA_DIR": root / "datasets"}):
        c = Cluster(initialize_head=True, head_node_args=RAY_HEAD)  # no test's environment
    yield c
    c.shutdown()


def _remove_workers(c) -> None:
    """Every worker node gone, and the cluster's head knowing it (also those a test killed)."""
    for node in list(c.worker_nodes):
        c.remove_node(node)  # graceful: the node says goodbye, its head knows at once
    c.wait_for_nodes()


@pytest.fixture
def cluster(ray_cluster):
    """The session's cluster for a test that adds, kills and replaces its own worker nodes
    (add_node, remove_node): a node it adds runs in this test's environment. They are removed after it."""
    _remove_workers(ray_cluster)
    yield ray_cluster
    _remove_workers(ray_cluster)


@contextlib.contextmanager
def ray_worker(ray_cluster, env: dict | None = None, num_cpus: int = RAY_CPUS):
    """A worker node with `num_cpus` on the session's cluster for the block (in this process's
    environment with `env` on top: what its trials see); yields the cluster's address."""
    with environ(env):
        node = ray_cluster.add_node(num_cpus=num_cpus)
    try:
        ray_cluster.wait_for_nodes()
        yield ray_cluster.address
    finally:
        if node in ray_cluster.worker_nodes:
            ray_cluster.remove_node(node)
        ray_cluster.wait_for_nodes()


@pytest.fixture
def ray_address(cluster):
    """*A* Ray for a test that needs one and nothing special of it: a RAY_CPUS worker on the
    session's cluster, in this test's environment. `vggbn sweep --address` it instead of starting
    a local Ray (seconds each, for every command)."""
    with ray_worker(cluster) as address:
        yield address


@pytest.fixture
def ray_local(ray_address):
    """This process as a Ray driver of the session's cluster (for run_sweep in-process: the runner
    joins the Ray already initialised), disconnected after the test."""
    import ray

    ray.init(address=ray_address, logging_level="ERROR", log_to_driver=False)
    try:
        yield ray_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """sweeps/smoke.yaml run once per test run with `vggbn sweep` (4 trials on a local Ray), shared
    by the run's pytest-xdist workers (the first to need it runs it under a file lock; the others
    read what it left). Tests read it; a test that changes files works on `smoke_copy`."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's directory, above each worker's own
    root, done = base / "smoke-run", base / "smoke-run.json"
    with FileLock(str(base / "smoke-run.lock")):
        if not done.is_file():
            root.mkdir()
            env = {"VGGBN_CACHE_DIR": str(root / "cache"), "VGGBN_DATA_DIR": str(root / "datasets")}
            r = vggbn("sweep", SWEEPS / "smoke.yaml", "--set", f"storage={root}", env=env)
            done.write_text(json.dumps({"args": r.args, "returncode": r.returncode, "stdout": r.stdout,
                                        "stderr": r.stderr}))
        r = subprocess.CompletedProcess(**json.loads(done.read_text()))
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


# ---------------------------------------------------------------------- object storage
@pytest.fixture
def s3(tmp_path, monkeypatch):
    """moto's S3 server on 127.0.0.1 with a fresh bucket; credentials from the environment, no
    AWS config files, no AWS_ENDPOINT_URL (a test that wants it sets it)."""
    moto_server = pytest.importorskip("moto.server")
    import logging
    import uuid

    import boto3

    monkeypatch.setattr(logging.getLogger("werkzeug"), "level", logging.ERROR)  # no line per request
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                 "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
                 "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials")}.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "RAY_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint)
    bucket = f"vggbn-{uuid.uuid4().hex[:10]}"  # moto's state lives as long as this process
    client.create_bucket(Bucket=bucket)
    try:
        yield SimpleNamespace(endpoint=endpoint, client=client, bucket=bucket,
                              query=f"endpoint_override={host}:{port}&scheme=http")
    finally:
        server.stop()
