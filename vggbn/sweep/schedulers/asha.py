"""ASHA (one bracket) whose rungs survive a resume.

Ray 2.60 leaves the scheduler out of the experiment checkpoint, so a restored ASHA would start
with empty rungs and promote or stop differently. Its state rides in a Tune Callback instead
(`SchedulerState`), through ASHA's own public `save`/`restore`: Ray saves callback state in the
same snapshot as the trials' states (consistent with them) and restores it before the trials are
re-added. Scheduler and callback are pickled together into tuner.pkl, so after Tuner.restore the
callback still holds the very scheduler the controller uses.
"""

from __future__ import annotations

import os
import tempfile

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from vggbn.sweep import ray_compat
from vggbn.sweep.schedulers.budget import BudgetMixin


class PersistentASHA(BudgetMixin, ASHAScheduler):
    """ASHA (one bracket) that keeps its decisions: a trial it stopped stays stopped if it is
    re-run after a crash."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self._stopped: set[str] = set()  # the attribute name earlier releases pickled

    def on_trial_error(self, tune_controller, trial) -> None:
        super().on_trial_error(tune_controller, trial)
        ray_compat.mark_trial_to_checkpoint(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if trial.trial_id in self._stopped:
            return TrialScheduler.STOP
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP:
            self._stopped.add(trial.trial_id)
        return action


def asha_bytes(asha: ASHAScheduler) -> bytes:
    """ASHA's state through its public save(); any ASHAScheduler (an earlier release pickled its
    own PersistentASHA class by value into tuner.pkl, and that object is restored)."""
    fd, path = tempfile.mkstemp(suffix=".asha")
    os.close(fd)
    try:
        asha.save(path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def asha_load(asha: ASHAScheduler, data: bytes) -> None:
    """The state asha_bytes gave, through ASHA's public restore()."""
    fd, path = tempfile.mkstemp(suffix=".asha")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        asha.restore(path)
    finally:
        os.unlink(path)


class SchedulerState(Callback):
    """ASHA's state in Ray's callback snapshot (see the module's docstring)."""

    def __init__(self, scheduler: PersistentASHA):
        self.scheduler = scheduler

    def get_state(self) -> dict:
        return {"asha_saved": asha_bytes(self.scheduler)}

    def set_state(self, state: dict) -> None:
        if "asha_saved" in state:
            asha_load(self.scheduler, state["asha_saved"])
        else:  # saved by an earlier release (its own format, ASHA's private fields)
            ray_compat.load_legacy_asha(self.scheduler, state["asha"])


def build(spec) -> tuple[PersistentASHA, list]:
    """The spec's ASHA and the callback that keeps its state."""
    sched = PersistentASHA(time_attr="epoch", max_t=spec.scheduler.max_t or max(spec.trial_epochs()),
                           grace_period=spec.scheduler.grace_period,
                           reduction_factor=spec.scheduler.reduction_factor)
    return sched, [SchedulerState(sched)]
