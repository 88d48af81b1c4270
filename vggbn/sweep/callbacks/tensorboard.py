"""Ray Tune's TensorBoard logger as vggbn uses it (see tracking.py); MLflow and W&B are in trackers.py.

Module-level classes, so Ray's tuner.pkl holds them by reference and `vggbn resume` gets them back.
"""

from __future__ import annotations

from ray.tune.logger import TBXLoggerCallback

from vggbn.schema import COSTS, EPOCH_METRICS
from vggbn.spec.tracking import scalar, trial_values

LOGGED = (*EPOCH_METRICS, *COSTS)  # what a trial reports per epoch (Ray's bookkeeping keys are left out)


class TensorBoard(TBXLoggerCallback):
    """Ray's TensorBoard logger with its hparams record replaced: every trial lists the same swept
    keys (resolved values), and the metrics are vggbn's. Ray lists what the searcher suggested,
    which differs between cases and between Optuna's conditional trials, and TensorBoard's HParams
    tab takes its columns from the first trial it reads."""

    def __init__(self, swept: list[str]):
        super().__init__()
        self.swept = swept

    def _try_log_hparams(self, trial, result: dict) -> None:  # Ray 2.60 calls it at a trial's end
        from tensorboardX.summary import hparams

        values = trial_values(trial.config)
        params = {k: scalar(values[k]) for k in self.swept if values.get(k) is not None}
        metrics = {f"ray/tune/{m}": result[f"ray/tune/{m}"] for m in LOGGED if f"ray/tune/{m}" in result}
        writer = self._trial_writer[trial].file_writer
        for summary in hparams(hparam_dict=params, metric_dict=metrics):
            writer.add_summary(summary)
