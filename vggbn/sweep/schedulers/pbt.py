"""Population Based Training (Jaderberg et al. 2017) over vggbn's trials: the scheduler (Ray's
PopulationBasedTraining, or PB2, through their public API); the spec's rules and the dry run's
words are spec/pbt.py's.

A population of `num_samples` random trials trains; every `perturbation_interval` epochs a trial
in the bottom `quantile_fraction` (by the spec's metric, never a test_* one) stops, takes the
checkpoint of a trial in the top fraction (its weights, optimizer and schedule state, RNG) and a
perturbed copy of that trial's values of the perturbed keys, and continues from there. Only keys
that can change mid-training without changing the model are perturbed: the optimizer's lr,
momentum and weight decay, and the loss's label smoothing. What each trial ran with, epoch by
epoch, and from which trial and epoch its weights came is recorded by `pbt_record` (the trial's
config is then a schedule).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

from vggbn.spec.pbt import TYPES, bounds, keys  # noqa: F401  (TYPES: export.py imports it from here)
from vggbn.sweep import ray_compat
from vggbn.sweep.schedulers.budget import BudgetMixin
from vggbn.sweep.tune_space import to_tune

if TYPE_CHECKING:
    from vggbn.spec.model import SweepSpec


class Clip:
    """Keeps perturbed values within the space's ranges (Ray's PBT multiplies without bounds: a
    momentum of 0.95 x 1.2 would not be a valid config). Picklable: it rides in tuner.pkl."""

    def __init__(self, bounds: dict[str, tuple[float, float]]):
        self.bounds = bounds

    def __call__(self, config: dict) -> dict:
        for k, (lo, hi) in self.bounds.items():
            if k in config and isinstance(config[k], (int, float)) and not isinstance(config[k], bool):
                v = min(max(config[k], lo), hi)
                config[k] = type(config[k])(v)
        return config


def mutations(spec: SweepSpec) -> dict[str, Any]:
    """Ray's hyperparam_mutations: a range as its Tune domain, a choice as its ordered list."""
    out = {}
    for k in keys(spec):
        d = spec.space[k]
        out[k] = list(d.values) if d.kind == "choice" else to_tune(d)
    return out


def hyperparam_bounds(spec: SweepSpec) -> dict[str, list[float]]:
    """PB2's hyperparam_bounds: each perturbed key's [low, high]."""
    return {k: list(bounds(spec.space[k])) for k in keys(spec)}


def common(spec: SweepSpec) -> dict[str, Any]:
    """The arguments Ray's PBT and PB2 share."""
    s = spec.scheduler
    return dict(time_attr="epoch", perturbation_interval=s.perturbation_interval,
                quantile_fraction=s.quantile_fraction, synch=s.synch,
                require_attrs=False)  # a trial ended by a deterministic failure reports nothing


class PBTScheduler(BudgetMixin, PopulationBasedTraining):
    """Ray's PBT with vggbn's budget and error snapshot.

    A trial's last epoch is not a perturbation point: restarted from a donor's checkpoint there it
    would train nothing and end as a copy of the donor, and its final checkpoint, cloned, would
    leave the trial cloning it nothing to train."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get("final"):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_error(self, tune_controller, trial) -> None:
        super().on_trial_error(tune_controller, trial)
        ray_compat.mark_trial_to_checkpoint(tune_controller, trial)


def build(spec: SweepSpec) -> PBTScheduler:
    """The PBT scheduler for the spec, with vggbn's budget and error snapshot (PB2: pb2.build)."""
    s = spec.scheduler
    clip = Clip({k: b for k in keys(spec) if (b := bounds(spec.space[k])) is not None})
    return PBTScheduler(hyperparam_mutations=mutations(spec), custom_explore_fn=clip,
                        resample_probability=s.resample_probability,
                        perturbation_factors=tuple(s.perturbation_factors),
                        burn_in_period=s.burn_in, **common(spec))
