"""Provenance: versions, git commit, host and device, stored with every result file."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch


def _git_commit() -> tuple[str | None, bool | None]:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain", "-uno"],
                                    capture_output=True, text=True, timeout=5).stdout.strip())
        return commit, (dirty if commit else None)
    except (OSError, subprocess.SubprocessError):
        return None, None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"cpu: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def provenance(device: torch.device | None = None) -> dict[str, Any]:
    """Versions, git commit, host and device: stored with every result file."""
    commit, dirty = _git_commit()
    return {"vggbn_version": version("vggbn"), "torch_version": torch.__version__,
            "torchvision_version": version("torchvision"), "ray_version": version("ray"),
            "python_version": platform.python_version(), "git_commit": commit, "git_dirty": dirty,
            "hostname": socket.gethostname(), "platform": platform.platform(),
            "device": str(device) if device is not None else None,
            "device_name": device_name(device) if device is not None else None,
            "cuda_version": torch.version.cuda,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
