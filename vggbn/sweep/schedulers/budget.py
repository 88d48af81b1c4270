"""A resource budget for a sweep: no new trial starts once the trials' resource-hours reach it.

A mixin of every vggbn scheduler (fifo, asha, pbt, pb2). The trials the budget ends before they
start are named in the experiment's vggbn-budget.json (the budget note), which the export reads.
"""

from __future__ import annotations

import datetime
import json

from vggbn.schema import BUDGET_FILE
from vggbn.spec.resources import resource_hours  # one formula for the budget and `vggbn status`
from vggbn.store.experiment import Experiment


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
            spent = resource_hours(sum((t.last_result or {}).get("time_total_s", 0.0) or 0.0 for t in trials),
                                   b["per_trial"])
            if spent >= b["limit"]:
                fresh = [t for t in trials  # Ray's fresh last_result holds just the trial_id
                         if t.status == "PENDING" and "time_total_s" not in (t.last_result or {})]
                for t in fresh:
                    t.init_local_path()  # Ray's progress table reads every trial's directory
                    tune_controller.stop_trial(t)
                if fresh:
                    write_budget_note(b, spent, [t.trial_id for t in fresh])
        return super().choose_trial_to_run(tune_controller)


def write_budget_note(b: dict, spent: float, not_started: list[str]) -> None:
    """vggbn-budget.json: the limit, what was spent, and every trial the budget kept from starting."""
    exp = Experiment(b["experiment"])
    old = json.loads(exp.read_bytes(BUDGET_FILE) or b"{}")
    note = {"limit": b["limit"], "unit": b["unit"], "spent": round(spent, 4),
            "not_started": sorted(set(old.get("not_started", [])) | set(not_started)),
            "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    exp.write_bytes(BUDGET_FILE, json.dumps(note, indent=1).encode())


def attach(scheduler, spec) -> None:
    """Give `scheduler` the spec's budget (gpu_hours first, then cpu_hours), if it has one."""
    for unit, per_trial in (("gpu_hours", spec.resources.trial_gpu),  # all of a trial's workers
                            ("cpu_hours", spec.resources.trial_cpu)):
        limit = getattr(spec.budget, unit)
        if limit is not None:
            scheduler.budget = {"limit": limit, "unit": unit, "per_trial": per_trial,
                                "experiment": spec.experiment_path()}
            return
