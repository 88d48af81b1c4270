"""Trial schedulers with saved state: FIFO, and ASHA whose rungs survive a resume.

Ray 2.60 leaves the scheduler out of the experiment checkpoint, so a restored ASHA would start
with empty rungs and promote or stop differently. Its state rides in a Tune Callback instead,
through ASHA's own public `save`/`restore`: Ray saves callback state in the same snapshot as the
trials' states (consistent with them) and restores it before the trials are re-added. Scheduler
and callback are pickled together into tuner.pkl, so after Tuner.restore the callback still holds
the very scheduler the controller uses.

One private Ray method is used, checked once at start by `check_ray` (runner.py):
`TuneController._mark_trial_to_checkpoint`, see `_snapshot_errored`.
"""

from __future__ import annotations

import os
import tempfile

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler


def _snapshot_errored(tune_controller, trial) -> None:
    # Ray 2.60 re-serialises a trial into the experiment snapshot only when it is marked; a trial
    # whose node died is no longer tracked with an actor, so its final ERROR is never marked and
    # the snapshot keeps it RUNNING (export said "incomplete", resume re-ran it). on_trial_error
    # comes just before the status change; the snapshot is written after it.
    tune_controller._mark_trial_to_checkpoint(trial)


class FIFO(FIFOScheduler):
    def on_trial_error(self, tune_controller, trial) -> None:
        super().on_trial_error(tune_controller, trial)
        _snapshot_errored(tune_controller, trial)


class PersistentASHA(ASHAScheduler):
    """ASHA (one bracket) that keeps its decisions: a trial it stopped stays stopped if it is
    re-run after a crash."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self._stopped: set[str] = set()  # the name the release before 2026-11-28 pickled

    def on_trial_error(self, tune_controller, trial) -> None:
        super().on_trial_error(tune_controller, trial)
        _snapshot_errored(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if trial.trial_id in self._stopped:
            return TrialScheduler.STOP
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP:
            self._stopped.add(trial.trial_id)
        return action


def _asha_bytes(asha: ASHAScheduler) -> bytes:
    """ASHA's state through its public save(); any ASHAScheduler (the release before 2026-11-28
    pickled its own PersistentASHA class by value into tuner.pkl, and that object is restored)."""
    fd, path = tempfile.mkstemp(suffix=".asha")
    os.close(fd)
    try:
        asha.save(path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def _asha_load(asha: ASHAScheduler, data: bytes) -> None:
    fd, path = tempfile.mkstemp(suffix=".asha")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        asha.restore(path)
    finally:
        os.unlink(path)


class SchedulerState(Callback):
    def __init__(self, scheduler: PersistentASHA):
        self.scheduler = scheduler

    def get_state(self) -> dict:
        return {"asha_saved": _asha_bytes(self.scheduler)}

    def set_state(self, state: dict) -> None:
        if "asha_saved" in state:
            _asha_load(self.scheduler, state["asha_saved"])
        else:  # saved by the release before 2026-11-28 (its own format, ASHA's private fields)
            _load_legacy(self.scheduler, state["asha"])


def _load_legacy(asha: ASHAScheduler, state: dict) -> None:
    for b, rungs in zip(asha._brackets, state["rungs"]):
        for (milestone, rec), (m, saved) in zip(b._rungs, rungs):
            if milestone != m:
                raise ValueError(f"ASHA rung {m} in the saved state, {milestone} in the spec")
            rec.clear()
            rec.update(saved)
    asha._trial_info = {t: asha._brackets[i] for t, i in state["trial_bracket"].items()}
    asha._stopped = set(state["stopped"])
    asha._num_stopped = state["num_stopped"]


def build(spec):
    """(scheduler, callbacks) for a SweepSpec."""
    if spec.scheduler.type != "asha":
        return FIFO(), []
    asha = PersistentASHA(time_attr="epoch", max_t=spec.scheduler.max_t or max(spec.trial_epochs()),
                          grace_period=spec.scheduler.grace_period,
                          reduction_factor=spec.scheduler.reduction_factor)
    return asha, [SchedulerState(asha)]
