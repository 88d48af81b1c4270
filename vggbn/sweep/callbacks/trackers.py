"""Ray Tune's MLflow and W&B logger callbacks as vggbn uses them (see tracking.py); imported only
by a sweep that tracks to them (Ray's two integration modules take seconds to import).

Module-level classes, so Ray's tuner.pkl holds them by reference and `vggbn resume` gets them back.
Ray's integration modules import without mlflow / wandb; `tracking.check` has said what is missing.
"""

from __future__ import annotations

import math
import os

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor

from vggbn.sweep.callbacks.tensorboard import LOGGED
from vggbn.spec.tracking import labels, scalar, trial_values


class MLflow(MLflowLoggerCallback):
    """Ray's MLflow logger: one run per trial (a resumed trial continues its run, found by its
    `vggbn.trial_id` tag), its resolved config as params and the variant/seed as tags at its start,
    one log_batch per epoch with the epoch as the step."""

    def __init__(self, uri: str, experiment: str, swept: list[str]):
        super().__init__(tracking_uri=uri, experiment_name=experiment, tags={"vggbn.experiment": experiment})
        self.swept = swept

    def _client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def log_trial_start(self, trial) -> None:
        if trial in self._trial_runs:
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
        self._trial_runs[trial] = run_id

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        from mlflow.entities import Metric

        if trial not in self._trial_runs:
            self.log_trial_start(trial)
        step, ms = int(result.get("epoch") or iteration), int(result.get("timestamp", 0) * 1000)
        metrics = [Metric(k, float(result[k]), ms, step) for k in LOGGED
                   if isinstance(result.get(k), (int, float)) and not math.isinf(result[k])]
        self._client().log_batch(self._trial_runs[trial], metrics=metrics)


class _WandbActor(_WandbLoggingActor):
    """Ray's W&B logging actor, which Ray kills as soon as its run() returns: wandb.finish() can return
    before wandb-core has written the run's file, and an offline run then lost its records (seen:
    a run file with no history and no exit record). wandb.teardown() waits for wandb-core to end."""

    def run(self):
        super().run()
        self._wandb.teardown()


class WandB(WandbLoggerCallback):
    """Ray's W&B logger (one logging actor per trial, on the driver's node), with the trial's resolved
    config, variant/seed tags, resume="allow" (a resumed trial continues its run: its id is the
    trial id), and the driver's WANDB_MODE / WANDB_DIR / working directory (on a cluster the actor
    does not see the driver's environment)."""

    _logger_actor_cls = _WandbActor

    def __init__(self, project: str, experiment: str, swept: list[str]):
        entity, _, name = project.rpartition("/")
        super().__init__(project=name, group=experiment, excludes=["node_id"],
                         **({"entity": entity} if entity else {}))
        self.swept = swept
        self.base_kwargs = dict(self.kwargs)

    def log_trial_start(self, trial) -> None:
        values = trial_values(trial.config)
        variant, seed = labels(values, self.swept)
        # the kwargs Ray passes to wandb.init, this trial's. dir: W&B's default, the working directory
        # (its wandb/ folder); Ray's actor would write into the trial's staging folder, whose copy in
        # the experiment is taken before the run's file is complete
        mode = {"mode": os.environ["WANDB_MODE"]} if os.environ.get("WANDB_MODE") else {}
        self.kwargs = {**self.base_kwargs, **mode, "dir": os.environ.get("WANDB_DIR") or os.getcwd(),
                       "resume": "allow", "tags": [variant[:64], f"seed={seed}"],
                       "config": {k: scalar(v) for k, v in values.items()}}
        super().log_trial_start(trial)
