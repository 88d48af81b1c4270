"""Ray Tune's MLflow logger callback as vggbn uses it (an optional extra, `pip install 'vggbn[mlflow]'`):
one MLflow experiment per sweep (its name), one run per trial, the trial's resolved config as
params, its per-epoch metrics with the epoch as the step, and tags naming the variant and the seed.
A resumed trial continues its run, found by its `vggbn.trial_id` tag.

A module-level class, so Ray's tuner.pkl holds it by reference and `vggbn resume` gets it back.
Ray's integration module imports without mlflow; `callbacks.check` has said what is missing.
"""

from __future__ import annotations

import math

from ray.air.integrations.mlflow import MLflowLoggerCallback

from vggbn.sweep import ray_compat
from vggbn.sweep.callbacks.trial_values import LOGGED, labels, scalar, trial_values


class MLflow(MLflowLoggerCallback):
    """Ray's MLflow logger: one run per trial (a resumed trial continues its run, found by its
    `vggbn.trial_id` tag), its resolved config as params and the variant/seed as tags at its start,
    one log_batch per epoch with the epoch as the step."""

    def __init__(self, uri: str, experiment: str, swept: list[str]):
        super().__init__(tracking_uri=uri, experiment_name=experiment, tags={"vggbn.experiment": experiment})
        self.swept = swept  # the searched keys (the attribute's name is in tuner.pkl files)

    def _client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def log_trial_start(self, trial) -> None:
        runs = ray_compat.mlflow_runs(self)
        if trial in runs:
            return
        from mlflow.entities import Param

        client, exp_id = self._client(), self.mlflow_util.experiment_id
        found = client.search_runs([exp_id], f"tags.`vggbn.trial_id` = '{trial.trial_id}'", max_results=1)
        if found:  # resumed
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            values = trial_values(trial.config)
            variant, seed = labels(values, self.swept)
            tags = {**self.tags, "vggbn.trial_id": trial.trial_id, "vggbn.variant": variant, "vggbn.seed": seed,
                    "trial_name": str(trial)}
            run_id = client.create_run(exp_id, tags=tags, run_name=str(trial)).info.run_id
            client.log_batch(run_id, params=[Param(k, str(scalar(v))[:6000]) for k, v in sorted(values.items())])
        runs[trial] = run_id

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        from mlflow.entities import Metric

        runs = ray_compat.mlflow_runs(self)
        if trial not in runs:
            self.log_trial_start(trial)
        step, ms = int(result.get("epoch") or iteration), int(result.get("timestamp", 0) * 1000)
        metrics = [Metric(k, float(result[k]), ms, step) for k in LOGGED
                   if isinstance(result.get(k), (int, float)) and not math.isinf(result[k])]
        self._client().log_batch(runs[trial], metrics=metrics)
