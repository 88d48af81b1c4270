"""Old module paths, kept importable because experiments already on disk refer to them.

Ray pickles a sweep's trainable, scheduler, searcher and callbacks *by reference* (module path +
name) into `tuner.pkl` and its experiment snapshot; `vggbn resume` and Ray's workers unpickle them.
Experiments started before vggbn's layers were split name modules that have moved since, so each
old path is an alias of the module that owns the name now. Loaded on first import of an old path
only (a meta-path finder installed by vggbn/sweep/__init__.py), so no alias costs an import.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# old module path -> where its names live now
MOVED = {
    "vggbn.sweep.spec": "vggbn.spec.model",
    "vggbn.sweep.space": "vggbn.spec.space",
    "vggbn.sweep.tracking": "vggbn.spec.tracking",
    "vggbn.sweep.loggers": "vggbn.sweep.callbacks.tensorboard",
    "vggbn.sweep.trackers": "vggbn.sweep.callbacks.trackers",
    "vggbn.sweep.progress": "vggbn.sweep.callbacks.progress",
    "vggbn.sweep.experiment": "vggbn.store.experiment",
    "vggbn.sweep.checkpoint": "vggbn.store.checkpoint",
    "vggbn.sweep.pbt_record": "vggbn.store.pbt_record",
    "vggbn.sweep.earlier": "vggbn.plan.earlier",
    "vggbn.sweep.preview": "vggbn.plan.dry_run",
    "vggbn.sweep.optuna_space": "vggbn.plan.optuna_space",
    "vggbn.sweep.pbt": "vggbn.sweep.schedulers.pbt",
    "vggbn.sweep.pb2": "vggbn.sweep.schedulers.pb2",
    "vggbn.sweep.distributed": "vggbn.sweep.data_parallel",
    "vggbn.storage": "vggbn.uri",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """An old path becomes a small module whose names are looked up in the new one (the new
    module keeps its own name, so what is pickled today names today's path)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module) -> None:
        target = MOVED[module.__name__]
        module.__doc__ = f"Moved to {target} (vggbn/sweep/compat.py)."
        module.__getattr__ = lambda name: getattr(importlib.import_module(target), name)


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
