"""The grid plan: a grid sweep's trials, fixed or adaptive seeds, extendable.

A grid sweep runs through `PlanSearch`, a Ray Tune Searcher (public API), not Ray's own grid
generator, for two reasons:
- adaptive seeds (`seeds: {min, max, ci_halfwidth}`): every variant starts with `min` seeds; when
  all its seeds have finished and its corrected 95% CI half-width (spec.Seeds) is still above the
  target, it gets one more seed, up to `max`. Each variant goes on by itself (no barrier), and the
  rule reads only that variant's own values, never which variant is winning;
- `vggbn extend`: the plan is re-read from the experiment's spec.yaml whenever the searcher is
  restored (from where the experiment is now: `PlanSync.relocate`), so seeds or variants added to
  the spec join the same experiment on resume.

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
import os
from typing import Any

import ray
from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.search import SearchGenerator, Searcher

from vggbn.config import ConfigError, TrialConfig
from vggbn.spec.model import CASE_KEY, SweepSpec, flat_config
from vggbn.store.experiment import Experiment

RUNNING, DONE, FAILED, NOT_STARTED = "running", "done", "failed", "not started"


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
        for key in self.variants:
            self._decide(key)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump({"trials": self.trials, "queue": self.queue, "closed": self.closed}, f)

    def restore(self, checkpoint_path: str) -> None:
        """The saved state, then the plan of the experiment's spec as it is now (`vggbn extend`
        may have added seeds or variants): what it adds is queued, adaptive variants re-decided."""
        with open(checkpoint_path) as f:
            state = json.load(f)
        self.trials, self.closed = state["trials"], state["closed"]
        self.queue = [tuple(q) for q in state["queue"]]
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

    def relocate(self, experiment: str) -> None:
        """Where the experiment is now (runner.resume_sweep, after Tuner.restore and before the
        searcher is restored): the plan is re-read from its spec.yaml there, not from where the
        experiment was when it started (the path pickled with the searcher)."""
        self.plan.experiment = experiment

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if not self.synced:
            self.synced = True
            self.plan.sync(trials)


class PlanGenerator(SearchGenerator):
    """Ray's SearchGenerator, finished when the plan is (not when a restored counter says so: a
    study extended after it finished must start again)."""

    def is_finished(self) -> bool:
        return self.searcher.is_done()


def pending_trials(spec: SweepSpec) -> str | None:
    """TUNE_MAX_PENDING_TRIALS_PG for a grid sweep. Ray keeps one trial pending for any searcher
    but its own grid generator (200+ for that), so an autoscaling cluster would be asked for one
    node at a time; None: leave Ray's choice (a user's setting, or not a grid)."""
    if spec.search != "grid" or "TUNE_MAX_PENDING_TRIALS_PG" in os.environ:
        return None
    return str(spec.max_concurrent or max(200, int(ray.cluster_resources().get("CPU", 1.0) * 1.1)))
