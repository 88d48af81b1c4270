"""The spec's searched keys as Ray Tune's domains: the one place the spec meets Ray's search API
(spec/ stays free of Ray)."""

from __future__ import annotations

from typing import Any

from ray import tune

from vggbn.spec.model import CASE_KEY, SweepSpec
from vggbn.spec.space import Dim, When


def to_tune(dim: Dim):
    """A Dim as Ray Tune's grid_search / choice / uniform / loguniform / randint."""
    v = dim.values
    if dim.kind == "grid":
        return tune.grid_search(list(v))
    if dim.kind == "choice":
        return tune.choice(list(v))
    return getattr(tune, dim.kind)(v[0], v[1])  # uniform, loguniform, randint


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """The Tuner's param_space: base, the searched keys (conditional ones are the searcher's), and
    the cases as one more grid dimension."""
    space = {**spec.base, **{k: to_tune(d) for k, d in spec.space.items() if not isinstance(d, When)}}
    if spec.cases:
        space[CASE_KEY] = tune.grid_search([dict(c) for c in spec.cases])
    return space
