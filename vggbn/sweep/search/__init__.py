"""Searchers, one module each: plan.py (the grid plan: fixed or adaptive seeds, extendable) and
optuna.py (TPE and conditional spaces, warm start); Ray's BasicVariantGenerator for a plain random
search. `build` picks one for a spec.

tuner.pkl files name `vggbn.sweep.search.PlanSearch`, `.PlanSync`, `.PlanGenerator` and `.Optuna`
(where they were defined before this package was split): the names below keep them resolvable.
"""

from __future__ import annotations

from ray.tune.search import BasicVariantGenerator

from vggbn.spec.model import CASE_KEY, SweepSpec
from vggbn.spec.space import When
from vggbn.sweep.search import optuna
from vggbn.sweep import tune_space
from vggbn.sweep.search.optuna import Optuna
from vggbn.sweep.search.plan import (DONE, FAILED, NOT_STARTED, RUNNING, PlanGenerator, PlanSearch,
                                     PlanSync, pending_trials, variants)

__all__ = ["PlanSearch", "PlanSync", "PlanGenerator", "Optuna", "variants", "pending_trials", "build",
           "RUNNING", "DONE", "FAILED", "NOT_STARTED"]


def build(spec: SweepSpec, experiment: str):
    """(search_alg, param_space, num_samples, callbacks) for the Tuner."""
    if spec.search == "grid":
        param_space = {k: v for k, v in tune_space.param_space(spec).items()
                       if k not in spec.grid_dims() and k != CASE_KEY}
        plan = PlanSearch(spec, experiment)
        return PlanGenerator(plan), param_space, spec.trial_count(), [PlanSync(plan)]
    conditional = any(isinstance(d, When) for d in spec.space.values())
    if spec.search == "optuna" or conditional:
        param_space = dict(spec.base)  # Optuna draws every searched key (cases are refused with it)
        searcher = optuna.searcher(spec, optuna.sampler_for(spec), experiment)
        return searcher, param_space, spec.num_samples, []
    return BasicVariantGenerator(random_state=spec.seed), tune_space.param_space(spec), spec.num_samples, []
