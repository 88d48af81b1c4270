"""Ray Tune's W&B logger callback as vggbn uses it (an optional extra, `pip install 'vggbn[wandb]'`):
one W&B group per sweep (its name), one run per trial (id = trial id, so a resumed trial continues
it; offline, a second offline-run folder with that id), the trial's resolved config, its per-epoch
metrics, and tags naming the variant and the seed. W&B writes to the driver's working directory
(`./wandb/`) or $WANDB_DIR.

Module-level classes, so Ray's tuner.pkl holds them by reference and `vggbn resume` gets them back.
Ray's integration module imports without wandb; `callbacks.check` has said what is missing.
"""

from __future__ import annotations

import os

from ray.air.integrations.wandb import WandbLoggerCallback

from vggbn.sweep import ray_compat
from vggbn.sweep.callbacks.trial_values import labels, scalar, trial_values


class WandbActor(ray_compat.wandb_logging_actor()):
    """Ray's W&B logging actor, which Ray kills as soon as its run() returns: wandb.finish() can return
    before wandb-core has written the run's file, and an offline run then lost its records (seen:
    a run file with no history and no exit record). wandb.teardown() waits for wandb-core to end."""

    def run(self):
        import wandb

        super().run()
        wandb.teardown()


class WandB(WandbLoggerCallback):
    """Ray's W&B logger (one logging actor per trial, on the driver's node), with the trial's resolved
    config, variant/seed tags, resume="allow" (a resumed trial continues its run: its id is the
    trial id), and the driver's WANDB_MODE / WANDB_DIR / working directory (on a cluster the actor
    does not see the driver's environment)."""

    def __init__(self, project: str, experiment: str, swept: list[str]):
        entity, _, name = project.rpartition("/")
        super().__init__(project=name, group=experiment, excludes=["node_id"],
                         **({"entity": entity} if entity else {}))
        self.swept = swept  # the searched keys (the attribute's name is in tuner.pkl files)
        self.base_kwargs = dict(self.kwargs)

    def log_trial_start(self, trial) -> None:
        values = trial_values(trial.config)
        variant, seed = labels(values, self.swept)
        # the kwargs Ray passes to wandb.init, this trial's. dir: W&B's default, the working directory
        # (its wandb/ folder); Ray's actor would write into the trial's staging folder, whose copy in
        # the experiment is taken before the run's file is complete. WANDB_MODE and WANDB_DIR are
        # W&B's own settings, read here on the driver for the actor
        mode = {"mode": os.environ["WANDB_MODE"]} if os.environ.get("WANDB_MODE") else {}
        self.kwargs = {**self.base_kwargs, **mode, "dir": os.environ.get("WANDB_DIR") or os.getcwd(),
                       "resume": "allow", "tags": [variant[:64], f"seed={seed}"],
                       "config": {k: scalar(v) for k, v in values.items()}}
        super().log_trial_start(trial)


ray_compat.use_logging_actor(WandB, WandbActor)
