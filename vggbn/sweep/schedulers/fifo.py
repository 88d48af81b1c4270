"""First in, first out: every trial runs to its end (ablation tables need every seed to finish)."""

from __future__ import annotations

from ray.tune.schedulers import FIFOScheduler

from vggbn.sweep import ray_compat
from vggbn.sweep.schedulers.budget import BudgetMixin


class FIFO(BudgetMixin, FIFOScheduler):
    """Ray's FIFO with vggbn's budget and the snapshot of a trial's final error."""

    def on_trial_error(self, tune_controller, trial) -> None:
        super().on_trial_error(tune_controller, trial)
        ray_compat.mark_trial_to_checkpoint(tune_controller, trial)
