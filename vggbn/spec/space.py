"""The parts of a sweep spec: one searched TrialConfig key (`Dim`, or `When` for a conditional
one, checked by `check_space`), the scheduler and per-trial resources (`Scheduler`, `Resources`),
adaptive seeds (`Seeds`), what a sweep may spend (`Budget`, `Cost`). No Ray import until a Dim
becomes a Ray Tune domain. What a spec would run and cost is preview.py's."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

if TYPE_CHECKING:
    from vggbn.spec.model import SweepSpec

class Dim(BaseModel):
    """One searched TrialConfig key: exactly one of grid, choice, uniform, loguniform, randint."""

    model_config = ConfigDict(extra="forbid")
    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _one(self):
        set_ = [k for k in ("grid", "choice", "uniform", "loguniform", "randint")
                if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError("give exactly one of grid, choice, uniform, loguniform, randint"
                             + (f" (got {', '.join(set_)})" if set_ else ""))
        kind = set_[0]
        val = getattr(self, kind)
        if kind in ("grid", "choice") and not val:
            raise ValueError(f"{kind} needs at least one value")
        if kind in ("uniform", "loguniform", "randint") and not val[0] < val[1]:
            raise ValueError(f"{kind} needs [low, high] with low < high (got {list(val)})")
        if kind == "loguniform" and val[0] <= 0:
            raise ValueError(f"loguniform needs low > 0 (got {val[0]})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "uniform", "loguniform", "randint")
                    if getattr(self, k) is not None)

    @property
    def values(self):
        return getattr(self, self.kind)

    def probe_values(self) -> list[Any]:
        """Values that must each make a valid TrialConfig (all listed; the ends of ranges)."""
        if self.kind in ("grid", "choice"):
            return list(self.values)
        if self.kind == "randint":  # tune.randint's upper bound is exclusive
            return [self.values[0], self.values[1] - 1]
        return list(self.values)

    def to_tune(self):
        from ray import tune

        v = self.values
        if self.kind == "grid":
            return tune.grid_search(list(v))
        if self.kind == "choice":
            return tune.choice(list(v))
        return getattr(tune, self.kind)(v[0], v[1])  # uniform, loguniform, randint

    def describe(self) -> str:
        return f"{self.kind} {list(self.values)}"


class When(BaseModel):
    """A key whose distribution depends on another searched key's value (a conditional space):
    `lr: {when: optimizer, sgd: {loguniform: [0.01, 0.4]}, adamw: {loguniform: [1.0e-4, 3.0e-3]}}`.
    A value of the parent with no entry leaves the key unsearched (base's value, or the default)."""

    model_config = ConfigDict(extra="forbid")
    when: str = Field(description="the searched key (a choice) this key's distribution depends on")
    branches: dict[str, Dim] = Field(description="the parent's value -> this key's distribution")

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, raw):
        """The file's flat spelling {when: k, v1: dim, v2: dim} -> {when: k, branches: {v1: dim, ...}};
        the parent's values are matched as text (YAML reads `true:` or `0.5:` keys as non-strings)."""
        if isinstance(raw, dict) and "branches" not in raw:
            rest = {_text(k): v for k, v in raw.items() if k != "when"}
            raw = {"when": raw.get("when"), "branches": rest}
        return raw

    @model_validator(mode="after")
    def _some(self):
        if not self.branches:
            raise ValueError(f"when: {self.when} gives no distribution; add one per value of "
                             f"{self.when}, e.g. sgd: {{loguniform: [0.01, 0.4]}}")
        return self

    kind: ClassVar[str] = "when"

    @property
    def values(self) -> list[str]:
        return list(self.branches)

    def probe_values(self) -> list[Any]:
        return [v for d in self.branches.values() for v in d.probe_values()]

    def branch(self, parent_value) -> Dim | None:
        return self.branches.get(_text(parent_value))

    def describe(self) -> str:
        return "; ".join(f"{d.describe()} if {self.when}={v}" for v, d in self.branches.items())


def _text(value) -> str:
    """A parent value as a branch name: YAML's true/false and numbers as the file wrote them."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _space_kind(raw) -> str:
    """The union's tag: from a file's mapping when validating, from the model when serialising."""
    return "when" if isinstance(raw, When) or (isinstance(raw, dict) and "when" in raw) else "dim"


SpaceEntry = Annotated[Union[Annotated[Dim, Tag("dim")], Annotated[When, Tag("when")]],
                       Discriminator(_space_kind)]


def check_space(spec: SweepSpec) -> None:
    """Each searched key: a TrialConfig key not also in base, every value it can take valid with
    base (a conditional's, with its parent's value), its kind allowed by the search."""
    from vggbn.config import ConfigError, TrialConfig, suggest

    if spec.warm_start is not None and spec.search != "optuna":
        raise ValueError(f"warm_start: search {spec.search} does not learn from earlier trials; use "
                         f"search: optuna (or remove warm_start)")
    conditional = any(isinstance(d, When) for d in spec.space.values())
    grid = [k for k, d in spec.space.items() if d.kind == "grid"]
    if conditional and grid and spec.search != "grid":  # Optuna samples the space whole
        raise ValueError(f"space.{grid[0]}: a grid beside a conditional key would be sampled, not "
                         f"crossed; use choice: {list(spec.space[grid[0]].values)} (or a separate sweep "
                         f"per value)")
    if (spec.search == "optuna" or conditional) and spec.cases:
        raise ValueError("cases: " + ("Optuna samples every trial from space" if spec.search == "optuna"
                                      else "a conditional space is sampled whole") + "; put the setups "
                         "in space as a choice (or drop the conditional key)")
    for key, dim in spec.space.items():
        if key not in TrialConfig.model_fields:
            raise ValueError(f"space.{key}: unknown TrialConfig key{suggest(key, TrialConfig.model_fields)}")
        if key in spec.base:
            raise ValueError(f"space.{key}: also set in base; set it in one place")
        if isinstance(dim, When):
            _check_when(spec, key, dim)
            continue
        for i, v in enumerate(dim.probe_values()):
            try:
                TrialConfig.from_flat({**spec.base, key: v})
            except ConfigError as e:
                raise ValueError(f"space.{key}.{dim.kind}[{i}]: {e}") from None
        if spec.search == "optuna" and dim.kind == "grid":
            raise ValueError(f"space.{key}: grid cannot be mixed with search: optuna (Optuna "
                             f"samples every dimension); use choice: {list(dim.values)}")
        if spec.search == "grid" and dim.kind != "grid":
            raise ValueError(f"space.{key}: {dim.kind} needs search: random or optuna "
                             f"(search: grid enumerates grid dimensions only)")


def _check_when(spec: SweepSpec, key: str, dim: When) -> None:
    from vggbn.config import ConfigError, TrialConfig, suggest

    parent = spec.space.get(dim.when)
    if spec.search == "grid":
        raise ValueError(f"space.{key}: a conditional distribution (when: {dim.when}) needs search: "
                         f"random or optuna; a grid enumerates fixed values (give each {dim.when} its "
                         f"own case under cases:)")
    if parent is None:
        raise ValueError(f"space.{key}.when: {dim.when!r} is not a searched key"
                         f"{suggest(dim.when, spec.space)}; name a key of space with a choice")
    if isinstance(parent, When) or parent.kind != "choice":
        what = "itself conditional" if isinstance(parent, When) else f"a {parent.kind}"
        raise ValueError(f"space.{key}.when: {dim.when} is {what}; a conditional key depends on a "
                         f"choice, e.g. {dim.when}: {{choice: [...]}}")
    values = {_text(v): v for v in parent.values}
    for name, d in dim.branches.items():
        if name not in values:
            raise ValueError(f"space.{key}.{name}: {name!r} is not a value of {dim.when} (its choice is "
                             f"{list(values)}){suggest(name, values)}")
        if d.kind == "grid":
            raise ValueError(f"space.{key}.{name}: grid inside a conditional; use choice: {list(d.values)}")
        for i, v in enumerate(d.probe_values()):
            try:
                TrialConfig.from_flat({**spec.base, dim.when: values[name], key: v})
            except ConfigError as e:
                raise ValueError(f"space.{key}.{name}.{d.kind}[{i}]: {e}") from None


class BaseFrom(BaseModel):
    """`base_from: results/hpo`: the base comes from an HPO export's best trial on a validation
    metric. Resolved when the sweep file is read (earlier.py); the stored spec keeps the record."""

    model_config = ConfigDict(extra="forbid")
    experiment: str = Field(description="the earlier experiment directory or URI")
    metric: str = Field("val_acc", description="chosen on this validation metric (never test_*)")
    keys: list[str] | None = Field(None, description="the keys to take (default: the keys it "
                                   "searched)")
    trial_id: str | None = Field(None, description="the trial taken (default: the best)")
    value: float | None = Field(None, description="its metric value (filled when resolved)")
    taken: dict[str, Any] | None = Field(None, description="what went into base (filled when resolved)")


class Scheduler(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["fifo", "asha", "pbt", "pb2"] = "fifo"
    grace_period: int = Field(1, ge=1, description="epochs before ASHA may stop a trial")
    reduction_factor: float = Field(3.0, gt=1.0, description="ASHA keeps 1/reduction_factor per rung")
    max_t: int | None = Field(None, ge=1, description="ASHA's last rung in epochs (default: epochs)")
    # population based training (pbt; pb2 picks the new values with a GP bandit): see sweep/pbt.py
    perturbation_interval: int = Field(2, ge=1, description="PBT: epochs between a trial's exploit/explore steps")
    burn_in: int = Field(0, ge=0, description="PBT: epochs before a trial is first perturbed")
    perturb: list[str] | None = Field(None, description="PBT: the space's keys to perturb (default: "
                                      "those of lr, weight_decay, label_smoothing, momentum in space)")
    quantile_fraction: float = Field(0.25, ge=0.0, le=0.5, description="PBT: the bottom fraction "
                                     "clones the top fraction's weights and values")
    resample_probability: float = Field(0.25, ge=0.0, le=1.0, description="PBT: chance a value is "
                                        "drawn afresh from its space instead of perturbed")
    perturbation_factors: list[float] = Field([1.2, 0.8], min_length=1, description="PBT: a "
                                              "perturbed value is multiplied by one of these")
    synch: bool = Field(False, description="PBT: perturb the whole population at once (waits for "
                        "the slowest trial)")


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpu: float = Field(1.0, gt=0, description="CPUs per trial, per worker with workers > 1 (also "
                       "its torch threads)")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial; a fraction packs trials on one GPU; "
                       "a whole number above 1 trains data-parallel, one worker per GPU")
    memory_gb: float = Field(0.0, ge=0, description="host RAM per trial (per worker) in GiB (0 = no "
                             "reservation): Ray schedules by it and a CPU trial is capped to it, so a "
                             "trial that outgrows it errors alone instead of the kernel's OOM killer "
                             "taking the node's other trials")
    workers: int = Field(1, ge=1, le=1024, description="data-parallel workers per trial (Ray Train's "
                         "TorchTrainer); cpu, gpu and memory_gb are then per worker")

    @model_validator(mode="after")
    def _whole_gpus(self):
        if self.gpu > 1 and self.gpu != int(self.gpu):
            raise ValueError(f"gpu={self.gpu}: above 1, GPUs per trial must be a whole number")
        from vggbn.sweep.data_parallel import check_resources  # the data-parallel rules live with its code
        check_resources(self)
        return self

    @property
    def n_workers(self) -> int:  # gpu: 2 means 2 workers x 1 GPU
        return int(self.gpu) if self.gpu > 1 else self.workers

    @property
    def worker_gpu(self) -> float:
        return 1.0 if self.gpu > 1 else self.gpu

    @property
    def trial_cpu(self) -> float:  # what a trial holds, all workers together (budget, estimate)
        return self.cpu * self.n_workers

    @property
    def trial_gpu(self) -> float:
        return self.worker_gpu * self.n_workers


def resource_hours(trial_seconds: float, per_trial: float) -> float:
    """Trial time x the resources each trial holds, in hours: what a budget counts (the scheduler,
    with the sum of every trial's last `time_total_s`) and what `vggbn status` shows."""
    return trial_seconds * per_trial / 3600


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gpu_hours: float | None = Field(None, gt=0, description="no new trial starts once the trials' "
                                    "GPU-hours (trial time x GPUs per trial) reach this")
    cpu_hours: float | None = Field(None, gt=0, description="no new trial starts once the trials' "
                                    "CPU-hours (trial time x CPUs per trial) reach this")


class Cost(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epoch_seconds: float | None = Field(None, gt=0, description="stated time of one epoch of one "
                                        "trial on its resources, for the dry run's estimate (a "
                                        "run of this experiment, when there is one, is measured)")
    usd_per_gpu_hour: float | None = Field(None, ge=0, description="price of a GPU-hour (default: "
                                           "the on-demand price of cluster.yaml's GPU workers, "
                                           "where vggbn knows the instance type)")


class Seeds(BaseModel):
    """Adaptive seeds: each variant starts with `min` seeds and gets one more, while the 95% CI
    half-width of its mean is above `ci_halfwidth`, up to `max`. The rule looks at the variant's
    own spread only, never at which variant is winning.

    Stopping on the observed width makes a plain t interval too narrow at small n (it covers ~90%,
    not 95%, with min 2, max 6). So each look's interval uses the t quantile at 1 - 0.05 / (2K),
    K = max - min + 1 possible looks (Bonferroni over the looks, a repeated confidence interval):
    whichever look stops, its interval covers the mean with probability >= 95% (normal seeds).
    """

    model_config = ConfigDict(extra="forbid")
    min: int = Field(2, ge=2, le=1000, description="seeds every variant gets")
    max: int = Field(ge=2, le=1000, description="most seeds a variant gets")
    ci_halfwidth: float = Field(gt=0, description="target 95% CI half-width of a variant's mean, in "
                                "percentage points for an accuracy metric (else the metric's units)")

    @model_validator(mode="after")
    def _order(self):
        if self.max < self.min:
            raise ValueError(f"max: {self.max} is below min {self.min}")
        return self

    @property
    def looks(self) -> int:
        return self.max - self.min + 1

    def halfwidth(self, values, confidence: float = 0.95) -> float:
        """The corrected CI half-width of the mean of `values` (metric units); inf below 2 values."""
        import numpy as np
        from scipy import stats

        a = np.asarray([np.nan if v is None else v for v in values], dtype=float)
        a = a[~np.isnan(a)]
        if len(a) < 2:
            return math.inf
        return float(stats.t.ppf(1 - (1 - confidence) / (2 * self.looks), len(a) - 1) * stats.sem(a))

    def met(self, values, metric: str) -> bool:
        return self.halfwidth(values) * points(metric) <= self.ci_halfwidth


def check_seeds(spec: SweepSpec) -> None:
    """Adaptive seeds run a grid of variants with FIFO, each variant's seeds chosen by the rule."""
    fix = "; adaptive seeds give each variant seeds 0, 1, 2, ..."
    if "seed" in spec.space:
        raise ValueError("seeds: set with space.seed; use one: seeds (adaptive) or space.seed.grid")
    if "seed" in spec.base or any("seed" in c for c in spec.cases):
        raise ValueError(f"seeds: set with a fixed seed in {'base' if 'seed' in spec.base else 'cases'}"
                         f"; remove that seed{fix}")
    if spec.search != "grid":
        raise ValueError(f"seeds: adaptive seeds run a grid of variants, not search: {spec.search}; "
                         f"use search: grid")
    if spec.scheduler.type != "fifo":
        raise ValueError("seeds: adaptive seeds need every seed to finish; use scheduler: {type: fifo} "
                         "(ASHA belongs to HPO)")
    if spec.num_samples != 1:
        raise ValueError("num_samples: repeats come from seeds with adaptive seeds; remove num_samples")


def points(metric: str) -> float:
    """Fraction -> percentage points for accuracies; losses keep their units."""
    return 100.0 if metric.endswith("_acc") else 1.0
