"""A sweep file to a SweepSpec: read it, apply `--set` (dotted paths), resolve `base_from` (the
earlier export read once), validate (spec/, pure), read `warm_start`'s export so a bad one fails
before anything starts. Every failure is a SweepSpecError naming the file and where to fix it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vggbn import yaml_input
from vggbn.plan.earlier import read_warm_start, resolve_base_from
from vggbn.spec.model import SweepSpec, SweepSpecError, parse_yaml, spec_errors

FIX_FILE = "give a sweep file (a YAML mapping: name:, base:, space: ...), e.g. sweeps/quick.yaml"


def set_path(d: dict, path: str, value: Any) -> None:
    """One `--set a.b.c=value` into a sweep file's mapping (sections are created as needed)."""
    keys = path.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise SweepSpecError(f"--set {path}: {k} is not a section, so {path} cannot be set.",
                                 f"--set {'.'.join(keys[:keys.index(k) + 1])}=VALUE, or a key of a "
                                 f"section such as base.epochs=3, resources.gpu=0.5, space.seed.grid=[0,1]")
    d[keys[-1]] = value


def with_overrides(raw: dict, overrides: dict[str, Any] | None) -> dict:
    """The mapping with every `--set` applied, in order (the mapping itself is changed)."""
    for k, v in (overrides or {}).items():
        set_path(raw, k, v)
    return raw


def validate(raw: dict) -> SweepSpec:
    """A sweep file's mapping as a SweepSpec: base_from resolved first (a ValueError saying what is
    wrong with the earlier experiment), then pydantic's validation (a ValidationError)."""
    if raw.get("base_from"):
        raw = resolve_base_from(raw)
    return SweepSpec.model_validate(raw)


def read_text(path: Path) -> str:
    """The sweep file's text; a SweepSpecError saying why it cannot be read."""
    if path.is_dir():
        raise SweepSpecError(f"{path}: is a directory, not a sweep file.", "give a YAML file, e.g. "
                             "sweeps/quick.yaml (to continue an experiment: vggbn resume DIR)")
    try:
        return yaml_input.read_bounded(path).decode("utf-8")
    except yaml_input.TooBig as e:
        raise SweepSpecError(f"{path}: {e}, not a sweep file (those are a few KB).", "give a YAML sweep "
                             "file, e.g. sweeps/quick.yaml") from None
    except FileNotFoundError:
        raise SweepSpecError(f"{path}: no such sweep file.", "check the path (the shipped ones are in "
                             "sweeps/, e.g. sweeps/quick.yaml)") from None
    except UnicodeDecodeError:
        raise SweepSpecError(f"{path}: not a text file (not UTF-8).", "give a YAML sweep file, e.g. "
                             "sweeps/quick.yaml") from None
    except OSError as e:
        raise SweepSpecError(f"{path}: cannot be read ({e.strerror or e}).", "check the path and its "
                             "permissions") from None


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Read and validate a sweep file; `overrides` are dotted paths (base.epochs=3)."""
    path = Path(path)
    raw = with_overrides(parse_yaml(read_text(path), str(path), FIX_FILE), overrides)
    try:
        spec = validate(raw)
    except ValidationError as e:
        msg = spec_errors(e)
        locs = [".".join(str(p) for p in err["loc"]) for err in e.errors()]
        raise SweepSpecError(f"{path}: {msg}", _where_to_fix(locs, msg, path, overrides)) from None
    except ValueError as e:  # base_from's earlier experiment: a problem of the whole file
        raise SweepSpecError(f"{path}: {e}", _where_to_fix([""], str(e), path, overrides)) from None
    if spec.warm_start:  # its export is read here, so a bad one fails before anything starts
        try:
            read_warm_start(spec)
        except ValueError as e:
            raise SweepSpecError(f"{path}: {e}", "give warm_start an earlier export of this metric, "
                                 "or remove it") from None
    return spec


def _where_to_fix(locs: list[str], msg: str, path: Path, overrides: dict[str, Any] | None) -> str:
    """The --set that gave the bad value, else the keys in the file (the message says what to write)."""
    sets = [k for k in overrides or {} if any(loc == k or loc.startswith(k + ".") for loc in locs)
            or ("." in k and k in msg)  # a section key named by a spec-wide check: base.dropout=3 ...
            or ("." in k and msg.startswith(k.rsplit(".", 1)[0] + ":")  # base: unknown key 'x'
                and repr(k.rsplit(".", 1)[1]) in msg)]
    if sets:
        return "change " + ", ".join(f"--set {k}" for k in sets) + " as said above"
    keys = ", ".join(dict.fromkeys(loc for loc in locs if loc))
    return f"edit {keys + ' in ' if keys else ''}{path} as said above"
