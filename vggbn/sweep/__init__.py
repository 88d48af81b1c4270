"""The Ray layer: runner, trainable, export, status, surfaces, schedulers/, search/, callbacks/.

Importing this package imports no Ray: the names below are loaded on first use. Old experiments
pickled some names by their module paths of earlier releases: `vggbn.sweep.FIFO`,
`vggbn.sweep.PersistentASHA`, `vggbn.sweep.SchedulerState`, `vggbn.sweep.vggbn_trial` (here) and
the modules that have moved since (compat.py).
"""

from __future__ import annotations

from importlib import import_module

from vggbn.sweep import compat

compat.install()

_LAZY = {
    "run_sweep": "vggbn.sweep.runner", "resume_sweep": "vggbn.sweep.runner",
    "build_tuner": "vggbn.sweep.runner", "check_ray": "vggbn.sweep.runner",
    "export": "vggbn.sweep.export", "landscape": "vggbn.sweep.surfaces",
    # names that tuner.pkl files of earlier releases hold as vggbn.sweep.<name>
    "FIFO": "vggbn.sweep.schedulers", "PersistentASHA": "vggbn.sweep.schedulers",
    "SchedulerState": "vggbn.sweep.schedulers", "vggbn_trial": "vggbn.sweep.trainable",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
