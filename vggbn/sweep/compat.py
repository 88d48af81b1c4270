"""Old module paths, kept importable because experiments already on disk refer to them.

Ray pickles a sweep's trainable, scheduler, searcher and callbacks *by reference* (module path +
name) into `tuner.pkl` and its experiment snapshot; `vggbn resume` and Ray's workers unpickle them.
Experiments started before vggbn's layers were split name modules that have moved since, so each
old path is an alias of the module(s) that own its names now (a module split in two is looked up
in both; a name renamed since is in RENAMED). Loaded on first import of an old path
only (a meta-path finder installed by vggbn/sweep/__init__.py), so no alias costs an import.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# old module path -> the module(s) its names live in now, looked up in this order
MOVED: dict[str, str | tuple[str, ...]] = {
    "vggbn.sweep.spec": "vggbn.spec.model",
    "vggbn.sweep.space": "vggbn.spec.space",
    # the Tracking model stayed pure; its check, builder and helpers went to the callbacks
    "vggbn.sweep.tracking": ("vggbn.spec.tracking", "vggbn.sweep.callbacks",
                             "vggbn.sweep.callbacks.trial_values"),
    "vggbn.sweep.loggers": "vggbn.sweep.callbacks.tensorboard",
    "vggbn.sweep.trackers": "vggbn.sweep.callbacks",  # MLflow (mlflow.py) and WandB (wandb.py)
    "vggbn.sweep.progress": "vggbn.sweep.callbacks.progress",
    "vggbn.sweep.experiment": "vggbn.store.experiment",
    "vggbn.sweep.checkpoint": "vggbn.store.checkpoint",
    "vggbn.sweep.pbt_record": "vggbn.store.pbt_record",
    "vggbn.sweep.earlier": "vggbn.plan.earlier",
    "vggbn.sweep.preview": "vggbn.plan.dry_run",
    "vggbn.sweep.optuna_space": "vggbn.plan.optuna_space",
    "vggbn.sweep.pbt": ("vggbn.sweep.schedulers.pbt", "vggbn.spec.pbt"),  # Clip; the PBT rules
    "vggbn.sweep.pb2": "vggbn.sweep.schedulers.pb2",  # PB2Scheduler
    "vggbn.sweep.distributed": "vggbn.sweep.data_parallel",
    "vggbn.storage": "vggbn.uri",
}
# (old module path, old name) -> its name now
RENAMED = {
    ("vggbn.sweep.trackers", "_WandbActor"): "WandbActor",
    ("vggbn.sweep.tracking", "swept_keys"): "searched_keys",
}


def resolve(old_module: str, name: str):
    """What `old_module.name` is now."""
    new = RENAMED.get((old_module, name), name)
    targets = MOVED[old_module]
    for target in (targets,) if isinstance(targets, str) else targets:
        module = importlib.import_module(target)
        if hasattr(module, new):
            return getattr(module, new)
    raise AttributeError(f"module {old_module!r} (moved to {targets}) has no attribute {name!r}")


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
        old = module.__name__
        module.__doc__ = f"Moved to {MOVED[old]} (vggbn/sweep/compat.py)."
        module.__getattr__ = lambda name: resolve(old, name)


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
