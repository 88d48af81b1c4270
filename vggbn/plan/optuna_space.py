"""A spec's sampled space as Optuna sees it, and the earlier trials that warm-start a search.

`DefineByRun` is an Optuna define-by-run function over the spec's `space`: each key is suggested
under its own name; a conditional key (`When`) is suggested under one name per value of its parent,
e.g. `lr|optimizer=adamw`, so that TPE models AdamW's learning rates apart from SGD's (one name
for both would mix the two ranges in one density). Trials get the plain key (`lr`): `suggest` of
the `Optuna` searcher (sweep/search/optuna.py) drops the per-branch names.

`warm_trials` turns the finished trials of an earlier export into Optuna trials of this space
(completed ones as complete, ASHA-stopped ones as pruned with their last value; values outside the
space are left out, and counted), for Optuna's own `add_trial`: one path for plain and
conditional spaces, one objective or several (Ray's `evaluated_rewards` takes neither a
define-by-run space nor a list of objectives). No Ray import here: the dry run uses it.
"""

from __future__ import annotations

import math
from typing import Any

from vggbn.spec.model import SweepSpec
from vggbn.spec.space import Dim, When

BRANCH = "|"  # a per-branch parameter name: "<key>|<parent>=<value>"


def _distribution(dim: Dim):
    import optuna.distributions as od

    v = dim.values
    if dim.kind in ("choice", "grid"):
        return od.CategoricalDistribution(list(v))
    if dim.kind == "randint":  # Ray's randint (and the spec's) excludes the upper bound
        return od.IntDistribution(int(v[0]), int(v[1]) - 1)
    return od.FloatDistribution(float(v[0]), float(v[1]), log=dim.kind == "loguniform")


def param_name(key: str, dim: Dim | When, config: dict) -> str | None:
    """Optuna's name for `key` in a trial whose config is `config` (None: not searched there)."""
    if isinstance(dim, When):
        if dim.branch(config.get(dim.when)) is None:
            return None
        return f"{key}{BRANCH}{dim.when}={config.get(dim.when)}"
    return key


def distributions(space: dict[str, Dim | When], config: dict) -> dict[str, tuple[str, Any]]:
    """{optuna name: (key, distribution)} of a trial whose searched parents have these values."""
    out = {}
    for key, dim in space.items():
        name = param_name(key, dim, config)
        if name is not None:
            out[name] = (key, _distribution(dim.branch(config.get(dim.when)) if isinstance(dim, When) else dim))
    return out


class DefineByRun:
    """The space as an Optuna define-by-run function (picklable: Ray saves the searcher with it).
    Returns the config's keys; the per-branch names Optuna records are the searcher's business."""

    def __init__(self, space: dict[str, Dim | When]):
        self.space = space

    def __call__(self, trial) -> dict[str, Any]:
        config: dict[str, Any] = {}
        plain = [k for k, d in self.space.items() if not isinstance(d, When)]
        for key in plain + [k for k in self.space if k not in plain]:  # parents before conditionals
            dims = distributions({key: self.space[key]}, config)
            for name, (_, dist) in dims.items():
                config[key] = _suggest(trial, name, dist)
        return config


def _suggest(trial, name: str, dist):
    """trial.suggest_* for an Optuna distribution (through the public API)."""
    import optuna.distributions as od

    if isinstance(dist, od.CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, od.IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


def sample(spec: SweepSpec, n: int) -> list[dict[str, Any]]:
    """n draws of the spec's sampled keys (Optuna's random sampler, the spec's seed): what the dry
    run shows of a random or Optuna search."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=spec.seed))
    define = DefineByRun(spec.space)
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(define(trial))
        study.tell(trial, 0.0)
    return out


def contains(dist, value) -> bool:
    import optuna.distributions as od

    if not finite(value):
        return False
    if isinstance(dist, od.CategoricalDistribution):
        return value in dist.choices
    try:
        return dist.low <= float(value) <= dist.high
    except (TypeError, ValueError):
        return False


def warm_trials(spec: SweepSpec, rows: list[dict[str, Any]]) -> tuple[list, int]:
    """(Optuna FrozenTrials of this space, how many earlier finished trials fell outside it) from
    an earlier export's trial rows (config columns, status and the objectives' values)."""
    import optuna

    metrics = [m for m, _ in spec.objectives]
    trials, outside = [], 0
    for row in rows:
        values = [row.get(m) for m in metrics]
        stopped = row.get("status") == "early_stopped"
        if row.get("status") not in ("completed", "early_stopped") or not all(map(finite, values)):
            continue
        if stopped and len(values) > 1:  # Optuna has no pruned trials in a multi-objective study
            continue
        dists = distributions(spec.space, row)
        params = {name: plain(row.get(key)) for name, (key, _) in dists.items()}
        if not all(contains(dist, params[name]) for name, (_, dist) in dists.items()):
            outside += 1
            continue
        dist_map = {name: dist for name, (_, dist) in dists.items()}
        if stopped:  # ASHA stopped it: a pruned trial with its last value, ranked below finished ones
            step = int(row.get("epochs_run") or row.get("epoch") or 1)
            kw = {"state": optuna.trial.TrialState.PRUNED, "intermediate_values": {step: float(values[0])}}
        elif len(values) == 1:
            kw = {"value": float(values[0])}
        else:
            kw = {"values": [float(v) for v in values]}
        trials.append(optuna.trial.create_trial(params=params, distributions=dist_map,
                                                user_attrs={"warm_start_trial": str(row.get("trial_id"))},
                                                **kw))
    return trials, outside


def plain(value):
    """A parquet cell as a Python value (Optuna stores it, YAML writes it): numpy scalars and arrays
    (probe_etas) as Python's."""
    return value.tolist() if hasattr(value, "tolist") else value


def finite(value) -> bool:
    """A value that was measured or set: not None, not NaN."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))
