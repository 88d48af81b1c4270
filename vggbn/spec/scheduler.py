"""The spec's scheduler section (fifo, asha, pbt, pb2) and its cross-field rules; the schedulers
themselves are sweep/schedulers/'s."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from vggbn.spec import pbt

if TYPE_CHECKING:
    from vggbn.spec.model import SweepSpec


class Scheduler(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["fifo", "asha", "pbt", "pb2"] = "fifo"
    grace_period: int = Field(1, ge=1, description="epochs before ASHA may stop a trial")
    reduction_factor: float = Field(3.0, gt=1.0, description="ASHA keeps 1/reduction_factor per rung")
    max_t: int | None = Field(None, ge=1, description="ASHA's last rung in epochs (default: epochs)")
    # population based training (pbt; pb2 picks the new values with a GP bandit): see spec/pbt.py
    perturbation_interval: int = Field(2, ge=1, description="PBT: epochs between a trial's exploit/explore steps")
    burn_in: int = Field(0, ge=0, description="PBT: epochs before a trial is first perturbed")
    perturb: list[str] | None = Field(None, description="PBT: the space's keys to perturb (default: "
                                      "those of lr, weight_decay, label_smoothing, momentum in space)")
    quantile_fraction: float = Field(0.25, ge=0.0, le=0.5, description="PBT: the bottom fraction "
                                     "clones the top fraction's weights and values")
    resample_probability: float = Field(0.25, ge=0.0, le=1.0, description="PBT: chance a value is "
                                        "drawn afresh from its space instead of perturbed")
    perturbation_factors: list[float] = Field([1.2, 0.8], min_length=1, description="PBT: a "
                                              "perturbed value is multiplied by one of these")
    synch: bool = Field(False, description="PBT: perturb the whole population at once (waits for "
                        "the slowest trial)")


def check_scheduler(spec: SweepSpec) -> None:
    """ASHA's rungs within the trials' epochs; PBT's and PB2's rules (spec/pbt.py)."""
    if spec.scheduler.type in pbt.TYPES:
        pbt.check(spec)
    if spec.scheduler.type == "asha":
        epochs = max(spec.trial_epochs())
        max_t = spec.scheduler.max_t or epochs
        if max_t > epochs:
            raise ValueError(f"scheduler.max_t: {max_t} is beyond the trials' {epochs} epochs")
        if spec.scheduler.grace_period > max_t:
            raise ValueError(f"scheduler.grace_period: {spec.scheduler.grace_period} is "
                             f"beyond max_t {max_t}")
