"""What a sweep would run and cost, without starting Ray: `dry_run` (the trials; for a sampled
space, a draw of it, conditional keys included) and `estimate` (trial-epochs, hours, dollars)."""

from __future__ import annotations

import itertools
from pathlib import Path

import yaml

from vggbn.plan.earlier import warm_start
from vggbn.plan.optuna_space import sample
from vggbn.spec import pbt
from vggbn.spec.model import SweepSpec
from vggbn.spec.workers import describe as describe_resources
from vggbn.store.experiment import Experiment

DRY_RUN_LINES = 200
TPE_STARTUP = 10  # TPESampler's n_startup_trials (sweep/search/optuna.py passes it): TPE's random start


# Approximate on-demand list prices in USD per instance-hour and the GPUs they carry (AWS, us-east-1
# / us-west-2; docs/changelog says when they were taken): an estimate's order of magnitude, not a quote.
GPU_INSTANCES = {"g4dn.xlarge": (1, 0.526), "g4dn.2xlarge": (1, 0.752), "g5.xlarge": (1, 1.006),
                 "g5.2xlarge": (1, 1.212), "g5.12xlarge": (4, 5.672), "g6.xlarge": (1, 0.805),
                 "g6.2xlarge": (1, 0.978), "p3.2xlarge": (1, 3.06), "p3.8xlarge": (4, 12.24)}


def _measured_epoch_seconds(spec: SweepSpec) -> tuple[float | None, str]:
    """Median epoch time of this experiment's exported epochs, when it has run before."""
    try:
        epochs, _ = Experiment(spec.experiment_path()).read_export("epochs.parquet")
        if epochs is not None:
            t = epochs["epoch_time_s"].dropna()
            if len(t):
                return float(t.median()), f"measured: median of {len(t)} epochs already run"
    except Exception:  # no experiment yet, unreadable storage: the stated time, if any
        pass
    return None, ""


def _gpu_prices(cluster: str | Path | None) -> list[tuple[str, str, float]]:
    """(node type, instance type, USD per GPU-hour) of a cluster config's GPU worker types."""
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
                     + (f"{hours * spec.resources.trial_gpu:,.2f} GPU-hours, " if spec.resources.gpu else "")
                     + f"{hours * spec.resources.trial_cpu:,.2f} CPU-hours")  # all workers
        gpu_hours = hours * spec.resources.trial_gpu
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
             f"{describe_resources(spec.resources)}) -> "
             f"{spec.experiment_path()}"]
    if spec.base:
        lines.append("base: " + ", ".join(f"{k}={v}" for k, v in spec.base.items()))
    if rule:
        unit = "points" if spec.metric.endswith("_acc") else spec.metric
        lines.append(f"adaptive seeds: each variant below runs seeds 0-{rule.min - 1}; while its 95% CI "
                     f"half-width of the mean {spec.metric} is above {rule.ci_halfwidth:g} {unit} "
                     f"(t quantile corrected over {rule.looks} looks), it gets one more seed, up to "
                     f"{rule.max}")
    if spec.scheduler.type in pbt.TYPES:
        lines += pbt.describe(spec)
    earlier, warm = _from_earlier(spec)
    lines += earlier
    draws, tpe = [], ""
    if sampled:
        lines.append("space: " + "; ".join(f"{k} ~ {d.describe()}" for k, d in sampled.items()))
    if sampled and (spec.search == "optuna" or any(d.kind == "when" for d in sampled.values())):
        # Optuna samples these (sweep/search/optuna.py): its random sampler with the spec's seed draws what the
        # first trials get (TPE's own start: random until 10 trials, warm-start ones included, have
        # finished), conditional keys only under their parent's values
        n = spec.trial_count() if spec.search == "random" else max(0, TPE_STARTUP - warm)
        lines.append(f"the first {min(n, spec.trial_count())} trials: Optuna's random sampler, seed {spec.seed}"
                     + (f" (TPE's start, until {TPE_STARTUP} trials have finished)" if spec.search == "optuna"
                        else "") + ":")
        draws = sample(spec, min(n, spec.trial_count(), DRY_RUN_LINES))
        tpe = "TPE's choice from the finished trials (within the space above)"
    n = 0
    for _ in range(spec.num_samples):
        for case, combo in itertools.product(spec.cases or [{}], combos):
            n += 1
            flags = ", ".join(f"{k}={v}" for k, v in [*case.items(), *zip(grid, combo)])
            if n <= len(draws):
                flags += ("; " if flags else "") + ", ".join(f"{k}={_short(v)}" for k, v in draws[n - 1].items())
            elif tpe:
                flags += ("; " if flags else "") + tpe
            elif sampled:  # Ray's random search draws at run time
                flags += ("; " if flags else "") + ", ".join(f"{k} ~ {d.describe()}" for k, d in sampled.items())
            if n > DRY_RUN_LINES:
                lines.append(f"  ... and {spec.trial_count() - DRY_RUN_LINES:,} more")
                return "\n".join(lines + estimate(spec))
            lines.append(f"  {n:3d}  {flags}")
    return "\n".join(lines + estimate(spec))


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _from_earlier(spec: SweepSpec) -> tuple[list[str], int]:
    """What the spec takes from earlier experiments: its base (base_from), its first trials
    (warm_start); and how many warm-start trials the search starts with."""
    out, warm = [], 0
    b = spec.base_from
    if b is not None:
        out.append(f"base from {b.experiment}: trial {b.trial_id} ({b.metric} {b.value:.4g}, the best "
                   f"completed trial): " + (", ".join(f"{k}={_short(v)}" for k, v in b.taken.items()) or "nothing")
                   + " (this file's base, space and cases keep their own keys)")
    if spec.warm_start:
        trials, line = warm_start(spec)
        out.append(line)
        warm = len(trials)
    return out, warm
