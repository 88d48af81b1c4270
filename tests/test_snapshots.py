"""The last good copy of Ray's experiment snapshot (vggbn/sweep/snapshots.py): a resume of an
experiment whose snapshot is damaged (a full disk, a cut upload, a hand edit) either goes on from
the good copy, saying so, or is refused; it never starts the trials over under new ids."""
import shutil
from pathlib import Path

import pytest

from vggbn.errors import ExperimentError
from vggbn.store.experiment import Experiment
from vggbn.sweep import snapshots

OLD = Path(__file__).parent / "data" / "exp_08213c0" / "smoke"  # a finished smoke experiment


@pytest.fixture
def exp_dir(tmp_path) -> Path:
    d = tmp_path / "smoke"
    shutil.copytree(OLD, d)
    return d


def _state(d: Path) -> Path:
    return next(d.glob("experiment_state-*.json"))


def test_a_whole_snapshot_is_used_as_it_is(exp_dir):
    assert snapshots.keep_good(Experiment(str(exp_dir)))
    assert snapshots.check_before_restore(Experiment(str(exp_dir))) is None
    good = exp_dir / snapshots.GOOD
    assert sorted(p.name for p in good.iterdir()) == sorted(
        p.name for p in exp_dir.iterdir() if p.name.startswith(snapshots.PREFIXES) or p.name == "tuner.pkl")


@pytest.mark.parametrize("damage", ["truncated", "empty", "not-ray"])
def test_a_damaged_snapshot_is_replaced_by_the_last_good_copy(exp_dir, damage, capsys):
    exp = Experiment(str(exp_dir))
    assert snapshots.keep_good(exp)
    state = _state(exp_dir)
    original = state.read_bytes()
    state.write_bytes({"truncated": original[: len(original) // 2], "empty": b"",
                       "not-ray": b'{"trials": []}'}[damage])
    assert snapshots.keep_good(exp, None) is None  # a damaged snapshot never replaces the good copy
    line = snapshots.check_before_restore(exp)
    assert state.read_bytes() == original  # put back, byte for byte
    assert f"{state.name}:" in line and "last good copy" in line and line in capsys.readouterr().err
    assert (exp_dir / snapshots.DAMAGED / state.name).is_file()  # kept for whoever looks


def test_a_truncated_pickle_counts_as_damaged(exp_dir):
    exp = Experiment(str(exp_dir))
    assert snapshots.keep_good(exp)
    tuner = exp_dir / "tuner.pkl"
    original = tuner.read_bytes()
    tuner.write_bytes(original[:-10])
    assert "pickle" in snapshots.whole("tuner.pkl", tuner.read_bytes())
    snapshots.check_before_restore(exp)
    assert tuner.read_bytes() == original


def test_damaged_without_a_good_copy_is_refused(exp_dir):
    state = _state(exp_dir)
    state.write_bytes(state.read_bytes()[:1000])
    before = state.read_bytes()
    with pytest.raises(ExperimentError) as e:
        snapshots.check_before_restore(Experiment(str(exp_dir)))
    assert "no good copy" in e.value.what and "new ids" in e.value.what and "vggbn export" in e.value.fix
    assert state.read_bytes() == before  # nothing changed
