"""The Ray trainable around `fit()`: one trial, its resolved config, its checkpoints, and the
failures that are deterministic (out of memory, an invalid config).

The trial's resolved config is the truth: written once, when the trial first starts, to
`trial_<id>/vggbn-config.json` and into every checkpoint's meta.json. A retry or a resume trains
that stored config (or, for an experiment written before configs were stored, the one in its
checkpoint), never today's defaults applied to Ray's raw dict.

Deterministic failures are not retried: Ray 2.60 retries every exception up to max_failures, so
an out-of-memory, an invalid config or a GPU trial that sees no CUDA ends its trial without
raising, with its one-line reason in `trial_<id>/vggbn-error.json`; Ray never re-runs it and the
export marks it `errored` (runtime.py, shared with the data-parallel workers).

Old pickled experiments name `vggbn.sweep.trainable.vggbn_trial`: it keeps its name and module.
"""

from __future__ import annotations

from typing import Any

from vggbn.config import ConfigError
from vggbn.spec.resources import Resources
from vggbn.store import checkpoint, trial_config
from vggbn.store.experiment import Experiment
from vggbn.store.pbt_record import Record
from vggbn.sweep import data_parallel
from vggbn.sweep.runtime import TrialRuntime
from vggbn.train import resolve_device


def vggbn_trial(config: dict[str, Any], experiment: str, checkpoint_every: int = 1,
                perturbed: tuple[str, ...] = (), workers: dict | None = None) -> None:
    """One Ray Tune trial: its resolved config, fit, report every epoch, checkpoint. Under PBT
    (`perturbed` keys), the config in force is the checkpoint's with Ray's perturbed values, which
    may come from another trial's checkpoint (an exploit): pbt_record. `workers` (the spec's
    resources, when it has several workers): this trial drives a data-parallel run (data_parallel.py)."""
    from ray import tune

    ctx = tune.get_context()
    exp, trial_id = Experiment(experiment), ctx.get_trial_id()
    ckpt = tune.get_checkpoint()
    resume_state = checkpoint.resume_state(ckpt) if ckpt is not None else None
    rt = TrialRuntime(exp, trial_id, ctx.get_trial_resources().required_resources)
    try:
        cfg = trial_config.resolve(exp, trial_id, config, state=resume_state, write=True)  # stored at its start
        record = None
        if perturbed:  # the stored config is what it started with; this is what it runs now
            meta0 = checkpoint.read_meta(ckpt.filesystem, ckpt.path) if ckpt is not None else None
            record = Record(exp, trial_id, list(perturbed))
            cfg = record.start(config, ckpt, resume_state, cfg, meta0 if resume_state and (
                meta0 or {}).get("epoch") == resume_state["epoch"] else None)
        if workers is not None:  # the Train workers hold the resources and run fit()
            return data_parallel.run_trial(exp, trial_id, cfg, Resources(**workers), ckpt, checkpoint_every)
        if rt.no_cuda():
            return
        device = resolve_device(cfg.device)
    except ConfigError as e:  # deterministic: this trial alone, once
        rt.config_error(e)
        return
    rt.start(cfg, device)

    def report(metrics: dict, due: bool, directory: str | None) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory) if directory else None)

    rt.fit(rt.on_epoch(report, checkpoint_every, record=record), resume_state=resume_state)
