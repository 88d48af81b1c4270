"""Local files that appear whole or not at all: every file vggbn writes on a local disk goes
through `write_atomic` (object storage: store/experiment.py puts each file in one request)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path


def write_atomic(path: Path, data: bytes | str) -> Path:
    """A temporary file beside `path`, renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.time_ns()}")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # a read-only or full disk: the write's own error is the one to tell
            tmp.unlink(missing_ok=True)
    return path
