"""The search space: one searched TrialConfig key (`Dim`) and the trials a spec's space would run
(`dry_run`). No Ray import until a Dim becomes a Ray Tune domain."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, model_validator

if TYPE_CHECKING:
    from .spec import SweepSpec

DRY_RUN_LINES = 200


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


def dry_run(spec: SweepSpec) -> str:
    """The trials a sweep would run, without starting Ray."""
    grid = spec.grid_dims()
    sampled = {k: d for k, d in spec.space.items() if d.kind != "grid"}
    combos = list(itertools.product(*grid.values())) or [()]
    lines = [f"sweep {spec.name}: {spec.trial_count()} trials "
             f"(search {spec.search}, scheduler {spec.scheduler.type}, metric {spec.metric} "
             f"{spec.mode}, {spec.resources.cpu:g} CPU + {spec.resources.gpu:g} GPU each) -> "
             f"{spec.experiment_path()}"]
    if spec.base:
        lines.append("base: " + ", ".join(f"{k}={v}" for k, v in spec.base.items()))
    n = 0
    for _ in range(spec.num_samples):
        for case, combo in itertools.product(spec.cases or [{}], combos):
            n += 1
            flags = ", ".join(f"{k}={v}" for k, v in [*case.items(), *zip(grid, combo)])
            flags += ("; " if flags and sampled else "") + ", ".join(
                f"{k} ~ {d.describe()}" for k, d in sampled.items())
            if n > DRY_RUN_LINES:
                lines.append(f"  ... and {spec.trial_count() - DRY_RUN_LINES:,} more")
                return "\n".join(lines)
            lines.append(f"  {n:3d}  {flags}")
    return "\n".join(lines)


