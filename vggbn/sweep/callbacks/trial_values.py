"""What the trackers (TensorBoard, MLflow, W&B) record of a trial: its resolved values, the keys
that tell trials apart, its variant/seed labels, and the metrics it reports per epoch."""

from __future__ import annotations

from typing import Any

from vggbn.config import ConfigError, TrialConfig
from vggbn.schema import COSTS, EPOCH_METRICS
from vggbn.spec.model import flat_config

LOGGED = (*EPOCH_METRICS, *COSTS)  # what a trial reports per epoch (Ray's bookkeeping keys are left out)


def searched_keys(spec) -> list[str]:
    """The keys the sweep file varies between its trials: every key a case sets, the space's keys,
    the seed (last). (analysis's `swept_keys` is another thing: the keys whose values differ among
    exported trials.)"""
    keys = [k for c in spec.cases for k in c] + list(spec.space)
    return [*dict.fromkeys(k for k in keys if k != "seed"), "seed"]


def trial_values(config: dict) -> dict[str, Any]:
    """A trial's resolved config (as the trial will resolve it), or its raw flat keys if it cannot
    resolve (that trial errors on its own)."""
    flat = flat_config(config)
    try:
        return TrialConfig.from_flat(flat).to_flat()
    except ConfigError:
        return flat


def labels(values: dict[str, Any], searched: list[str]) -> tuple[str, str]:
    """(variant, seed): 'bn=True, lr=0.001' and '0' — what runs are grouped and compared by."""
    variant = ", ".join(f"{k}={values.get(k)}" for k in searched if k != "seed") or "all"
    return variant, str(values.get("seed"))


def scalar(v: Any) -> Any:
    """A config value as a tracker's scalar: lists (probe_etas) as their text."""
    return v if isinstance(v, (bool, int, float, str)) or v is None else str(list(v) if isinstance(v, tuple) else v)
