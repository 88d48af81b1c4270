"""Sweep files and --set values made to hurt (issue: an experiment that survives its users): each
is refused in words, in this process, quickly, with a message of a few lines whatever the input's
size, and nothing is written. The parser's bounds are vggbn/yaml_input.py's."""
import time
from pathlib import Path

import pytest

from conftest import SWEEPS, vggbn_main
from test_bad_input import assert_unchanged, assert_user_error, snapshot

SMOKE = (SWEEPS / "smoke.yaml").read_text()
LAUGHS = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))  # 10^9 "lol"s
ECHO = "description: &big [" + ", ".join(["xxxxxxxxxx"] * 2000) + "]\n"  # 2,000 values: under the bounds


def _nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


CASES = {  # id: (the file's text or bytes, extra args, what the message must name)
    "billion-laughs": (LAUGHS, [], ["aliases expand to over"]),
    "alias-echo": (SMOKE + ECHO + "space: {seed: {grid: *big}}\n", ["--dry-run"], ["description"]),
    "50-MB-value": (SMOKE + "description: " + "x" * (50 << 20) + "\n", ["--dry-run"], ["over 1 MB"]),
    "deep-file": (SMOKE + f"space: {{seed: {{grid: {_nested(5000)}}}}}\n", ["--dry-run"], ["nested deeper than 64"]),
    "deep-set": (SMOKE, ["--set", f"space.seed.grid={_nested(5000)}", "--dry-run"],
                 ["--set space.seed.grid=", "nested deeper than 64"]),
    "set-laughs": (SMOKE, ["--set", "base.epochs=" + LAUGHS.replace("\n", ", ").join("{}"), "--dry-run"],
                   ["--set base.epochs="]),
    "python-tag": (SMOKE + "description: !!python/object/apply:os.system [echo hi]\n", ["--dry-run"],
                   ["not valid YAML"]),
    "long-bad-value": (SMOKE.replace("metric: test_acc", "metric: " + "m" * 100_000), ["--dry-run"], ["metric"]),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(CASES))
def test_hostile_sweep_input_is_refused_in_a_few_lines(tmp_path, case):
    text, extra, names = CASES[case]
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    before = snapshot(tmp_path)
    t0 = time.monotonic()
    r = vggbn_main("sweep", path, *extra, cwd=tmp_path)
    took = time.monotonic() - t0
    assert_user_error(r, *names)
    assert len(r.stderr) < 2000, (len(r.stderr), r.stderr[:3000])  # the value is never printed whole
    assert took < 20, took  # a hang is refused, not waited out (the limit is generous for load)
    assert_unchanged(tmp_path, before)


@pytest.mark.timeout(60)
def test_a_device_as_sweep_file_is_not_read_whole(tmp_path):
    r = vggbn_main("sweep", Path("/dev/zero"), "--dry-run", cwd=tmp_path)
    assert_user_error(r, "/dev/zero", "over 1 MB")


# ---------------------------------------------------------------------- options taken at their word
OLD = Path(__file__).parent / "data" / "exp_08213c0" / "smoke"  # a finished experiment


@pytest.mark.parametrize("value,hint", [("80", "--target 0.8"), ("-1", "--target 0.8 (80 %)"),
                                        ("nan", "--target 0.8"), ("inf", "--target 0.8"), ("0", "--target 0.8")])
def test_report_target_is_a_fraction(tmp_path, value, hint):
    r = vggbn_main("report", OLD, "--target", value, "--out", tmp_path / "r")
    assert_user_error(r, f"--target {float(value)}", "fraction in (0, 1]", hint)
    assert not (tmp_path / "r").exists()


def test_report_of_one_experiment_named_twice_is_refused(tmp_path):
    r = vggbn_main("report", OLD, str(OLD) + "/", "--out", tmp_path / "r")
    assert_user_error(r, "named twice", "count twice")
    assert not (tmp_path / "r").exists()


def test_a_landscape_grid_past_memory_is_refused_before_anything_runs(tmp_path):
    before = snapshot(OLD)
    r = vggbn_main("landscape", OLD, "--resolution", "1000000", "--out", tmp_path / "f")
    assert_user_error(r, "--resolution 1000000", "GiB", "--resolution")
    assert_unchanged(OLD, before)


@pytest.mark.parametrize("storage,words", [("afile", ["Not a directory", "a file is where a directory should be"]),
                                           ("/dev/null", ["Not a directory"]),
                                           ("/proc/vggbn", ["cannot be created", "storage=results"])])
def test_storage_that_cannot_hold_an_experiment_is_refused_before_ray(tmp_path, storage, words):
    """A sweep whose storage is a file, a device or under /proc: exit 2 at the claim, before Ray."""
    (tmp_path / "afile").write_text("x")
    before = snapshot(tmp_path)
    r = vggbn_main("sweep", SWEEPS / "smoke.yaml", "--set", f"storage={storage}", cwd=tmp_path)
    assert_user_error(r, "cannot be created", *words)
    assert_unchanged(tmp_path, before)


def test_spec_text_renders_as_text_in_report_html(tmp_path):
    """A sweep's description is text: no live link to another site, no HTML of its own."""
    from analysis.report_html import markdown_text, render

    desc = "[text](https://elsewhere.example/login) <img src=https://elsewhere.example/x.png> **bold** <https://a.example>"
    page = render(f"# Report\n\n*quick*: {markdown_text(desc)}\n", tmp_path)
    body = page[page.index("<main"):page.index("</main>")]
    assert "<a " not in body and "href=" not in body and "<img" not in body, body  # text, not tags
    assert "[text](https://elsewhere.example/login)" in body and "**bold**" in body  # shown as written


# ---------------------------------------------------------------------- export states what it cannot verify
def test_export_keeps_what_it_cannot_verify_and_says_so(smoke_copy):
    """A trial's directory gone: its last known status and metrics stay (Ray's snapshot), with a
    note, never a new status. A config edited after the run: exported as its checkpoint trained it,
    flagged."""
    import json
    import shutil

    import pandas as pd

    before = pd.read_parquet(smoke_copy / "trials.parquet").set_index("trial_id")
    gone, edited = sorted(before.index)[:2]
    shutil.rmtree(smoke_copy / f"trial_{gone}")
    f = smoke_copy / f"trial_{edited}" / "vggbn-config.json"
    doc = json.loads(f.read_text())
    doc["config"]["lr"] = 0.5
    f.write_text(json.dumps(doc))
    r = vggbn_main("export", smoke_copy)
    assert r.returncode == 0, r.stderr[-2000:]
    t = pd.read_parquet(smoke_copy / "trials.parquet").set_index("trial_id")
    assert t.loc[gone, "status"] == before.loc[gone, "status"] == "completed"
    assert t.loc[gone, "test_acc"] == before.loc[gone, "test_acc"]
    assert f"trial_{gone}/ is missing" in t.loc[gone, "export_notes"] and f"unverified {gone}" in r.stdout
    assert t.loc[edited, "lr"] == before.loc[edited, "lr"] != 0.5  # what was trained
    assert "lr 0.5 there, 0.001 trained" in t.loc[edited, "export_notes"]
    assert pd.isna(t.drop(index=[gone, edited])["export_notes"]).all()
    r = vggbn_main("report", smoke_copy)
    assert r.returncode == 0, r.stderr[-2000:]
    md = (smoke_copy / "report" / "report.md").read_text()
    assert "**Unverified**" in md and f"{edited}: its stored vggbn" in md


@pytest.mark.parametrize("out", ["afile", "/proc/vggbn-report"])
def test_report_out_that_cannot_be_a_directory_is_refused(smoke_copy, tmp_path, out):
    (tmp_path / "afile").write_text("x")
    target = tmp_path / out if out == "afile" else Path(out)
    r = vggbn_main("report", smoke_copy, "--out", target)
    assert_user_error(r, f"--out {target}", "directory")
    assert (tmp_path / "afile").read_text() == "x"


def test_report_of_an_export_without_trials_says_so(smoke_copy, tmp_path):
    """An export with no trial rows (exported before any trial started): report, landscape and
    load() name the file and the way on; nothing is written."""
    import pyarrow.parquet as pq

    from analysis.results import load
    from vggbn.errors import ResultsError

    for name in ("trials", "epochs", "steps", "probes"):
        f = smoke_copy / f"{name}.parquet"
        pq.write_table(pq.read_table(f).slice(0, 0), f)  # vggbn's schema and metadata, no rows
    before = snapshot(smoke_copy)
    for cmd in (("report", smoke_copy), ("landscape", smoke_copy, "--resolution", "3")):
        r = vggbn_main(*cmd, cwd=tmp_path)
        assert_user_error(r, f"{smoke_copy}/trials.parquet: no trials in it", f"vggbn resume {smoke_copy}")
    with pytest.raises(ResultsError, match="no trials in it"):
        load(smoke_copy)
    assert_unchanged(smoke_copy, before)
