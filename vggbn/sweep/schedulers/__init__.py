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
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining, TrialScheduler


def _snapshot_errored(tune_controller, trial) -> None:
    # Ray 2.60 re-serialises a trial into the experiment snapshot only when it is marked; a trial
    # whose node died is no longer tracked with an actor, so its final ERROR is never marked and
    # the snapshot keeps it RUNNING (export said "incomplete", resume re-ran it). on_trial_error
    # comes just before the status change; the snapshot is written after it.
    tune_controller._mark_trial_to_checkpoint(trial)


class BudgetMixin:
    """No new trial starts once the trials' resource-hours reach the spec's budget.

    Stateless over a resume: the hours are summed afresh from every trial's last result
    (`time_total_s`, which Ray carries across restores) each time a trial could start. Trials that
    already ran continue (their hours are spent); trials that never started are ended through the
    scheduler API's `stop_trial` and named in vggbn-budget.json, which the export reads.
    """

    budget: dict | None = None  # {"limit", "unit", "per_trial", "experiment"}; None in old pickles

    def choose_trial_to_run(self, tune_controller):
        b = getattr(self, "budget", None)
        if b is not None:
            trials = tune_controller.get_trials()
            from vggbn.spec.space import resource_hours  # one formula for the budget and `vggbn status`

            spent = resource_hours(sum((t.last_result or {}).get("time_total_s", 0.0) or 0.0 for t in trials),
                                   b["per_trial"])
            if spent >= b["limit"]:
                fresh = [t for t in trials  # Ray's fresh last_result holds just the trial_id
                         if t.status == "PENDING" and "time_total_s" not in (t.last_result or {})]
                for t in fresh:
                    t.init_local_path()  # Ray's progress table reads every trial's directory
                    tune_controller.stop_trial(t)
                if fresh:
                    _write_budget_note(b, spent, [t.trial_id for t in fresh])
        return super().choose_trial_to_run(tune_controller)


def _write_budget_note(b: dict, spent: float, not_started: list[str]) -> None:
    import datetime
    import json

    from vggbn.schema import BUDGET_FILE
    from vggbn.store.experiment import Experiment

    exp = Experiment(b["experiment"])
    old = json.loads(exp.read_bytes(BUDGET_FILE) or b"{}")
    note = {"limit": b["limit"], "unit": b["unit"], "spent": round(spent, 4),
            "not_started": sorted(set(old.get("not_started", [])) | set(not_started)),
            "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    exp.write_bytes(BUDGET_FILE, json.dumps(note, indent=1).encode())


class FIFO(BudgetMixin, FIFOScheduler):
    def on_trial_error(self, tune_controller, trial) -> None:
        super().on_trial_error(tune_controller, trial)
        _snapshot_errored(tune_controller, trial)


class PersistentASHA(BudgetMixin, ASHAScheduler):
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


class PBTScheduler(BudgetMixin, PopulationBasedTraining):
    """Ray's PBT with vggbn's budget and error snapshot (the rules and arguments: pbt.py).

    A trial's last epoch is not a perturbation point: restarted from a donor's checkpoint there it
    would train nothing and end as a copy of the donor, and its final checkpoint, cloned, would
    leave the trial cloning it nothing to train."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get("final"):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_error(self, tune_controller, trial) -> None:
        super().on_trial_error(tune_controller, trial)
        _snapshot_errored(tune_controller, trial)


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
    if spec.scheduler.type in ("pbt", "pb2"):
        from vggbn.sweep.schedulers import pbt

        sched, callbacks = pbt.build(spec), []
    elif spec.scheduler.type != "asha":
        sched, callbacks = FIFO(), []
    else:
        sched = PersistentASHA(time_attr="epoch", max_t=spec.scheduler.max_t or max(spec.trial_epochs()),
                               grace_period=spec.scheduler.grace_period,
                               reduction_factor=spec.scheduler.reduction_factor)
        callbacks = [SchedulerState(sched)]
    for unit, per_trial in (("gpu_hours", spec.resources.trial_gpu),  # all of a trial's workers
                            ("cpu_hours", spec.resources.trial_cpu)):
        limit = getattr(spec.budget, unit)
        if limit is not None:
            sched.budget = {"limit": limit, "unit": unit, "per_trial": per_trial,
                            "experiment": spec.experiment_path()}
            break
    return sched, callbacks
