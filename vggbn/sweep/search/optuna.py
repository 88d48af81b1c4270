"""Optuna as a Ray Tune searcher: TPE (MOTPE for several objectives), or Optuna's random sampler
for a conditional space; the space as a define-by-run function (plan/optuna_space.py) and a warm
start from earlier experiments (plan/earlier.py) through Optuna's own add_trials."""

from __future__ import annotations

import json

from ray.tune.search.optuna import OptunaSearch

from vggbn.plan.dry_run import TPE_STARTUP  # the dry run lists these random-start draws
from vggbn.plan.earlier import warm_start
from vggbn.plan.optuna_space import BRANCH, DefineByRun
from vggbn.schema import WARM_START_FILE
from vggbn.spec.model import SweepSpec
from vggbn.store.experiment import Experiment


def sampler_for(spec: SweepSpec):
    """TPE (multi-objective too: MOTPE) for search: optuna; a conditional random search is
    Optuna's random sampler."""
    import optuna

    return (optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=TPE_STARTUP)
            if spec.search == "optuna" else optuna.samplers.RandomSampler(seed=spec.seed))


class Optuna(OptunaSearch):
    """Ray's OptunaSearch over the spec's space as a define-by-run function (optuna_space.py):
    trials get the TrialConfig keys; the per-branch names of conditional keys stay Optuna's."""

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        return {k: v for k, v in config.items() if BRANCH not in k} if isinstance(config, dict) else config


def searcher(spec: SweepSpec, sampler, experiment: str) -> Optuna:
    """The searcher, its study already holding the warm-start trials (Optuna's own add_trials;
    which ones is written to the experiment's vggbn-warm-start.json)."""
    import optuna

    metrics, modes = zip(*spec.objectives)
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="vggbn", sampler=sampler,
                                directions=["maximize" if m == "max" else "minimize" for m in modes])
    if spec.warm_start:
        trials, line = warm_start(spec)
        study.add_trials(trials)
        print(line, flush=True)
        Experiment(experiment).write_bytes(WARM_START_FILE, json.dumps(
            {"from": spec.warm_start, "summary": line, "trials": [
                {"trial_id": t.user_attrs["warm_start_trial"], "state": t.state.name, "params": t.params,
                 "values": t.values, "intermediate_values": t.intermediate_values} for t in trials]},
            indent=1).encode())
    one = len(metrics) == 1
    searcher = Optuna(space=DefineByRun(spec.space), metric=metrics[0] if one else list(metrics),
                      mode=modes[0] if one else list(modes), sampler=sampler, storage=storage,
                      study_name="vggbn")
    searcher.study = study  # the same study the searcher asks (tests and notebooks read it)
    return searcher
