"""PB2 (Parker-Holder et al. 2020): PBT whose new values come from a GP bandit within the space's
bounds. An optional extra (`pip install 'vggbn[pb2]'`: Ray's PB2 fits its GP with scikit-learn,
which Ray imports only when PB2 fits); the spec refuses `scheduler: {type: pb2}` without it."""

from __future__ import annotations

from ray.tune.schedulers.pb2 import PB2

from vggbn.sweep.schedulers.pbt import PBTScheduler, common, hyperparam_bounds


class PB2Scheduler(PBTScheduler, PB2):
    """PBTScheduler's rules (no perturbation at a trial's last epoch, the budget, the error
    snapshot) over PB2's choice of new values (PB2 is a PopulationBasedTraining: the MRO puts
    PBTScheduler's overrides first, then PB2's, then Ray's PBT)."""


def build(spec) -> PB2Scheduler:
    """The PB2 scheduler for the spec, with vggbn's budget and error snapshot."""
    return PB2Scheduler(hyperparam_bounds=hyperparam_bounds(spec), **common(spec))
