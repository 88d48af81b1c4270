"""What an earlier experiment gives a new one: from search to study.

- `warm_start`: a search starts with the finished trials of an earlier export of the same
  metric(s), as Optuna trials of this space (sweep/search/optuna.py adds them to the study before the first
  suggestion).
- `resolve_base_from`: an ablation takes its base from an HPO export's best trial, chosen on a
  validation metric (never the test set): the keys the HPO searched (or `keys:`); the spec records
  which trial, its value and what it took.
- `rerun_config`: one stored trial's resolved config, for `vggbn train --from DIR --trial ID`.

Errors name the experiment and say how to fix it (raised as ValueError; load.py adds the sweep
file's name).
"""

from __future__ import annotations

from typing import Any

from vggbn.errors import ExperimentError, StoredTrialError
from vggbn.plan.optuna_space import finite, plain, warm_trials
from vggbn.schema import TRIAL_DIR, TRIALS
from vggbn.spec.model import SweepSpec
from vggbn.store.experiment import Experiment
from vggbn.store.trial_config import stored


def _experiment(uri: str, key: str):
    """The earlier Experiment and its stored spec; a ValueError saying what is wrong."""
    try:
        exp = Experiment(uri)
        return exp, exp.spec()
    except ExperimentError as e:
        what = e.what.rstrip(".")
        raise ValueError(f"{key}: {what} (an earlier sweep's directory or URI is needed: run that "
                         f"sweep first, or name where it is)") from None


def trial_rows(uri: str, key: str) -> tuple[SweepSpec, list[dict[str, Any]]]:
    """(the stored spec, the exported trials as dicts) of an earlier experiment."""
    exp, spec = _experiment(uri, key)
    try:
        df, _ = exp.read_export(TRIALS)
    except ExperimentError as e:  # unreachable, damaged: its own words, under this spec's key
        raise ValueError(f"{key}: {e.what}" + (f"; {e.fix}" if e.fix else "")) from None
    if df is None or df.empty:
        raise ValueError(f"{key}: {exp.uri} has no exported trials ({TRIALS}); run `vggbn export "
                         f"{exp.uri}` (or let its sweep finish)")
    _not_pbt(spec, exp.uri, key)
    return spec, df.to_dict("records")


def _not_pbt(spec: SweepSpec, uri: str, key: str) -> None:
    """A PBT trial's values changed as it trained (its config columns are where it started, its
    result where the schedule ended): no one config to start from or to re-run."""
    if spec.scheduler.type in ("pbt", "pb2"):
        raise StoredTrialError(f"{key}: {uri} is a {spec.scheduler.type} sweep: each trial's values "
                               f"changed while it trained (pbt_schedule in its trials.parquet), so no trial "
                               f"has one config that gave its result; take the values from its schedule into "
                               f"base", option=key)


# ---------------------------------------------------------------------- warm start
# what a warm start took, by what it depends on: load_spec reads the export (a bad one fails
# before anything starts), the dry run and the searcher take the same trials without reading again
_WARM: dict[str, tuple[list, str]] = {}


def _warm_key(spec: SweepSpec) -> str:
    return spec.model_dump_json(include={"warm_start", "metric", "mode", "space"})


def warm_start(spec: SweepSpec) -> tuple[list, str]:
    """(Optuna trials for the study, a line saying what was taken) from spec.warm_start: what
    load_spec read for this spec, else read now."""
    found = _WARM.get(_warm_key(spec))
    return found if found is not None else read_warm_start(spec)


def read_warm_start(spec: SweepSpec) -> tuple[list, str]:
    """warm_start's trials read afresh from the earlier export (and kept for warm_start)."""
    _WARM[_warm_key(spec)] = found = _warm_start(spec)
    return found


def _warm_start(spec: SweepSpec) -> tuple[list, str]:
    old, rows = trial_rows(spec.warm_start, "warm_start")
    if [m for m, _ in old.objectives] != [m for m, _ in spec.objectives]:
        raise ValueError(f"warm_start: {spec.warm_start} optimised {old.metric}, this sweep "
                         f"{spec.metric}; warm-start only from a search of the same metric")
    trials, outside = warm_trials(spec, rows)
    finished = sum(r.get("status") in ("completed", "early_stopped") for r in rows)
    line = (f"warm start: {len(trials)} of {len(rows)} trials of {spec.warm_start} "
            f"({finished} finished" + (f", {outside} of them outside this space" if outside else "") + ")")
    return trials, line


# ---------------------------------------------------------------------- base from a search
def resolve_base_from(raw: dict) -> dict:
    """A sweep file's raw mapping with `base_from` resolved: the best trial of the earlier export
    on its validation metric gives the keys it searched (its setup, such as epochs, val_fraction or
    the data, is not taken), under this file's own base; keys this sweep searches or sets in cases
    stay its own. Recorded in base_from."""
    ref = raw.get("base_from")
    if not isinstance(ref, (str, dict)):
        return raw  # the field's own validation says what it should be
    ref = {"experiment": ref} if isinstance(ref, str) else dict(ref)
    if ref.get("taken") is not None:  # already resolved (a stored spec): data, not re-read
        return raw
    metric = ref.get("metric", "val_acc")
    if not isinstance(metric, str) or not metric.startswith("val_"):
        raise ValueError(f"base_from.metric: {metric!r}; the base is chosen on a validation metric "
                         f"(val_acc or val_loss), never the test set")
    old, rows = trial_rows(str(ref.get("experiment")), "base_from")
    done = [r for r in rows if r.get("status") == "completed" and finite(r.get(metric))]
    if not done:
        raise ValueError(f"base_from: {ref['experiment']} has no completed trial with {metric} (its "
                         f"trials need a validation split: base.val_fraction)")
    if ref.get("trial_id"):
        pick = [r for r in done if str(r["trial_id"]) == str(ref["trial_id"])]
        if not pick:
            raise ValueError(f"base_from.trial_id: {ref['trial_id']!r} is not a completed trial of "
                             f"{ref['experiment']}")
        best = pick[0]
    else:
        best = (max if metric.endswith("_acc") else min)(done, key=lambda r: r[metric])
    mine = set(raw.get("space") or {}) | {k for c in raw.get("cases") or [] for k in c}
    mine |= set(raw.get("base") or {}) | {"seed"}
    keys = ref.get("keys") or list(old.space)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"base_from.keys: {keys!r}; give a list of config keys, e.g. [lr, weight_decay]")
    unknown = [k for k in keys if k not in best]
    if unknown:
        raise ValueError(f"base_from.keys: {unknown} are not config keys of {ref['experiment']}'s trials")
    taken = {k: plain(best[k]) for k in keys if k not in mine and (hasattr(best[k], "tolist") or finite(best[k]))}
    ref.update(metric=metric, trial_id=str(best["trial_id"]), value=float(best[metric]), taken=taken)
    return {**raw, "base_from": ref, "base": {**taken, **(raw.get("base") or {})}}


# ---------------------------------------------------------------------- one trial again
def rerun_config(uri: str, trial_id: str) -> dict[str, Any]:
    """A trial's stored resolved config, as it ran: `cpu_threads: 0` (the CPUs Ray gives) becomes
    the spec's resources.cpu, so the re-run's float sums match. A ValueError naming the trials
    there if it has none; an ExperimentError (its own fix) if uri is not a sweep's directory."""
    exp = Experiment(uri)
    spec = exp.spec()
    _not_pbt(spec, exp.uri, "--from")
    cfg = stored(exp, trial_id)
    if cfg is None:
        prefix = TRIAL_DIR.format(trial_id="")
        ids = sorted(n[len(prefix):] for n in exp.listdir() if n.startswith(prefix))
        raise StoredTrialError(f"--trial {trial_id}: no trial {trial_id!r} with a stored config in {exp.uri} "
                               f"(its trials: {', '.join(ids[:12]) or 'none'}{' ...' if len(ids) > 12 else ''})",
                               option="--trial")
    if not cfg.get("cpu_threads"):
        cfg = {**cfg, "cpu_threads": max(1, int(spec.resources.cpu))}
    return cfg
