"""The parts of a sweep spec and what it would run: one searched TrialConfig key (`Dim`), the
scheduler and per-trial resources (`Scheduler`, `Resources`), adaptive seeds (`Seeds`), what a sweep
may spend (`Budget`, `Cost`), and the trials a spec's space would run (`dry_run`, `estimate`). No Ray
import until a Dim becomes a Ray Tune domain."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


class Scheduler(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["fifo", "asha"] = "fifo"
    grace_period: int = Field(1, ge=1, description="epochs before ASHA may stop a trial")
    reduction_factor: float = Field(3.0, gt=1.0, description="ASHA keeps 1/reduction_factor per rung")
    max_t: int | None = Field(None, ge=1, description="ASHA's last rung in epochs (default: epochs)")


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpu: float = Field(1.0, gt=0, description="CPUs per trial (also its torch threads)")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial; a fraction packs trials on one GPU")
    memory_gb: float = Field(0.0, ge=0, description="host RAM per trial in GiB (0 = no reservation): "
                             "Ray schedules by it and a CPU trial is capped to it, so a trial that "
                             "outgrows it errors alone instead of the kernel's OOM killer taking "
                             "the node's other trials")

    @model_validator(mode="after")
    def _whole_gpus(self):
        if self.gpu > 1 and self.gpu != int(self.gpu):
            raise ValueError(f"gpu={self.gpu}: above 1, GPUs per trial must be a whole number")
        return self


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


def points(metric: str) -> float:
    """Fraction -> percentage points for accuracies; losses keep their units."""
    return 100.0 if metric.endswith("_acc") else 1.0



# Approximate on-demand list prices in USD per instance-hour and the GPUs they carry (AWS, us-east-1
# / us-west-2 as published in 2024-2025): an estimate's order of magnitude, not a quote.
GPU_INSTANCES = {"g4dn.xlarge": (1, 0.526), "g4dn.2xlarge": (1, 0.752), "g5.xlarge": (1, 1.006),
                 "g5.2xlarge": (1, 1.212), "g5.12xlarge": (4, 5.672), "g6.xlarge": (1, 0.805),
                 "g6.2xlarge": (1, 0.978), "p3.2xlarge": (1, 3.06), "p3.8xlarge": (4, 12.24)}


def _measured_epoch_seconds(spec: SweepSpec) -> tuple[float | None, str]:
    """Median epoch time of this experiment's exported epochs, when it has run before."""
    import io

    try:
        import pandas as pd

        from .experiment import Experiment

        raw = Experiment(spec.experiment_path()).read_bytes("epochs.parquet")
        if raw:
            t = pd.read_parquet(io.BytesIO(raw))["epoch_time_s"].dropna()
            if len(t):
                return float(t.median()), f"measured: median of {len(t)} epochs already run"
    except Exception:  # no experiment yet, unreadable storage: the stated time, if any
        pass
    return None, ""


def _gpu_prices(cluster: str | Path | None) -> list[tuple[str, str, float]]:
    """(node type, instance type, USD per GPU-hour) of a cluster config's GPU worker types."""
    import yaml

    path = Path(cluster) if cluster else next((Path(p) for p in ("cluster.local.yaml", "cluster.yaml")
                                               if Path(p).is_file()), None)
    try:
        types = (yaml.safe_load(path.read_text()) or {}).get("available_node_types", {}) if path else {}
    except (OSError, yaml.YAMLError, AttributeError):
        return []
    out = []
    for name, t in (types or {}).items():
        itype = ((t or {}).get("node_config") or {}).get("InstanceType")
        if itype in GPU_INSTANCES:
            gpus, usd = GPU_INSTANCES[itype]
            out.append((name, itype, usd / gpus))
    return out


def estimate(spec: SweepSpec, cluster: str | Path | None = None) -> list[str]:
    """GPU-/CPU-hours (and dollars) of the sweep, from measured or stated epoch times."""
    per_case = spec.trial_epochs()  # one entry per case (or the searched values of `epochs`)
    if "epochs" in spec.space:
        trial_epochs = spec.trial_count() * sum(per_case) / len(per_case)
    else:
        trial_epochs = spec.trial_count() // max(1, len(spec.cases)) * sum(per_case)
    bound = "at most " if spec.scheduler.type == "asha" or spec.seeds else ""
    seconds, source = _measured_epoch_seconds(spec)
    if seconds is None and spec.cost.epoch_seconds:
        seconds, source = spec.cost.epoch_seconds, "stated: cost.epoch_seconds"
    lines = [f"estimate: {bound}{trial_epochs:,.0f} trial-epochs"]
    if seconds is None:
        lines[0] += ("; no epoch time known (set cost.epoch_seconds, e.g. from `vggbn train` on the "
                     "same hardware, or run the sweep once)")
    else:
        hours = trial_epochs * seconds / 3600
        lines[0] += (f" x {seconds:.3g} s ({source}) = {bound}{hours:,.2f} trial-hours: "
                     + (f"{hours * spec.resources.gpu:,.2f} GPU-hours, " if spec.resources.gpu else "")
                     + f"{hours * spec.resources.cpu:,.2f} CPU-hours")
        gpu_hours = hours * spec.resources.gpu
        if gpu_hours > 0:
            if spec.cost.usd_per_gpu_hour is not None:
                prices = {"cost.usd_per_gpu_hour": spec.cost.usd_per_gpu_hour}
            else:  # per instance type of the cluster's GPU workers (spot is cheaper)
                prices = {}
                for _, itype, usd in _gpu_prices(cluster):
                    prices[f"{itype} on demand"] = usd
            for what, usd in prices.items():
                lines.append(f"  {what}: ${usd:.3g}/GPU-hour -> about ${gpu_hours * usd:,.2f}")
    for unit in ("gpu_hours", "cpu_hours"):
        limit = getattr(spec.budget, unit)
        if limit is not None:
            lines.append(f"budget: {limit:g} {unit.replace('_', '-')}: no new trial starts once the "
                         f"trials have used that much")
    return lines


def dry_run(spec: SweepSpec) -> str:
    """The trials a sweep would run, without starting Ray."""
    grid = spec.grid_dims()
    sampled = {k: d for k, d in spec.space.items() if d.kind != "grid"}
    combos = list(itertools.product(*grid.values())) or [()]
    rule = spec.seeds
    count = (f"{spec.variant_count() * rule.min} to {spec.trial_count()} trials (worst case "
             f"{spec.trial_count()}: {spec.variant_count()} variants x {rule.max} seeds)"
             if rule else f"{spec.trial_count()} trials")
    lines = [f"sweep {spec.name}: {count} "
             f"(search {spec.search}, scheduler {spec.scheduler.type}, "
             f"{'metrics' if len(spec.objectives) > 1 else 'metric'} "
             f"{', '.join(f'{m} {mode}' for m, mode in spec.objectives)}, "
             f"{spec.resources.cpu:g} CPU + {spec.resources.gpu:g} GPU each) -> "
             f"{spec.experiment_path()}"]
    if spec.base:
        lines.append("base: " + ", ".join(f"{k}={v}" for k, v in spec.base.items()))
    if rule:
        unit = "points" if spec.metric.endswith("_acc") else spec.metric
        lines.append(f"adaptive seeds: each variant below runs seeds 0-{rule.min - 1}; while its 95% CI "
                     f"half-width of the mean {spec.metric} is above {rule.ci_halfwidth:g} {unit} "
                     f"(t quantile corrected over {rule.looks} looks), it gets one more seed, up to "
                     f"{rule.max}")
    n = 0
    for _ in range(spec.num_samples):
        for case, combo in itertools.product(spec.cases or [{}], combos):
            n += 1
            flags = ", ".join(f"{k}={v}" for k, v in [*case.items(), *zip(grid, combo)])
            flags += ("; " if flags and sampled else "") + ", ".join(
                f"{k} ~ {d.describe()}" for k, d in sampled.items())
            if n > DRY_RUN_LINES:
                lines.append(f"  ... and {spec.trial_count() - DRY_RUN_LINES:,} more")
                return "\n".join(lines + estimate(spec))
            lines.append(f"  {n:3d}  {flags}")
    return "\n".join(lines + estimate(spec))


