"""PB2 (Parker-Holder et al. 2020): PBT whose new values come from a GP bandit within the space's
bounds. An optional extra (`pip install 'vggbn[pb2]'`: Ray's PB2 fits its GP with scikit-learn), so
this module is imported only for `scheduler: {type: pb2}`; pbt.check refuses the spec without it."""

from __future__ import annotations

from ray.tune.schedulers import TrialScheduler
from ray.tune.schedulers.pb2 import PB2

from .schedulers import BudgetMixin, _snapshot_errored


class PB2Scheduler(BudgetMixin, PB2):
    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get("final"):  # as PBTScheduler: no perturbation at a trial's last epoch
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_error(self, tune_controller, trial) -> None:
        super().on_trial_error(tune_controller, trial)
        _snapshot_errored(tune_controller, trial)
