"""Bad input of every kind through the `vggbn` command: exit code 2, a message of one or two
lines on stderr that names the file or option and says how to fix it, no traceback, nothing lost.
Each command runs one case as the real `vggbn` process (the entry point: its exit code, nothing
else on stderr) and the others in this process through vggbn.cli.main (conftest.vggbn_main).

Each case damages a copy (a sweep file in tmp_path, a copy of the smoke sweep's directory, a dataset
cache) and compares what is on disk before and after the failed command. No case starts Ray: the
storage URIs fail before it starts, and `resume` is only given directories it must refuse.
"""

import hashlib
import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import SWEEPS, vggbn, vggbn_main
from test_data import fake_fmnist

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10" + bytes(range(256))
NOISE = random.Random(0).randbytes(4096)
SMOKE = (SWEEPS / "smoke.yaml").read_text()


def assert_user_error(r, *names: object) -> None:
    """Exit 2, no traceback, at most 3 non-empty lines, every name in them, and a Fix."""
    err = r.stderr
    assert r.returncode == 2, f"exit {r.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert 1 <= len(lines) <= 3, err[-3000:]
    for name in names:
        assert str(name) in err, (str(name), err)
    assert "Fix:" in err, err


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root (root itself included), files by the hash of their bytes."""
    if not root.exists():
        return {}
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in paths}


def assert_unchanged(root: Path, before: dict[str, str]) -> None:
    after = snapshot(root)
    diff = {"added": sorted(after.keys() - before.keys()), "removed": sorted(before.keys() - after.keys()),
            "changed": sorted(k for k in before.keys() & after.keys() if before[k] != after[k])}
    assert not any(diff.values()), f"{root} changed by a failed command: {diff}"


# ---------------------------------------------------------------------- sweep files and --set
def _smoke(name: str) -> str:
    return SMOKE.replace("\nname: smoke\n", f"\nname: {name}\n")


FILE = object()  # stands for the sweep file's path in the names a message must hold
SWEEP_FILES = {  # id: (the file's content (None: a directory; "missing": none), args, names)
    "png": (PNG, ["--dry-run"], [FILE]),
    "random-bytes": (NOISE, ["--dry-run"], [FILE]),
    "directory": (None, ["--dry-run"], [FILE]),
    "empty": (b"", ["--dry-run"], [FILE]),
    "missing": ("missing", ["--dry-run"], [FILE]),
    "yaml-list": ("- name: smoke\n- metric: test_acc\n", ["--dry-run"], [FILE]),
    "bad-yaml": ("name: [smoke\nbase: {epochs: 3\n", ["--dry-run"], [FILE, "not valid YAML"]),
    "name-dotdot": (_smoke(name='".."'), ["--dry-run"], [FILE, "name"]),
    "name-hidden": (_smoke(name=".hidden"), ["--dry-run"], [FILE, "name"]),
    "name-slash": (_smoke(name="a/b"), ["--dry-run"], [FILE, "name"]),
    "num-samples-1e9": (SMOKE + "num_samples: 1000000000\n", ["--dry-run"], [FILE, "num_samples"]),
    # no --dry-run: these must fail before Ray starts (and create nothing, e.g. no local "s3:/")
    "storage-ftp": (SMOKE, ["--set", "storage=ftp://x/y"], [FILE, "--set storage", "ftp://"]),
    "storage-s3-no-bucket": (SMOKE, ["--set", "storage=s3://"], [FILE, "--set storage", "s3://"]),
    "storage-gs-no-bucket": (SMOKE, ["--set", "storage=gs:///path"], [FILE, "--set storage", "gs://"]),
    "storage-file-no-path": (SMOKE, ["--set", "storage=file://"], [FILE, "--set storage", "file://"]),
    # scheme-like local paths: a typo of a URI, never a directory named "s3:" or a host named "results"
    "storage-s3-one-slash": (SMOKE, ["--set", "storage=s3:/my-bucket/vggbn"],
                             ["--set storage", "did you mean s3://my-bucket/vggbn?"]),
    "storage-s3-no-slash": (SMOKE, ["--set", "storage=s3:my-bucket"], ["--set storage", "did you mean s3://my-bucket?"]),
    "storage-s3-colon-only": (SMOKE, ["--set", "storage=s3:"], ["--set storage", "valid string"]),  # YAML: {s3: null}
    "storage-file-one-slash": (SMOKE, ["--set", "storage=file:/tmp/x"], ["--set storage", "did you mean file:///tmp/x?"]),
    "storage-file-host": (SMOKE, ["--set", "storage=file://results/x"], ["--set storage", "names the host 'results'",
                                                                          "file:///ABSOLUTE/PATH"]),
    "storage-s3-dotdot": (SMOKE, ["--set", "storage=s3://bkt/../other"], ["--set storage", "'..' in an object key"]),
    "storage-gs-dot": (SMOKE, ["--set", "storage=gs://bkt/a/./b"], ["--set storage", "'.' and '..'"]),
    "set-not-key-value": (SMOKE, ["--set", "epochs", "--dry-run"], ["--set", "epochs"]),
    "set-empty-key": (SMOKE, ["--set", "=3", "--dry-run"], ["--set"]),
    "set-into-scalar": (SMOKE, ["--set", "name.x=1", "--dry-run"], ["--set name.x"]),
    "set-into-scalar-deep": (SMOKE, ["--set", "base.epochs.x=1", "--dry-run"], ["--set base.epochs.x"]),
    "set-bad-value": (SMOKE, ["--set", "num_samples=0", "--dry-run"], [FILE, "num_samples", "--set"]),
    "set-unknown-base-key": (SMOKE, ["--set", "base.nonexistent=1", "--dry-run"],
                             ["unknown key 'nonexistent'", "change --set base.nonexistent"]),
}


REAL = {"storage-ftp"}  # through the real process: no --dry-run, it must fail before Ray starts


@pytest.mark.timeout(60)  # a hang (the 1e9 grid) fails
@pytest.mark.parametrize("case", list(SWEEP_FILES))
def test_bad_sweep_file_or_option(tmp_path, case):
    content, extra, names = SWEEP_FILES[case]
    path = tmp_path / "sweep.yaml"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content != "missing":
        path.write_text(content)
    work = tmp_path / "cwd"  # relative storage and a broken URI would land here
    work.mkdir()
    before = snapshot(tmp_path)
    run = vggbn if case in REAL else vggbn_main
    r = run("sweep", path, *extra, cwd=work, timeout=60)
    assert_user_error(r, *(path if n is FILE else n for n in names))
    assert_unchanged(tmp_path, before)  # nothing written, nothing removed


# ---------------------------------------------------------------------- results directories
def _delete(d: Path) -> Path:
    shutil.rmtree(d)
    return d


def _empty(d: Path) -> Path:
    shutil.rmtree(d)
    d.mkdir()
    return d


def _write(name: str, data):
    def damage(d: Path) -> Path:
        if isinstance(data, bytes):
            (d / name).write_bytes(data)
        else:
            data.to_parquet(d / name)
        return d / name
    return damage


DAMAGES = {  # id: damage(dir) -> the path the message must name
    "missing": _delete,
    "empty": _empty,
    "trials-0-bytes": _write("trials.parquet", b""),
    "trials-garbage": _write("trials.parquet", PNG),
    "trials-wrong-columns": _write("trials.parquet", pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})),
    "epochs-0-bytes": _write("epochs.parquet", b""),
    "surfaces-garbage": _write("surfaces.parquet", NOISE),  # `vggbn landscape`'s output
    "spec-0-bytes": _write("spec.yaml", b""),
    "spec-binary": _write("spec.yaml", PNG),
    "spec-not-a-mapping": _write("spec.yaml", b"- name: smoke\n- metric: test_acc\n"),
    "file-not-dir": lambda d: d / "trials.parquet",
}
PARQUET = ["trials-0-bytes", "trials-garbage", "trials-wrong-columns", "epochs-0-bytes"]
SPEC = ["spec-0-bytes", "spec-binary", "spec-not-a-mapping"]
WHERE = ["missing", "empty", "file-not-dir"]
# what each command must refuse: `report` reads the export (not spec.yaml); `export` and `resume`
# rewrite the export from Ray's files, so a damaged parquet is theirs to replace (test below)
COMMANDS = {"report": WHERE + PARQUET + ["surfaces-garbage"], "export": WHERE + SPEC, "resume": WHERE + SPEC,
            "landscape": WHERE + PARQUET + SPEC}
RESULTS_CASES = [(cmd, dmg) for cmd, damages in COMMANDS.items() for dmg in damages]


@pytest.fixture(scope="module")
def results_runs(request, smoke_run, tmp_path_factory):
    """The selected (command, damage) cases, each on its own damaged copy of the smoke sweep: the
    first case of each command as the real process (3 at a time: each spends its seconds importing
    torch and pandas), the others in this process, one after another."""
    selected = [tuple(item.callspec.params.values()) for item in request.session.items
                if item.originalname == "test_bad_results_directory"]
    dirs = {case: tmp_path_factory.mktemp("-".join(case)) / "smoke" for case in selected}
    caches = tmp_path_factory.mktemp("vggbn-cache")  # module scope: the autouse one is not set yet
    env = {"VGGBN_CACHE_DIR": str(caches / "tensors"), "VGGBN_DATA_DIR": str(caches / "datasets")}

    def run(case):
        command, damage = case
        d = dirs[case]
        try:
            shutil.copytree(smoke_run[0], d)
            named = DAMAGES[damage](d)
            before = snapshot(d)
            extra = ["--resolution", "2", "--samples", "1"] if command == "landscape" else []  # if it runs
            real = damage == COMMANDS[command][0]
            r = (vggbn if real else vggbn_main)(command, named if damage == "file-not-dir" else d, *extra,
                                               env=env, timeout=120)
            return d, named, before, r
        except Exception as e:  # noqa: BLE001  (a timeout, say: that case's test raises it)
            return e

    real = [case for case in selected if case[1] == COMMANDS[case[0]][0]]
    with ThreadPoolExecutor(3) as pool:
        done = dict(zip(real, pool.map(run, real)))
    return {case: done[case] if case in done else run(case) for case in selected}


@pytest.mark.parametrize("command,damage", RESULTS_CASES, ids=[f"{c}-{d}" for c, d in RESULTS_CASES])
def test_bad_results_directory(results_runs, command, damage):
    if isinstance(results_runs[command, damage], Exception):
        raise results_runs[command, damage]
    d, named, before, r = results_runs[command, damage]
    assert_user_error(r, named)
    assert_unchanged(d, before)  # nothing written, nothing removed (the damaged file too)


def test_export_rewrites_a_damaged_export(smoke_copy):
    """What the messages above say to do: `vggbn export DIR` replaces damaged parquet files."""
    (smoke_copy / "trials.parquet").write_bytes(PNG)
    (smoke_copy / "epochs.parquet").write_bytes(b"")
    keep = {k: v for k, v in snapshot(smoke_copy).items() if not k.endswith(".parquet")}
    r = vggbn_main("export", smoke_copy)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {k: v for k, v in snapshot(smoke_copy).items() if not k.endswith(".parquet")} == keep
    from analysis.results import load

    res = load(smoke_copy)
    assert len(res.trials) == 4 and (res.trials["status"] == "completed").all()
    assert len(res.epochs) == 12


@pytest.mark.parametrize("option,value", [("--resolution", 0), ("--resolution", 1), ("--samples", 0)])
def test_landscape_bad_grid(smoke_copy, option, value):
    before = snapshot(smoke_copy)
    assert_user_error(vggbn_main("landscape", smoke_copy, option, value), f"{option} {value}")
    assert_unchanged(smoke_copy, before)


@pytest.mark.parametrize("kind", ["missing", "binary", "no-columns", "not-numbers", "directory"])
def test_report_bad_reference(smoke_copy, tmp_path, kind):
    ref = tmp_path / "ref.csv"
    if kind == "binary":
        ref.write_bytes(PNG + NOISE)
    elif kind == "no-columns":
        ref.write_text("name,accuracy\nvgg_a,75.0\n")
    elif kind == "not-numbers":
        ref.write_text("preset,reference_test_acc\nvgg_a,high\n")
    elif kind == "directory":
        ref.mkdir()
    before, ref_before = snapshot(smoke_copy), snapshot(ref)
    run = vggbn if kind == "missing" else vggbn_main  # one through the real process
    r = run("report", smoke_copy, "--reference", ref, timeout=120)
    assert_user_error(r, ref)
    assert_unchanged(smoke_copy, before)
    assert_unchanged(ref, ref_before)


# ---------------------------------------------------------------------- train
def test_train_out_is_a_file(tmp_path):
    out = tmp_path / "run"
    out.write_text("my notes\n")
    r = vggbn("train", "--set", "dataset=synthetic", "--set", "synthetic_size=64", "--set", "epochs=1",
              "--set", "width=0.0625", "--out", out, "--quiet", cwd=tmp_path, timeout=120)  # the real one
    assert_user_error(r, "--out", out)
    assert out.read_text() == "my notes\n"


def test_train_data_dir_cannot_be_created(tmp_path):
    r = vggbn_main("train", "--set", "dataset=fashion_mnist", "--set", "data_dir=/proc/xyz", "--quiet",
                   cwd=tmp_path)
    assert_user_error(r, "/proc/xyz", "data_dir")


# ---------------------------------------------------------------------- dataset files and cache
FMNIST_TRAIN = ["--set", "dataset=fashion_mnist", "--set", "epochs=1", "--set", "width=0.0625",
                "--set", "recipe=seed", "--set", "batch_size=32", "--set", "device=cpu", "--quiet"]


@pytest.mark.parametrize("damage", [b"", NOISE], ids=["0-bytes", "noise"])
def test_damaged_tensor_cache_is_rebuilt(tmp_path, damage):
    """A truncated or overwritten decoded cache is decoded again under its lock: the user wanted the
    dataset, and the official files it came from are still there."""
    from vggbn.data import _read_cache, prepare

    d = fake_fmnist(tmp_path / "fm")
    path, built = prepare("fashion_mnist", str(d))  # the same $VGGBN_CACHE_DIR as the command's
    assert built
    good = torch.load(path, weights_only=True)
    path.write_bytes(damage)
    r = vggbn_main("train", *FMNIST_TRAIN, "--set", f"data_dir={d}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "test_acc=" in r.stdout
    again = _read_cache(path)
    assert again is not None and all(torch.equal(again[k], good[k]) for k in good)
    assert "replaced a damaged cache" in (path.parent / "prepare.log").read_text()


def test_damaged_cache_and_damaged_archive(tmp_path):
    """Nothing to rebuild from: exit 2 naming the cache and the archive; the cache is not deleted."""
    from vggbn.data import prepare

    d = fake_fmnist(tmp_path / "fm")
    path, _ = prepare("fashion_mnist", str(d))
    path.write_bytes(NOISE)
    archive = d / "train-images-idx3-ubyte.gz"
    archive.write_bytes(NOISE)
    r = vggbn_main("train", *FMNIST_TRAIN, "--set", f"data_dir={d}", cwd=tmp_path)
    assert_user_error(r, path, archive)
    assert path.read_bytes() == NOISE and archive.read_bytes() == NOISE


def test_corrupt_dataset_archive(tmp_path):
    d = fake_fmnist(tmp_path / "fm")
    archive = d / "t10k-labels-idx1-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:20])  # truncated download
    before = snapshot(d)
    r = vggbn_main("train", *FMNIST_TRAIN, "--set", f"data_dir={d}", cwd=tmp_path)
    assert_user_error(r, archive)
    assert_unchanged(d, before)


def test_debug_shows_the_traceback(tmp_path):
    """--debug is the way to the traceback of any of the errors above."""
    path = tmp_path / "sweep.yaml"
    path.write_text("- a list\n")
    r = vggbn_main("--debug", "sweep", path, "--dry-run", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr and "SweepSpecError" in r.stderr


@pytest.mark.parametrize("where", ["a-file", "a-file/below", "/proc/vggbn-cache", "full"])
def test_an_unusable_tensor_cache_is_said_in_words(tmp_path, monkeypatch, where):
    """$VGGBN_CACHE_DIR that is a file, under a file, under /proc, or on a full disk (a 1-page
    tmpfs, where the machine allows): exit 2 naming it and the variable, no half-written file left."""
    d = fake_fmnist(tmp_path / "fm")
    (tmp_path / "a-file").write_text("not a directory")
    cache = tmp_path / where if not where.startswith("/") else Path(where)
    if where == "full":
        cache.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(cache)], capture_output=True)
        if r.returncode != 0:
            pytest.skip("cannot mount a tmpfs here: run as root, as CI does")
    monkeypatch.setenv("VGGBN_CACHE_DIR", str(cache))
    try:
        r = vggbn_main("train", *FMNIST_TRAIN, "--set", f"data_dir={d}", cwd=tmp_path)
        assert_user_error(r, cache, "$VGGBN_CACHE_DIR", "set VGGBN_CACHE_DIR to a directory you can write")
        if where == "full":
            assert not [p for p in cache.iterdir() if ".tmp" in p.name], list(cache.iterdir())
    finally:
        if where == "full":
            subprocess.run(["umount", "-l", str(cache)], capture_output=True)
