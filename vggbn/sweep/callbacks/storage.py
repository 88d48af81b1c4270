"""The storage guard: a trial that failed because the experiment's storage cannot take a write (a
full disk, a quota, a read-only or denied directory) ends the run at once, in words, instead of
Ray retrying every trial max_failures times against the same disk (each retry fails the same way,
and each prints its traceback). The run's state stays as the last snapshot left it: `vggbn resume`
continues the same trials once there is space (runner._fit says so, snapshots keeps a good copy).

A Tune Callback, pickled into tuner.pkl with the others, so a resumed sweep is guarded too.
"""

from __future__ import annotations

import contextlib
import os
import pickle

import cloudpickle
from ray.tune import Callback

from vggbn.store.experiment import Experiment


class StorageGuard(Callback):
    def __init__(self, experiment: str):
        self.experiment = experiment

    def relocate(self, experiment: str) -> None:
        """Where the experiment is now (runner.resume_sweep, after Tuner.restore)."""
        self.experiment = experiment

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        self._check(trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._check(trial)

    def _check(self, trial) -> None:
        why = Experiment(self.experiment).failure(_error(trial))
        if why is not None:
            # the other running trials fail the same way; as Ray ends them it would print each one's
            # traceback below vggbn's error (Ray's own switch, read when it does)
            os.environ["RAY_IGNORE_UNHANDLED_ERRORS"] = "1"
            raise why  # out of Tuner.fit(): Ray ends the trials and keeps its last snapshot


def _error(trial) -> BaseException | None:
    """The exception the trial failed with, as Tune pickled it in the driver's own staging directory
    (a local file, written before the callbacks run; not the storage, which may be what failed)."""
    path = trial.pickled_error_file
    if not path:
        return None
    with contextlib.suppress(OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        with open(path, "rb") as f:
            return cloudpickle.load(f)
    return None
