"""The search space: one searched TrialConfig key (`Dim`) and the trials a spec's space would run
(`dry_run`). No Ray import until a Dim becomes a Ray Tune domain."""

from __future__ import annotations

import itertools
from pathlib import Path
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
    bound = "at most " if spec.scheduler.type == "asha" else ""
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
                return "\n".join(lines + estimate(spec))
            lines.append(f"  {n:3d}  {flags}")
    return "\n".join(lines + estimate(spec))


