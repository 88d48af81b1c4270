"""`vggbn extend`: the stored spec of a grid sweep with more seeds or more variants. The finished
trials must stay what they are, so only the plan (the searcher re-reads it) and words may change:
the scheduler, its budget, the retries and the resources come back from Ray's tuner.pkl as they
were started (and a variant's new seeds on another device would not be its old ones). Running the
extended sweep is the runner's (a resume). No Ray.
"""

from __future__ import annotations

from typing import Any

from vggbn.plan.load import validate, with_overrides
from vggbn.spec.model import SweepSpec, SweepSpecError, spec_errors

EXTENDABLE = ("space", "cases", "seeds", "num_samples", "description", "cost")


def extended_spec(old: SweepSpec, overrides: dict[str, Any], where: str) -> SweepSpec:
    """`old` with the `--set` overrides, validated as a sweep file and checked to be an extension
    of it; a SweepSpecError naming `where` (the experiment) otherwise."""
    raw = with_overrides(old.model_dump(mode="json"), overrides)
    try:
        new = validate(raw)
    except Exception as e:  # noqa: BLE001  (pydantic's ValidationError, as load_spec words it)
        msg = spec_errors(e) if hasattr(e, "errors") else str(e)
        raise SweepSpecError(f"{where}: the extended spec is not valid: {msg}",
                             "change the --set values as said above") from None
    problems = extension_problems(old, new)
    if problems:
        raise SweepSpecError(f"{where}: extend adds seeds or variants and keeps what ran; this "
                             f"changes {'; '.join(problems)}.", "--set only space.KEY.grid (adding "
                             "values), cases, seeds.max / seeds.ci_halfwidth, num_samples, cost; for "
                             "another setup (or other resources, budget, retries) run a new sweep")
    return new


def extension_problems(old: SweepSpec, new: SweepSpec) -> list[str]:
    """What in `new` is not an extension of `old` (the finished trials must stay what they are)."""
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    out = []
    for k in a:
        if k in EXTENDABLE + ("storage", "schema_version") or a[k] == b[k]:
            continue
        if isinstance(a[k], dict) and isinstance(b[k], dict):
            out += [f"{k}.{sub}: {a[k].get(sub)!r} -> {b[k].get(sub)!r}" for sub in {*a[k], *b[k]}
                    if a[k].get(sub) != b[k].get(sub)]
        else:
            out.append(f"{k}: {a[k]!r} -> {b[k]!r}")
    if set(old.space) != set(new.space):
        out.append(f"space: keys {sorted(old.space)} -> {sorted(new.space)} (a new swept key would change "
                   f"what the finished trials are)")
    for k in set(old.space) & set(new.space):
        # 1 and 1.0 are equal, but name different variants in the plan: compare the type too
        gone = [v for v in old.space[k].values
                if not any(v == w and type(v) is type(w) for w in new.space[k].values)]
        if old.space[k].kind != new.space[k].kind or gone:
            out.append(f"space.{k}: {old.space[k].describe()} -> {new.space[k].describe()} (values can "
                       f"be added, not removed)")
    if new.cases[:len(old.cases)] != old.cases:
        out.append("cases: the existing cases must stay, in order; add new ones at the end")
    if (old.seeds is None) != (new.seeds is None):
        out.append("seeds: a fixed seed grid stays fixed (add seeds to space.seed.grid), adaptive seeds "
                   "stay adaptive (raise seeds.max)")
    if new.num_samples < old.num_samples:
        out.append(f"num_samples: {old.num_samples} -> {new.num_samples} (it can grow, not shrink)")
    return out
