"""A trial's limits: out-of-memory detection and its message, memory caps, the no-CUDA message.

Out of memory and a GPU that torch cannot see are deterministic: a retry on the same resources
fails the same way, so the trial runtime (sweep/runtime.py) writes these one-line reasons as the
trial's error instead of letting Ray retry. benchmarks/gpu_check.py uses the same calls, so what it
measures is what a sweep's trial does. No Ray: the caller passes what Ray gave the trial.
`resources` is Ray's resource dict of one process: "CPU", "GPU" (a share), "memory" (bytes).
"""

from __future__ import annotations

import gc
from pathlib import Path


def is_oom(e: BaseException) -> bool:
    """torch's CUDA out-of-memory, Python's MemoryError, or the CPU allocator refusing (RLIMIT_DATA)."""
    import torch

    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def oom_message(cfg, device, e: BaseException, resources: dict) -> str:
    """One line: where it ran out, the budget it had, the knobs that set its size, how to fix it."""
    import torch

    what = " ".join(str(e).split())
    what = what[what.find("DefaultCPUAllocator"):] if "DefaultCPUAllocator" in what else what
    if device.type == "cuda":
        share = resources.get("GPU", 0)
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        budget = f"resources.gpu={share or 1:g} of {total:.1f} GiB"
        more = "give each trial a larger resources.gpu (fewer trials per GPU)"
    else:
        mem = resources.get("memory", 0)
        budget = f"resources.memory_gb={mem / 2**30:g}" if mem else "resources.memory_gb unset"
        more = "raise resources.memory_gb" if mem else "run fewer trials per node"
    bf16 = ", use precision=bf16" if cfg.precision == "fp32" else ""
    return (f"out of memory on {device} ({budget}; batch_size={cfg.batch_size}, "
            f"eval_batch_size={cfg.eval_batch_size}, arch={cfg.arch}, width={cfg.width:g}, "
            f"precision={cfg.precision}): {what[:300]}. Fix: lower batch_size, eval_batch_size or "
            f"width{bf16}, or {more}. Only this trial stopped.")


def free_memory(device) -> None:
    """After an out-of-memory (outside its except block, so the failed step's tensors can go)."""
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def needs_cuda(resources: dict) -> bool:
    """Ray reserved a GPU for this process, but torch sees no CUDA (it would train on the CPU)."""
    import torch

    return resources.get("GPU", 0) > 0 and not torch.cuda.is_available()


def no_cuda_message(resources: dict, node: str, gpu_ids: list) -> str:
    """Why a process that Ray gave a GPU sees no CUDA, in one line; `node` its IP, `gpu_ids` Ray's."""
    import os

    import torch

    ids = ",".join(map(str, gpu_ids)) or "none"
    why = ("torch is a CPU-only build" if torch.version.cuda is None
           else f"torch finds no usable CUDA device (no NVIDIA driver, or CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r} names none)")
    return (f"no CUDA on node {node}: Ray gave this trial "
            f"resources.gpu={resources.get('GPU', 0):g} (GPU ids {ids}), but {why} "
            f"(torch {torch.__version__}), so it would train on the CPU. Fix: install the NVIDIA driver "
            f"and a CUDA build of torch on the GPU nodes, or set resources.gpu=0 to run on CPUs. "
            f"Only this trial stopped.")


def cap_gpu_memory(share: float, device) -> None:
    """Packed trials (0 < resources.gpu < 1) keep to their share of the GPU's memory: past
    share x total, the caching allocator raises OutOfMemoryError in this process alone."""
    import torch

    if device.type == "cuda" and 0 < share < 1:  # torch wants an index: "cuda" alone is refused
        index = torch.cuda.current_device() if device.index is None else device.index
        torch.cuda.set_per_process_memory_fraction(float(share), index)


def cap_host_memory(nbytes: int) -> None:
    """Cap this process's private memory (RLIMIT_DATA) at what it uses now + nbytes, so a too-big
    CPU trial gets a clean allocation error. nbytes 0 lifts an earlier trial's cap (reused actors)."""
    try:
        import resource
    except ImportError:  # not on Linux/macOS: Ray's reservation still applies
        return
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if not nbytes:
        resource.setrlimit(resource.RLIMIT_DATA, (hard, hard))
        return
    try:
        status = Path("/proc/self/status").read_text()
        used = int(status.split("VmData:")[1].split()[0]) * 1024
    except (OSError, IndexError, ValueError):
        return
    soft = used + int(nbytes)
    resource.setrlimit(resource.RLIMIT_DATA, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def cap_memory(resources: dict, device) -> None:
    """Both caps, as a trial sets them: a GPU share on CUDA, resources.memory_gb on the CPU (and
    no host cap on a GPU trial, whose reserved memory is the GPU's)."""
    cap_gpu_memory(resources.get("GPU", 0), device)
    cap_host_memory(int(resources.get("memory", 0)) if device.type == "cpu" else 0)
