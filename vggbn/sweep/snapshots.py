"""The last good copy of Ray's experiment snapshot, so that a resume never starts over.

Ray rewrites its snapshot of the experiment (`experiment_state-*.json`, the searcher's state,
`tuner.pkl`) in place as the sweep runs. A full disk, a killed upload or a hand edit can leave it
truncated; `Tuner.restore` then does not refuse but builds new trials under new ids, and the
export loses the old ones. So, while a driver runs, vggbn copies the snapshot into
`vggbn-last-good/` each time Ray has rewritten it and every file of it reads whole, and before a resume
`check_before_restore` looks at the newest one: whole, it is used; damaged, the last good copy is
put back (the damaged files kept in `vggbn-damaged/`, and the output says so); neither, the resume
is refused. Trials that finished after the good copy run again from their own checkpoints.

"Reads whole": the experiment_state JSON parses to Ray's layout (ray_compat.experiment_state); a
JSON searcher state parses (known by its content: vggbn's plan searcher writes JSON as .pkl); a
pickle (known by its protocol byte: Ray's basic-variant-state-*.json is one) ends with its STOP
opcode (a truncated one does not). No pickle is loaded here: that would run what it holds.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading

from vggbn.errors import ExperimentError
from vggbn.store.experiment import Experiment
from vggbn.sweep import ray_compat

GOOD, DAMAGED = "vggbn-last-good", "vggbn-damaged"
PREFIXES = ("experiment_state-", "basic-variant-state-", "search_gen_state-", "searcher-state-")
KEEP_S = 10.0  # how often a running driver refreshes the good copy (a snapshot is ~100 KB)


def _snapshot_files(names: list[str]) -> list[str]:
    return sorted(n for n in names if n.startswith(PREFIXES) or n == "tuner.pkl")


def whole(name: str, data: bytes | None) -> str | None:
    """Why the snapshot file `name` is damaged, or None if it reads whole."""
    if not data:
        return "empty"
    try:
        if data[:1] == b"\x80":  # a pickle (Ray's basic-variant-state-*.json is one too)
            return None if data.endswith(b".") else "truncated (no pickle STOP at its end)"
        if name.startswith("experiment_state-"):
            ray_compat.experiment_state(data)
        elif data.lstrip()[:1] in (b"{", b"["):  # JSON, whatever its name (vggbn's searcher-state-*.pkl)
            json.loads(data)
        else:
            return "neither JSON nor a pickle"
    except (ValueError, KeyError, TypeError) as e:
        return f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"
    return None


def _read(exp: Experiment, names: list[str]) -> tuple[dict[str, bytes], dict[str, str]]:
    """(the files' bytes, why each damaged one is)."""
    data, bad = {}, {}
    for n in names:
        b = exp.read_bytes(n)
        why = whole(n, b)
        if why:
            bad[n] = why
        else:
            data[n] = b
    return data, bad


def _stamp(exp: Experiment, names: list[str]) -> tuple:
    """What changes when Ray rewrites a snapshot file: each file's size and modification time."""
    import pyarrow.fs as pafs

    infos = exp.fs.get_file_info([exp.path(n) for n in names])
    return tuple((i.base_name, i.size, i.mtime_ns) for i in infos if i.type == pafs.FileType.File)


def keep_good(exp: Experiment, last: tuple | None = None) -> tuple | None:
    """Copy the current snapshot into GOOD if it changed since `last` (a stamp this returned) and
    every file of it reads whole; the stamp of what GOOD now holds (`last` when nothing was copied)."""
    names = _snapshot_files(exp.listdir())
    if not any(n.startswith("experiment_state-") for n in names):
        return last
    stamp = _stamp(exp, names)
    if stamp == last:
        return last
    data, bad = _read(exp, names)
    if bad:
        return last
    for n, b in data.items():  # each file atomic: a failure (ENOSPC) leaves the previous copy whole
        exp.write_bytes(f"{GOOD}/{n}", b)
    return stamp


@contextlib.contextmanager
def keeping_good(exp: Experiment, every_s: float | None = None):
    """keep_good in a thread while the block runs (the Tuner's fit), and once after: every second
    on local disk (a stat; a copy only when Ray wrote), every KEEP_S on object storage."""
    every_s = every_s or (1.0 if exp.local else KEEP_S)
    stop = threading.Event()
    last: list = [None]

    def once():
        with contextlib.suppress(OSError, ExperimentError):  # a full disk now: the old copy stays
            last[0] = keep_good(exp, last[0])

    def loop():
        once()
        while not stop.wait(every_s):
            once()

    t = threading.Thread(target=loop, name="vggbn-last-good", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(timeout=60)
        once()


def check_before_restore(exp: Experiment) -> str | None:
    """Before Tuner.restore: None when the newest snapshot reads whole; a line saying what was put
    back when it was damaged and the last good copy was; ExperimentError when no copy reads whole."""
    names = _snapshot_files(exp.listdir())
    _, bad = _read(exp, names)
    if not bad:
        return None
    good_names = _snapshot_files(exp.listdir(GOOD))
    good, good_bad = _read(exp, [f"{GOOD}/{n}" for n in good_names])
    damage = "; ".join(f"{n}: {why}" for n, why in bad.items())
    if not good or good_bad or not any(n.startswith(f"{GOOD}/experiment_state-") for n in good):
        raise ExperimentError(
            f"{exp.uri}: Ray's snapshot of the experiment is damaged ({damage}) and vggbn has no good copy "
            f"of it: a resume would start every trial over under new ids.",
            f"`vggbn export {exp.uri}` exports what the trials' own files hold; a new sweep (--set "
            f"name=NEW) runs them again")
    for n in bad:  # kept for whoever wants to look, out of Ray's way
        b = exp.read_bytes(n)
        if b is not None:
            exp.write_bytes(f"{DAMAGED}/{n}", b)
    restored = {g.removeprefix(f"{GOOD}/"): b for g, b in good.items()}
    for n in set(names) - set(restored):
        exp.remove(n)  # a newer file the good copy does not have (it would shadow it)
    for n, b in restored.items():
        exp.write_bytes(n, b)
    line = (f"vggbn: {exp.uri}: Ray's snapshot was damaged ({damage}); resuming from vggbn's last good copy "
            f"(the damaged files are in {exp.join(DAMAGED)}; trials that finished after that copy run again "
            f"from their checkpoints)")
    print(line, file=sys.stderr)
    return line

