"""A sweep whose storage fills up (a 3 MB tmpfs): the driver stops with one clear error, not
Ray's traceback; once there is space again, `vggbn resume` completes the same trials, from
vggbn's last good copy of Ray's snapshot where the full disk cut Ray's own.
Needs to mount a tmpfs (root, as CI runs): skipped with the reason elsewhere."""
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from conftest import SWEEPS, vggbn

pytestmark = [pytest.mark.ray, pytest.mark.timeout(400)]


@pytest.fixture
def small_disk(tmp_path):
    where = tmp_path / "disk"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): run as root, as CI does")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_full_disk_stops_the_sweep_in_words_and_resume_completes_the_same_trials(small_disk, ray_address):
    r = vggbn("sweep", SWEEPS / "smoke.yaml", "--set", f"storage={small_disk}", "--address", ray_address)
    tail = r.stderr.strip().splitlines()[-2:]
    assert r.returncode == 2, r.stderr[-3000:]
    assert tail[0].startswith(f"vggbn sweep: error: {small_disk}/smoke: no space left on its disk"), tail
    assert tail[1].startswith("Fix: free space there") and f"vggbn resume {small_disk}/smoke" in tail[1], tail
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
