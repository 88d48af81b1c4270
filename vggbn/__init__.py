"""vggbn: ablation and hyperparameter studies of VGG / BatchNorm CNN training on Ray Tune.

`import vggbn` imports no Ray (and no torch until a name that needs it is used).
"""

from __future__ import annotations

_API = {
    "VggbnError": "errors", "TrialConfig": "config", "ConfigError": "errors", "fit": "train",
    "build_model": "models",
    "load_spec": "plan.load", "SweepSpec": "spec.model", "SweepSpecError": "spec.model",
    "run_sweep": "sweep.runner", "resume_sweep": "sweep.runner", "export_sweep": "sweep.export",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        from importlib import import_module

        module = import_module(f"{__name__}.{_API[name]}")
        return getattr(module, "export" if name == "export_sweep" else name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
