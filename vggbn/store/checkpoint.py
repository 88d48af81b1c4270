"""The trial checkpoint format: one owner for writing, checking and loading it.

A checkpoint is a directory `checkpoint_NNNNNN/` in the trial's directory (local or object storage):

- `state.pt`: the resumable training state of `fit` (model, optimizer, scheduler, RNG, history, the
  config it ran with). Loaded only with `torch.load(weights_only=True)`: a checkpoint is data, and
  whoever can write the storage must not be able to run code by writing one.
- `meta.json`: epoch, `state_sha256` (checked before state.pt is used), parameter count,
  provenance, the trial's resolved config and the schema version. The export reads only this and
  the JSON files below, never state.pt.
- `epochs.json`, `steps.json`, `probes.json`: the trial's history so far, for the export.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

from vggbn.schema import CKPT_JSON, CKPT_META, CKPT_STATE, RESTORE_NOTE_PREFIX, SCHEMA_VERSION

_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def write(directory: Path, state: dict, meta: dict[str, Any]) -> None:
    """Write `state` (fit's on_epoch state) and its metadata into a local directory."""
    import torch

    directory = Path(directory)
    buf = io.BytesIO()
    torch.save(state, buf)
    raw = buf.getvalue()
    (directory / CKPT_STATE).write_bytes(raw)
    params = sum(v.numel() for k, v in state["model"].items() if not k.endswith(_BN_BUFFERS))
    (directory / CKPT_META).write_text(json.dumps(
        {"schema_version": SCHEMA_VERSION, **meta, "epoch": state["epoch"],
         "state_sha256": hashlib.sha256(raw).hexdigest(), "params": params}))
    for key, name in CKPT_JSON.items():
        if state.get(key):
            (directory / name).write_text(json.dumps(state[key]))


def _read(fs, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def read_meta(fs, ckpt_path: str) -> dict | None:
    """meta.json of a checkpoint, or None when it is missing or unreadable."""
    try:
        meta = json.loads(_read(fs, f"{ckpt_path}/{CKPT_META}").decode())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def read_history(fs, ckpt_path: str) -> dict[str, list]:
    """{'history': [...], 'steps': [...], 'probes': [...]} from the checkpoint's JSON files."""
    out = {}
    for key, name in CKPT_JSON.items():
        try:
            value = json.loads(_read(fs, f"{ckpt_path}/{name}").decode())
        except (OSError, ValueError):
            value = []
        out[key] = value if isinstance(value, list) else []
    return out


def load_state(fs, ckpt_path: str) -> dict:
    """One checkpoint's training state, checked against the sha256 in meta.json; weights_only."""
    import torch

    meta = json.loads(_read(fs, f"{ckpt_path}/{CKPT_META}").decode())
    raw = _read(fs, f"{ckpt_path}/{CKPT_STATE}")
    want = meta.get("state_sha256")
    if want and hashlib.sha256(raw).hexdigest() != want:
        raise ValueError(f"{CKPT_STATE} is damaged ({len(raw)} bytes, sha256 does not match {CKPT_META})")
    return torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")


def list_checkpoints(fs, trial_dir: str, before: str | None = None) -> list[str]:
    """Paths of the trial's checkpoint_* directories, newest first (only those named < before)."""
    import pyarrow.fs as pafs

    try:
        found = fs.get_file_info(pafs.FileSelector(trial_dir))
    except (OSError, FileNotFoundError):
        return []
    return sorted((i.path for i in found if i.type == pafs.FileType.Directory
                   and i.base_name.startswith("checkpoint_") and (before is None or i.base_name < before)),
                  reverse=True)


def with_meta(fs, trial_dir: str) -> list[tuple[str, dict]]:
    """(path, meta.json) of the trial's checkpoints with readable metadata, newest first."""
    return [(p, meta) for p in list_checkpoints(fs, trial_dir) if (meta := read_meta(fs, p))]


def newest_readable(fs, paths: list[str]) -> tuple[dict | None, str | None, list[str]]:
    """(state, path used, what was wrong with each newer one) over paths, newest first."""
    bad = []
    for path in paths:
        try:
            return load_state(fs, path), path, bad
        except Exception as e:  # any unreadable checkpoint: try the previous one
            bad.append(f"{path.rsplit('/', 1)[1]}: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
    return None, None, bad


def resume_state(ckpt) -> dict | None:
    """The state of the newest readable checkpoint, from Ray's latest (a ray.tune.Checkpoint) back
    through the older ones kept (keep_checkpoints). A damaged one is skipped with a warning and a
    restore-*.json note beside the trial's checkpoints (the export reads it); with none readable
    the trial restarts from epoch 0."""
    fs, latest = ckpt.filesystem, ckpt.path.rstrip("/")
    trial_dir, name = latest.rsplit("/", 1)
    state, used, bad = newest_readable(fs, [latest, *list_checkpoints(fs, trial_dir, before=name)])
    if bad:
        _restore_note(fs, trial_dir, bad, used and used.rsplit("/", 1)[1], state.get("epoch") if state else 0)
    return state


def _restore_note(fs, trial_dir: str, bad: list[str], used: str | None, epoch) -> None:
    text = (f"unreadable checkpoint(s) {'; '.join(bad)}; "
            + (f"resumed from {used} (epoch {epoch})" if used else "no readable checkpoint: restarted from epoch 0"))
    warnings.warn(f"vggbn: {text}", stacklevel=3)
    logging.getLogger("vggbn").warning(text)
    try:  # a new file each time: one put, never a rewrite
        with fs.open_output_stream(f"{trial_dir}/{RESTORE_NOTE_PREFIX}{time.time_ns()}.json") as f:
            f.write(json.dumps({"time": time.time(), "unreadable": bad, "resumed_from": used,
                                "epoch": epoch, "note": text}).encode())
    except OSError:
        pass


def restore_notes(fs, trial_dir: str) -> str | None:
    """What the trial's restore-*.json notes say, oldest first."""
    import pyarrow.fs as pafs

    try:
        found = fs.get_file_info(pafs.FileSelector(trial_dir))
    except (OSError, FileNotFoundError):
        return None
    notes = []
    for info in sorted(found, key=lambda i: i.base_name):
        if info.base_name.startswith(RESTORE_NOTE_PREFIX) and info.base_name.endswith(".json"):
            try:
                notes.append(str(json.loads(_read(fs, info.path).decode())["note"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return " | ".join(notes) or None


def prune_finished(fs, trial_dir: str) -> int:
    """A finished trial keeps its newest readable checkpoint (the surfaces need it) and none older.
    Returns how many were removed. Nothing is removed unless the one kept loads (sha256 and
    weights_only)."""
    paths = list_checkpoints(fs, trial_dir)
    if len(paths) < 2:
        return 0
    _, keep, _ = newest_readable(fs, paths)
    if keep is None:
        return 0
    older = paths[paths.index(keep) + 1:]
    for p in older:
        try:
            fs.delete_dir(p)
        except OSError:
            continue
    return len(older)
