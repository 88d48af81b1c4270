"""Ray Tune's TensorBoard logger as vggbn uses it: Ray writes each trial's scalars
(`ray/tune/<metric>`, one point per epoch) to `<storage>/<name>/trial_<id>/events.out.tfevents.*`;
vggbn's hparams record lists the same searched keys for every trial (their resolved values), so
the HParams tab has one column per searched key and one row per trial, cases and Optuna's
conditional keys included. Ray's own record holds only what its searcher suggested, and
TensorBoard takes the columns from the first trial it reads.

A module-level class, so Ray's tuner.pkl holds it by reference and `vggbn resume` gets it back.
"""

from __future__ import annotations

from ray.tune.logger import TBXLoggerCallback

from vggbn.sweep import ray_compat
from vggbn.sweep.callbacks.trial_values import LOGGED, scalar, trial_values


class TensorBoard(TBXLoggerCallback):
    """Ray's TensorBoard logger with its hparams record replaced (see the module's docstring)."""

    def __init__(self, swept: list[str]):
        super().__init__()
        self.swept = swept  # the searched keys (the attribute's name is in tuner.pkl files)

    def _try_log_hparams(self, trial, result: dict) -> None:  # ray_compat.TBX_HPARAMS_HOOK
        from tensorboardX.summary import hparams

        values = trial_values(trial.config)
        params = {k: scalar(values[k]) for k in self.swept if values.get(k) is not None}
        metrics = {f"ray/tune/{m}": result[f"ray/tune/{m}"] for m in LOGGED if f"ray/tune/{m}" in result}
        writer = ray_compat.tbx_file_writer(self, trial)
        for summary in hparams(hparam_dict=params, metric_dict=metrics):
            writer.add_summary(summary)
