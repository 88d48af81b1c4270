"""Trial schedulers, one module each: fifo, asha (with its state callback), pbt, pb2; budget.py is
the resource budget every one of them carries.

tuner.pkl files of earlier releases name `vggbn.sweep.schedulers.FIFO`, `.PersistentASHA`,
`.PBTScheduler` and `.SchedulerState`: the names below keep them resolvable.
"""

from __future__ import annotations

from vggbn.sweep.schedulers import asha, pb2, pbt
from vggbn.sweep.schedulers.asha import PersistentASHA, SchedulerState
from vggbn.sweep.schedulers.budget import BudgetMixin, attach
from vggbn.sweep.schedulers.fifo import FIFO
from vggbn.sweep.schedulers.pb2 import PB2Scheduler
from vggbn.sweep.schedulers.pbt import Clip, PBTScheduler

__all__ = ["FIFO", "PersistentASHA", "SchedulerState", "PBTScheduler", "PB2Scheduler", "Clip",
           "BudgetMixin", "build"]


def build(spec) -> tuple[object, list]:
    """(scheduler, callbacks) for a SweepSpec, the scheduler with the spec's budget."""
    kind = spec.scheduler.type
    if kind == "pbt":
        sched, callbacks = pbt.build(spec), []
    elif kind == "pb2":
        sched, callbacks = pb2.build(spec), []
    elif kind == "asha":
        sched, callbacks = asha.build(spec)
    else:
        sched, callbacks = FIFO(), []
    attach(sched, spec)
    return sched, callbacks
