"""Population Based Training's rules for a sweep file (Jaderberg et al. 2017), and the dry run's
words for it; the scheduler itself is sweep/schedulers/pbt.py's.

A population of `num_samples` random trials trains; every `perturbation_interval` epochs a trial
in the bottom `quantile_fraction` (by the spec's metric, never a test_* one) continues from the
checkpoint of one in the top fraction with a perturbed copy of that trial's values. Only keys that
can change mid-training without changing the model are perturbed: the optimizer's lr, momentum and
weight decay, and the loss's label smoothing. Pure: no Ray.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vggbn.spec.model import SweepSpec

# keys a trial can change between two epochs with the same weights (train.fit re-applies them
# over a loaded optimizer and schedule), and why the others cannot
PERTURBABLE = ("lr", "weight_decay", "label_smoothing", "momentum")
WHY_NOT = {
    "width": "changes the model's layers", "arch": "changes the model's layers",
    "bn": "changes the model's layers", "residual": "changes the model's layers",
    "dropout": "adds or removes the model's Dropout layers", "activation": "changes the model",
    "optimizer": "changes the optimizer's state", "batch_size": "changes the steps per epoch and "
    "so the schedule", "epochs": "changes the schedule's length",
}
TYPES = ("pbt", "pb2")


def keys(spec: SweepSpec) -> list[str]:
    """The perturbed keys: scheduler.perturb, else the space's keys among PERTURBABLE."""
    if spec.scheduler.perturb is not None:
        return list(spec.scheduler.perturb)
    return [k for k in spec.space if k in PERTURBABLE]


def check(spec: SweepSpec) -> None:
    """ValueErrors (the spec names the file) for a PBT/PB2 sweep that cannot run as asked."""
    s = spec.scheduler
    if spec.search != "random":
        raise ValueError(f"scheduler: {s.type} starts its population from random samples of the space "
                         f"and Ray refuses a searcher beside it; use search: random (got search: "
                         f"{spec.search})")
    if spec.seeds is not None:
        raise ValueError(f"seeds: adaptive seeds need every seed to finish; scheduler {s.type} belongs "
                         f"to HPO, use scheduler: {{type: fifo}}")
    if spec.num_samples < 2:
        raise ValueError(f"num_samples: {spec.num_samples} is the population of {s.type}; it needs at "
                         f"least 2 trials (4 or more to be useful)")
    when = [k for k, d in spec.space.items() if d.kind == "when"]
    if when:
        raise ValueError(f"space.{when[0]}: a conditional (when) space is sampled by Optuna, and Ray "
                         f"refuses a searcher beside {s.type}; give {when[0]} one range")
    if spec.resources.n_workers > 1:
        raise ValueError(f"resources: {s.type} with data-parallel trials ({spec.resources.n_workers} "
                         f"workers) is not supported: its record of each run is kept by a single-process "
                         f"trial; use resources.workers: 1 (and a whole GPU at most)")
    if spec.cases:
        raise ValueError(f"cases: {s.type} clones a donor's weights into another trial, so the cases' "
                         f"setups would mix; run one {s.type} sweep per case")
    ks = keys(spec)
    if not ks:
        raise ValueError(f"scheduler: {s.type} has nothing to perturb: search one of "
                         f"{', '.join(PERTURBABLE)} in space (e.g. space.lr: {{loguniform: [1e-4, 1e-2]}}), "
                         f"or name them in scheduler.perturb")
    for k in ks:
        if k not in PERTURBABLE:
            why = WHY_NOT.get(k, "is not an optimizer, schedule or loss knob")
            raise ValueError(f"scheduler.perturb: {k} {why}, so a donor's weights would not continue "
                             f"under it; {s.type} perturbs only {', '.join(PERTURBABLE)}")
        if k not in spec.space:
            raise ValueError(f"scheduler.perturb: {k} is not searched in space; add space.{k} (its "
                             f"range is where the population starts and resamples)")
        if spec.space[k].kind == "grid":
            raise ValueError(f"space.{k}: a grid cannot be perturbed; use choice: "
                             f"{list(spec.space[k].values)} (or a uniform/loguniform range)")
        if s.type == "pb2" and spec.space[k].kind not in ("uniform", "loguniform"):
            raise ValueError(f"space.{k}: pb2 models continuous values within bounds; give "
                             f"uniform or loguniform [low, high] (got {spec.space[k].kind})")
    fixed = [k for k in spec.space if k not in ks]
    if fixed:
        raise ValueError(f"space.{fixed[0]}: searched but not perturbed, so a trial cloning a donor would "
                         f"carry the donor's {fixed[0]} under its own label; put it in base, or perturb it "
                         f"(scheduler.perturb)")
    if len(set(ks)) < len(ks):
        raise ValueError(f"scheduler.perturb: {ks} names a key twice")
    epochs = max(spec.trial_epochs())
    first = max(s.perturbation_interval, s.burn_in)
    if first >= epochs:
        raise ValueError(f"scheduler.perturbation_interval: the first perturbation would come at epoch "
                         f"{first}, not before the trials' last epoch {epochs}, so nothing would be "
                         f"perturbed; use a perturbation_interval (and burn_in) below {epochs}")
    if s.burn_in % spec.checkpoint_every:
        raise ValueError(f"checkpoint_every: {spec.checkpoint_every} does not divide scheduler.burn_in "
                         f"{s.burn_in}, so the first perturbation would find no checkpoint at its epoch; "
                         f"make burn_in a multiple of checkpoint_every")
    if s.perturbation_interval % spec.checkpoint_every:
        raise ValueError(f"checkpoint_every: {spec.checkpoint_every} does not divide "
                         f"scheduler.perturbation_interval {s.perturbation_interval}, so a trial would "
                         f"have no checkpoint to be cloned from at a perturbation; set checkpoint_every "
                         f"to {s.perturbation_interval} (or a divisor of it)")
    if spec.keep_checkpoints < 3:
        raise ValueError(f"keep_checkpoints: {spec.keep_checkpoints} is too few for {s.type}: a donor's "
                         f"checkpoint could be deleted before the trial cloning it starts; use 4")
    if any(f <= 0 for f in s.perturbation_factors):
        raise ValueError(f"scheduler.perturbation_factors: {s.perturbation_factors} must all be > 0")
    if s.type == "pb2":
        if importlib.util.find_spec("sklearn") is None:  # Ray's PB2 fits its GP with scikit-learn
            raise ValueError("scheduler: pb2 needs scikit-learn, which is not installed here; "
                             "pip install 'vggbn[pb2]', or use type: pbt")
        if s.burn_in:
            raise ValueError("scheduler.burn_in: Ray's PB2 has no burn-in; remove it (or use type: pbt)")


def bounds(dim) -> tuple[float, float] | None:
    if dim.kind in ("uniform", "loguniform"):
        return float(dim.values[0]), float(dim.values[1])
    if dim.kind == "randint":
        return float(dim.values[0]), float(dim.values[1] - 1)
    return None


def describe(spec: SweepSpec) -> list[str]:
    """The dry run's lines for a PBT/PB2 sweep: population, interval, what is perturbed and how."""
    s = spec.scheduler
    q = s.quantile_fraction
    how = ("PB2 picks each new value with a GP bandit within the bounds" if s.type == "pb2" else
           f"each value is multiplied by one of {s.perturbation_factors} (clipped to its range) or, "
           f"with probability {s.resample_probability:g}, drawn afresh from its range")
    lines = [f"{s.type}: a population of {spec.num_samples} trials; every {s.perturbation_interval} "
             f"epochs{f' (from epoch {s.burn_in})' if s.burn_in else ''} a trial in the bottom "
             f"{q:.0%} by {spec.metric} continues from the checkpoint of one in the top {q:.0%} "
             f"(weights, optimizer, schedule) with that trial's values perturbed"
             f"{'; all at once (synch)' if s.synch else ''}",
             f"  {how}" + ("; a choice moves to a neighbouring value" if any(
                 spec.space[k].kind == "choice" for k in keys(spec)) else "") + ":"]
    for k in keys(spec):
        lines.append(f"  perturbed: {k} ~ {spec.space[k].describe()}")
    lines.append("  each trial's config is a schedule: epochs.parquet has the values per epoch "
                 "(pbt_<key>) and where the weights came from (pbt_donor_trial, pbt_donor_epoch)")
    return lines
