"""Storage that fails under a sweep. Read-only: every command says so and nothing changes. Full (a
3 MB tmpfs): the first trial that fails on it ends the run with one clear error (no retries of
every trial against the same disk); once there is space again, `vggbn resume` completes the same trials, from
vggbn's last good copy of Ray's snapshot where the full disk cut Ray's own.
Needs to mount a tmpfs (root, as CI runs): skipped with the reason elsewhere."""
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from conftest import SWEEPS, vggbn, vggbn_main
from test_bad_input import assert_unchanged, assert_user_error, snapshot

pytestmark = pytest.mark.timeout(400)
OLD = Path(__file__).parent / "data" / "exp_08213c0" / "smoke"  # a finished experiment, not exported


def _mount(where: Path, options: str) -> None:
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): run as root, as CI does")


@pytest.fixture
def small_disk(tmp_path):
    where = tmp_path / "disk"
    _mount(where, "size=3m")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def read_only(tmp_path):
    """A read-only filesystem holding a copy of a finished, exported experiment."""
    where = tmp_path / "ro"
    _mount(where, "size=16m")
    try:
        shutil.copytree(OLD, where / "smoke")
        assert vggbn_main("export", where / "smoke").returncode == 0
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_read_only_storage_is_said_in_words_and_left_as_it_was(read_only, tmp_path):
    exp = read_only / "smoke"
    before = snapshot(read_only)
    for args, what in [(("export", exp), "cannot write trials.parquet"), (("resume", exp), "lease"),
                       (("sweep", SWEEPS / "smoke.yaml", "--set", f"storage={read_only}/new"), "cannot be created")]:
        r = vggbn_main(*args, cwd=tmp_path)
        assert_user_error(r, what, "Read-only file system", "read-only")
    r = vggbn_main("landscape", exp, "--resolution", "3", cwd=tmp_path)  # it writes surfaces.parquet there
    assert_user_error(r, "lease", "Read-only file system", "read-only")
    r = vggbn_main("report", exp, cwd=tmp_path)  # its default --out is in the experiment
    assert_user_error(r, f"{exp}/report, where this command writes without --out", "Read-only file system",
                      "--out")
    assert_unchanged(read_only, before)
    r = vggbn_main("report", exp, "--out", tmp_path / "report", cwd=tmp_path)  # read-only is fine to read
    assert r.returncode == 0 and (tmp_path / "report" / "report.md").is_file(), r.stderr[-3000:]


@pytest.mark.ray
def test_a_full_disk_stops_the_sweep_in_words_and_resume_completes_the_same_trials(small_disk, ray_address):
    r = vggbn("sweep", SWEEPS / "smoke.yaml", "--set", f"storage={small_disk}", "--address", ray_address)
    tail = r.stderr.strip().splitlines()[-2:]
    assert r.returncode == 2, r.stderr[-3000:]
    assert tail[0].startswith(f"vggbn sweep: error: {small_disk}/smoke: no space left on its disk"), tail
    assert tail[1].startswith("Fix: free space there") and f"vggbn resume {small_disk}/smoke" in tail[1], tail
    # the first trial that failed on the disk ended the run: no retries, one trial's traceback from Ray
    assert r.stderr.count("Trial task failed") == 1 and "Unhandled error" not in r.stderr, r.stderr[-3000:]
    exp = small_disk / "smoke"
    trial_ids = {p.name.removeprefix("trial_") for p in exp.glob("trial_*")}
    assert len(trial_ids) == 4

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    r = vggbn("resume", exp, "--address", ray_address)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "4 trials (4 completed)" in r.stdout, r.stdout[-2000:]
    t = pd.read_parquet(exp / "trials.parquet")
    assert set(t["trial_id"]) == trial_ids and set(t["status"]) == {"completed"}  # the same trials, none new
    if "Ray's snapshot was damaged" in r.stderr:  # the full disk cut Ray's snapshot: the good copy served
        assert any(Path(exp / "vggbn-damaged").iterdir())
