"""Test-side hold points for tests/test_distributed.py and tests/test_lease.py, loaded by every
Python process of a sweep that the test starts with this folder first on PYTHONPATH (CPython imports `sitecustomize` at
start-up; a local Ray's workers inherit the driver's environment).

Off unless VGGBN_TEST_HOLD_DIR is set. Then, in a data-parallel worker (torch.distributed is up
when fit() is called; with VGGBN_TEST_HOLD_SINGLE set, in any trial), `vggbn.train.fit` is wrapped
as the module loads: as a rank starts an epoch (at fit's start, and after each on_epoch) it writes
rank<r>.json (pid<pid>.json for a single-process trial: its pid, the epoch) in that folder and
waits while hold-epoch-<epoch> exists there, so the test kills a worker at a known
point without timing guesses. Nothing in vggbn knows about it.
"""

import importlib.abc
import json
import os
import sys
import time
from pathlib import Path

HOLD_DIR_ENV = "VGGBN_TEST_HOLD_DIR"
SINGLE_ENV = "VGGBN_TEST_HOLD_SINGLE"  # set: single-process trials are held too (their note: pid<pid>.json)
TARGET = "vggbn.train"


def _note(where: Path, rank: str, epoch: int) -> None:
    tmp = where / f".{rank}.json.tmp"
    tmp.write_text(json.dumps({"pid": os.getpid(), "epoch": epoch}))
    os.replace(tmp, where / f"{rank}.json")  # the test never reads half a note
    hold = where / f"hold-epoch-{epoch}"
    while hold.exists():
        time.sleep(0.05)


def _held(fit, where: Path):
    def held_fit(cfg, on_epoch=None, resume_state=None, **kw):
        import torch.distributed as td

        if td.is_available() and td.is_initialized():
            rank = f"rank{td.get_rank()}"
        elif os.environ.get(SINGLE_ENV):
            rank = f"pid{os.getpid()}"
        else:  # a single-process trial where only the workers are held
            return fit(cfg, on_epoch, resume_state, **kw)
        _note(where, rank, (resume_state or {}).get("epoch", 0) + 1)

        def on_epoch_then_note(metrics, state):
            if on_epoch is not None:
                on_epoch(metrics, state)
            _note(where, rank, metrics["epoch"] + 1)

        return fit(cfg, on_epoch_then_note, resume_state, **kw)

    return held_fit


class _Loader(importlib.abc.Loader):
    """vggbn.train's own loader, then fit wrapped before any `from vggbn.train import fit` binds it."""

    def __init__(self, inner, where: Path):
        self.inner, self.where = inner, where

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        module.fit = _held(module.fit, self.where)

    def __getattr__(self, name):  # get_source, get_code, ...: the real loader's
        return getattr(self.inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, where: Path):
        self.where = where

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                spec.loader = _Loader(spec.loader, self.where)
                return spec
        return None


if os.environ.get(HOLD_DIR_ENV):
    sys.meta_path.insert(0, _Finder(Path(os.environ[HOLD_DIR_ENV])))
