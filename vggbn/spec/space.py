"""What varies between a sweep's trials: one searched TrialConfig key (`Dim`, or `When` for a
conditional one, checked by `check_space`) and adaptive seeds (`Seeds`, checked by `check_seeds`).
No Ray import until a Dim becomes a Ray Tune domain. (Ray pickles Dim, When and Seeds in a
searcher's state, so they keep this module path.)"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from vggbn.config import TrialConfig, suggest
from vggbn.errors import ConfigError

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
