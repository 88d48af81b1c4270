"""What every command checks before it imports what it needs: --set pairs, experiment directories,
exported results. Light on purpose: nothing here imports torch, Ray or pandas (pyarrow's filesystems
only once a path is looked at), so that bad input answers at once."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from vggbn import yaml_input
from vggbn.errors import ResultsError, UsageError, cut
from vggbn.store.experiment import Experiment
from vggbn.store.exports import ExportDir


def parse_sets(items: list[str] | None, where: str = "--set") -> dict[str, Any]:
    """['key=value', ...] -> dict; values parsed as YAML scalars (1e-3, true, null, [1, 2])."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{where} {item!r} is not KEY=VALUE.", f"write e.g. {where} epochs=3")
        try:
            parsed = yaml_input.load(value) if value.strip() else None
        except yaml.YAMLError:
            parsed = value
        except yaml_input.TooBig as e:
            raise UsageError(f"{where} {cut(item)}: the value is {e}.", f"give a plain value, e.g. {where} "
                             f"{key.strip()}=3 or {key.strip()}=[1,2]") from None
        out[key.strip()] = parsed
    return out


def experiment(path: str) -> Experiment:
    """A sweep's directory with its stored spec, read as the command itself reads it first (the same
    ExperimentError for a missing directory, a file, a damaged spec.yaml, an unreadable bucket)."""
    exp = Experiment(path)
    exp.spec()
    return exp


def exported(paths: list[str | Path]) -> None:
    """Directories with an export to analyse (analysis.results.load checks the same, then parses)."""
    for path in paths:
        ExportDir(path, ResultsError).check()


def out_dir(out: Path, example: str = "runs") -> Path:
    """`--out` of train, report or landscape, created before any work: a bad one fails at once."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        what = "is a file, not a directory" if out.is_file() else f"cannot be created ({e.strerror or e})"
        raise UsageError(f"--out {out}: {what}.", f"give a directory (it is created if it does not exist), "
                         f"e.g. --out {example}/{out.name or 'run'}") from None
    return out


def default_out(out: Path, example: str = "reports") -> Path:
    """Where a command writes without --out: checked before any work that it could be made (a trial
    directory made and removed in its nearest existing parent), but not made, so that a command that
    fails later leaves nothing behind."""
    parent = next(p for p in [out, *out.parents] if p.exists())
    try:
        if not parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{parent} is a file, not a directory")
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".vggbn-check-"))
    except OSError as e:
        raise UsageError(f"{out}, where this command writes without --out, cannot be created "
                         f"({e.strerror or e}).", f"give --out a directory on a disk you can write, e.g. "
                         f"--out {example}/{out.parent.name or 'run'}") from None
    return out
