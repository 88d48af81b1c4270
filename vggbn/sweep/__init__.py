"""Everything that touches Ray, one concern per module (see the README's "Architecture").

Importing this package imports no Ray: spec.py needs none, and the names below that do are loaded
on first use. The names `FIFO`, `PersistentASHA`, `SchedulerState` and `vggbn_trial` stay
importable here because Ray's `tuner.pkl` of sweeps started before this package existed refers to
them as `vggbn.sweep.<name>`.
"""

from __future__ import annotations

from .spec import CASE_KEY, SweepSpec, SweepSpecError, dry_run, flat_config, load_spec

_LAZY = {
    "run_sweep": "runner", "resume_sweep": "runner", "build_tuner": "runner", "check_ray": "runner",
    "export": "export", "landscape": "surfaces", "Experiment": "experiment",
    "ExperimentError": "experiment",
    # module paths of the release before 2026-11-28, as pickled in its tuner.pkl
    "FIFO": "schedulers", "PersistentASHA": "schedulers", "SchedulerState": "schedulers",
    "vggbn_trial": "trainable",
}

__all__ = ["CASE_KEY", "SweepSpec", "SweepSpecError", "dry_run", "flat_config", "load_spec", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
