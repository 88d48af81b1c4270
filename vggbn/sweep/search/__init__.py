"""Searchers: the grid plan (fixed or adaptive seeds, extendable) and Optuna (conditional spaces,
warm start; optuna_space.py turns the space into Optuna's terms).

A grid sweep runs through `PlanSearch`, a Ray Tune Searcher (public API), not Ray's own grid
generator, for two reasons:
- adaptive seeds (`seeds: {min, max, ci_halfwidth}`): every variant starts with `min` seeds; when
  all its seeds have finished and its corrected 95% CI half-width (spec.Seeds) is still above the
  target, it gets one more seed, up to `max`. Each variant goes on by itself (no barrier), and the
  rule reads only that variant's own values, never which variant is winning;
- `vggbn extend`: the plan is re-read from the experiment's spec.yaml whenever the searcher is
  restored, so seeds or variants added to the spec join the same experiment on resume.

Its state (which trial is which variant and seed, what each gave) is saved with Ray's experiment
snapshot through `save`/`restore`, so the plan survives a killed driver and `vggbn resume`. Ray
writes that state and its trial list as two files, so after a crash either may be the newer one:
`PlanSync`, a Tune Callback, makes the plan agree with Ray's restored trials before the first step.
`max_concurrent` is kept here (Ray's ConcurrencyLimiter would drop the result of an errored trial
that a resume re-runs).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from ray.tune import Callback
from ray.tune.search import SearchGenerator, Searcher
from ray.tune.search.optuna import OptunaSearch

from vggbn.config import ConfigError, TrialConfig
from vggbn.plan.optuna_space import BRANCH, DefineByRun
from vggbn.spec.model import CASE_KEY, SweepSpec, When, flat_config

RUNNING, DONE, FAILED, NOT_STARTED = "running", "done", "failed", "not started"
PLAN_SPEC_ENV = "VGGBN_PLAN_EXPERIMENT"  # set by resume: where the experiment (its spec.yaml) is now


def variants(spec: SweepSpec) -> list[dict[str, Any]]:
    """The grid's setups other than the seed, as Ray config fragments (a case under CASE_KEY)."""
    grid = {k: v for k, v in spec.grid_dims().items() if k != "seed"}
    out = []
    for case, combo in itertools.product(spec.cases or [None], itertools.product(*grid.values())):
        v = dict(zip(grid, combo))
        if case is not None:
            v[CASE_KEY] = dict(case)
        out.append(v)
    return out


def _epochs(config: dict) -> int:
    """The epochs a completed trial of this config reaches (0 for a config that will error: its
    trial fails alone, as `vggbn_trial` reports)."""
    try:
        return TrialConfig.from_flat(flat_config(config)).epochs
    except ConfigError:
        return 0


def _key(variant: dict) -> str:
    return json.dumps(variant, sort_keys=True, default=str)


class PlanSearch(Searcher):
    """The trials of a grid sweep: every variant x its seeds (fixed, or adaptive)."""

    def __init__(self, spec: SweepSpec, experiment: str):
        super().__init__(metric=spec.metric, mode=spec.mode)
        self.experiment = experiment
        self.max_concurrent = spec.max_concurrent  # 0: as resources allow
        self.trials: dict[str, dict] = {}  # trial_id -> {key, seed, state, value}
        self.queue: list[tuple[str, Any]] = []  # (variant key, seed) not yet suggested
        self.closed: dict[str, str] = {}  # adaptive: variant key -> why it has no more seeds
        self._load_plan(spec)
        self._plan_missing()

    # ------------------------------------------------------------------ the plan
    def _load_plan(self, spec: SweepSpec) -> None:
        self.metric_name, self.rule = spec.metric, spec.seeds
        self.dims = [k for k in spec.grid_dims() if k != "seed"] + ([CASE_KEY] if spec.cases else [])
        self.seeded = bool(self.rule) or "seed" in spec.grid_dims()
        self.variants = {_key(v): v for v in variants(spec)}
        self.epochs = {k: _epochs({**spec.base, **v}) for k, v in self.variants.items()}
        seeds = spec.grid_dims().get("seed")
        # fixed plans: each variant's seeds, repeats (num_samples) included; None = base's seed
        self.wanted = None if self.rule else ((seeds or [None]) * spec.num_samples)

    def _launched(self, key: str) -> list:
        return ([t["seed"] for t in self.trials.values() if t["key"] == key]
                + [s for k, s in self.queue if k == key])

    def _plan_missing(self) -> None:
        """Queue what the plan wants and no trial or queue entry holds yet (repeat-major,
        seed-major, so that every variant starts before any gets its second seed)."""
        todo = []
        for key in self.variants:
            have = self._launched(key)
            if self.rule is None:
                want = list(self.wanted)
                for s in have:
                    if s in want:
                        want.remove(s)
                todo += [(i, key, s) for i, s in enumerate(want)]
            else:
                nxt = max([s for s in have if s is not None] + [-1]) + 1
                todo += [(i, key, nxt + i) for i in range(self.rule.min - len(have))]
        self.queue += [(k, s) for _, k, s in sorted(todo, key=lambda t: t[0])]

    def _decide(self, key: str) -> None:
        """Adaptive: once a variant has nothing running or queued, close it or add one seed."""
        if self.rule is None or self.variants.get(key) is None:
            return
        mine = [t for t in self.trials.values() if t["key"] == key]
        if any(t["state"] == RUNNING for t in mine) or any(k == key for k, _ in self.queue):
            return
        if len(mine) < self.rule.min:
            return self._plan_missing()
        values = [t["value"] for t in mine if t["state"] == DONE]
        self.closed.pop(key, None)
        if any(t["state"] == NOT_STARTED for t in mine):
            self.closed[key] = "budget reached"
        elif self.rule.met(values, self.metric_name):
            self.closed[key] = "target met"
        elif len(mine) >= self.rule.max:
            self.closed[key] = "max seeds"
        else:
            self.queue.append((key, max(t["seed"] for t in mine) + 1))

    def is_done(self) -> bool:
        if self.queue or any(t["state"] == RUNNING for t in self.trials.values()):
            return False
        return self.rule is None or all(k in self.closed for k in self.variants)

    # ------------------------------------------------------------------ Searcher API
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the plan comes from the spec; metric and mode were set at construction

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return True  # the spec's max_concurrent is applied in suggest

    def suggest(self, trial_id: str):
        if not self.queue:
            return Searcher.FINISHED if self.is_done() else None
        running = sum(t["state"] == RUNNING for t in self.trials.values())
        if self.max_concurrent and running >= self.max_concurrent:
            return None
        key, seed = self.queue.pop(0)
        self.trials[trial_id] = {"key": key, "seed": seed, "state": RUNNING, "value": None}
        return {**self.variants[key], **({"seed": seed} if seed is not None else {})}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        t = self.trials.get(trial_id)
        if t is None:
            return
        value = (result or {}).get(self.metric_name)
        finished = (not error and result is not None and value is not None and value == value
                    and not result.get("diverged") and result.get("epoch", 0) >= self.epochs.get(t["key"], 0))
        # a trial stopped while pending (the budget) completes with no result at all
        t.update(state=DONE if finished else NOT_STARTED if result is None and not error else FAILED,
                 value=float(value) if finished else None)
        self._decide(t["key"])

    def sync(self, trials) -> None:
        """Agree with Ray's restored trials: a trial the plan suggested after Ray's last snapshot
        goes back to the queue; a trial Ray has and the plan lost is matched to its variant and seed
        (and leaves the queue); a trial Ray will run again (an errored one on resume) is running."""
        import os

        from ray.tune.experiment import Trial

        ray_ids = {t.trial_id for t in trials}
        for tid, rec in list(self.trials.items()):
            if rec["state"] == RUNNING and tid not in ray_ids:
                del self.trials[tid]
                self.queue.insert(0, (rec["key"], rec["seed"]))
        live = (Trial.PENDING, Trial.RUNNING, Trial.PAUSED)
        for t in trials:
            rec = self.trials.get(t.trial_id)
            if rec is None:
                key = _key({k: t.config[k] for k in self.dims if k in t.config})
                seed = t.config.get("seed") if self.seeded else None
                if key not in self.variants:
                    continue  # not this plan's trial (should not happen)
                if (key, seed) in self.queue:
                    self.queue.remove((key, seed))
                rec = self.trials[t.trial_id] = {"key": key, "seed": seed, "state": RUNNING, "value": None}
                if t.status not in live:
                    self.on_trial_complete(t.trial_id, t.last_result or {}, error=t.status == Trial.ERROR)
            elif t.status in live:
                rec.update(state=RUNNING, value=None)
        os.environ.pop(PLAN_SPEC_ENV, None)
        for key in self.variants:
            self._decide(key)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump({"trials": self.trials, "queue": self.queue, "closed": self.closed}, f)

    def restore(self, checkpoint_path: str) -> None:
        """The saved state, then the plan of the experiment's spec as it is now (`vggbn extend`
        may have added seeds or variants): what it adds is queued, adaptive variants re-decided."""
        from vggbn.store.experiment import Experiment

        with open(checkpoint_path) as f:
            state = json.load(f)
        self.trials, self.closed = state["trials"], state["closed"]
        self.queue = [tuple(q) for q in state["queue"]]
        import os

        self.experiment = os.environ.get(PLAN_SPEC_ENV) or self.experiment  # it may have moved
        self._load_plan(Experiment(self.experiment).spec())
        self._plan_missing()
        for key in self.variants:
            self._decide(key)


class PlanSync(Callback):
    """Before the first step of a run, `PlanSearch.sync` with Ray's trials (see the module's
    docstring). Pickled with the searcher into tuner.pkl, so it holds the very searcher Ray restores;
    it saves no state, so every restored run syncs once."""

    def __init__(self, plan: PlanSearch):
        self.plan, self.synced = plan, False

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if not self.synced:
            self.synced = True
            self.plan.sync(trials)


class PlanGenerator(SearchGenerator):
    """Ray's SearchGenerator, finished when the plan is (not when a restored counter says so: a
    study extended after it finished must start again)."""

    def is_finished(self) -> bool:
        return self.searcher.is_done()


def build(spec: SweepSpec, experiment: str):
    """(search_alg, param_space, num_samples, callbacks) for the Tuner."""
    if spec.search == "grid":
        param_space = {k: v for k, v in spec.param_space().items()
                       if k not in spec.grid_dims() and k != CASE_KEY}
        plan = PlanSearch(spec, experiment)
        return PlanGenerator(plan), param_space, spec.trial_count(), [PlanSync(plan)]
    conditional = any(isinstance(d, When) for d in spec.space.values())
    if spec.search == "optuna" or conditional:
        import optuna

        from vggbn.plan.dry_run import TPE_STARTUP  # the dry run lists these random-start draws

        # TPE (multi-objective too: MOTPE); a conditional random search is Optuna's random sampler
        sampler = (optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=TPE_STARTUP)
                   if spec.search == "optuna" else optuna.samplers.RandomSampler(seed=spec.seed))
        param_space = dict(spec.base)  # Optuna draws every searched key (cases are refused with it)
        return _optuna(spec, sampler, experiment), param_space, spec.num_samples, []
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=spec.seed), spec.param_space(), spec.num_samples, []


class Optuna(OptunaSearch):
    """Ray's OptunaSearch over the spec's space as a define-by-run function (optuna_space.py):
    trials get the TrialConfig keys; the per-branch names of conditional keys stay Optuna's."""

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        return {k: v for k, v in config.items() if BRANCH not in k} if isinstance(config, dict) else config


def _optuna(spec: SweepSpec, sampler, experiment: str) -> Optuna:
    """The searcher, its study already holding the warm-start trials (Optuna's own add_trials;
    which ones is written to the experiment's vggbn-warm-start.json)."""
    import optuna

    metrics, modes = zip(*spec.objectives)
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="vggbn", sampler=sampler,
                                directions=["maximize" if m == "max" else "minimize" for m in modes])
    if spec.warm_start:
        from vggbn.schema import WARM_START_FILE
        from vggbn.plan.earlier import warm_start
        from vggbn.store.experiment import Experiment

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


def pending_trials(spec: SweepSpec) -> str | None:
    """TUNE_MAX_PENDING_TRIALS_PG for a grid sweep. Ray keeps one trial pending for any searcher
    but its own grid generator (200+ for that), so an autoscaling cluster would be asked for one
    node at a time; None: leave Ray's choice (a user's setting, or not a grid)."""
    import os

    if spec.search != "grid" or "TUNE_MAX_PENDING_TRIALS_PG" in os.environ:
        return None
    import ray

    return str(spec.max_concurrent or max(200, int(ray.cluster_resources().get("CPU", 1.0) * 1.1)))
