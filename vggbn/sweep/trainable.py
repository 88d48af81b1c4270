"""The Ray trainable around `fit()`: one trial, its resolved config, its checkpoints, and the
failures that are deterministic (out of memory, an invalid config).

The trial's resolved config is the truth: written once, when the trial first starts, to
`trial_<id>/vggbn-config.json` and into every checkpoint's meta.json. A retry or a resume trains
that stored config (or, for an experiment written before configs were stored, the one in its
checkpoint), never today's defaults applied to Ray's raw dict.

Deterministic failures are not retried: Ray 2.60 retries every exception up to max_failures, so
an out-of-memory, an invalid config or a GPU trial that sees no CUDA ends its trial without
raising, with its one-line reason in `trial_<id>/vggbn-error.json`; Ray never re-runs it and the
export marks it `errored`.
"""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path
from typing import Any

from vggbn.config import ConfigError, TrialConfig
from vggbn.store import checkpoint
from vggbn.store.experiment import Experiment
from vggbn.spec.model import flat_config



def _is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def _oom_message(cfg: TrialConfig, device, e: BaseException, resources: dict) -> str:
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


def _no_cuda_message(resources: dict) -> str:
    """Ray reserved a GPU for this trial, but torch sees no CUDA: say so instead of training on the CPU."""
    import os

    import ray
    import torch

    ids = ",".join(map(str, ray.get_gpu_ids())) or "none"
    why = ("torch is a CPU-only build" if torch.version.cuda is None
           else f"torch finds no usable CUDA device (no NVIDIA driver, or CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r} names none)")
    return (f"no CUDA on node {ray.util.get_node_ip_address()}: Ray gave this trial "
            f"resources.gpu={resources.get('GPU', 0):g} (GPU ids {ids}), but {why} "
            f"(torch {torch.__version__}), so it would train on the CPU. Fix: install the NVIDIA driver "
            f"and a CUDA build of torch on the GPU nodes, or set resources.gpu=0 to run on CPUs. "
            f"Only this trial stopped.")


def _cap_gpu_memory(share: float, device) -> None:
    """Packed trials (0 < resources.gpu < 1) keep to their share of the GPU's memory: past
    share x total, the caching allocator raises OutOfMemoryError in this process alone.
    benchmarks/gpu_check.py caps its packed processes with this same call."""
    import torch

    if device.type == "cuda" and 0 < share < 1:  # torch wants an index: "cuda" alone is refused
        index = torch.cuda.current_device() if device.index is None else device.index
        torch.cuda.set_per_process_memory_fraction(float(share), index)


def _cap_host_memory(nbytes: int) -> None:
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


def _trial_config(exp: Experiment, trial_id: str, config: dict, state: dict | None) -> TrialConfig:
    """Stored config > the checkpoint's (older experiments) > Ray's raw dict resolved now (then stored)."""
    stored = exp.trial_config(trial_id)
    if stored is None and state is not None and isinstance(state.get("config"), dict):
        stored = state["config"]
    if stored is not None:
        return TrialConfig.from_stored(stored)
    cfg = TrialConfig.from_flat(flat_config(config))
    exp.write_trial_config(trial_id, cfg)
    return cfg


def vggbn_trial(config: dict[str, Any], experiment: str, checkpoint_every: int = 1,
                perturbed: tuple[str, ...] = (), workers: dict | None = None) -> None:
    """One Ray Tune trial: its resolved config, fit, report every epoch, checkpoint. Under PBT
    (`perturbed` keys), the config in force is the checkpoint's with Ray's perturbed values, which
    may come from another trial's checkpoint (an exploit): pbt_record. `workers` (the spec's
    resources, when it has several workers): this trial drives a data-parallel run (distributed.py)."""
    import ray
    import torch
    from ray import tune

    from vggbn.models import model_cost
    from vggbn.provenance import provenance
    from vggbn.train import fit, resolve_device

    ctx = tune.get_context()
    exp, trial_id = Experiment(experiment), ctx.get_trial_id()
    ckpt = tune.get_checkpoint()
    resume_state = checkpoint.resume_state(ckpt) if ckpt is not None else None
    resources = ctx.get_trial_resources().required_resources
    gpu = resources.get("GPU", 0)
    try:
        cfg = _trial_config(exp, trial_id, config, resume_state)
        record = None
        if perturbed:  # the stored config is what it started with; this is what it runs now
            from vggbn.store.pbt_record import Record

            meta0 = checkpoint.read_meta(ckpt.filesystem, ckpt.path) if ckpt is not None else None
            record = Record(exp, trial_id, list(perturbed))
            cfg = record.start(config, ckpt, resume_state, cfg, meta0 if resume_state and (
                meta0 or {}).get("epoch") == resume_state["epoch"] else None)
        if workers is not None:  # the Train workers hold the resources and run fit()
            from vggbn.sweep.data_parallel import run_trial
            from vggbn.spec.space import Resources

            return run_trial(exp, trial_id, cfg, Resources(**workers), ckpt, checkpoint_every)
        if gpu > 0 and not torch.cuda.is_available():  # deterministic: no retry finds CUDA here
            exp.write_trial_error(trial_id, f"TrialNoCUDA: {_no_cuda_message(resources)}")
            return
        device = resolve_device(cfg.device)
    except ConfigError as e:  # deterministic: this trial alone, once
        exp.write_trial_error(trial_id, f"ConfigError: {e}")
        return
    stored = cfg.to_flat()
    if cfg.cpu_threads == 0:  # an execution knob: the CPUs Ray gave this run
        cfg = cfg.model_copy(update={"cpu_threads": max(1, int(resources.get("CPU", 1)))})
    _cap_gpu_memory(gpu, device)  # packed trials: each keeps to its share
    _cap_host_memory(int(resources.get("memory", 0)) if device.type == "cpu" else 0)
    meta = {"provenance": provenance(device), "config": stored}
    node_id = ray.get_runtime_context().get_node_id()
    gflops, params = model_cost(cfg)  # reported with every epoch: search objectives ("gflops")

    def on_epoch(metrics: dict, state: dict) -> None:
        # which node ran each epoch (spot losses show); the costs, so a search can minimise them
        metrics = {**metrics, "node_id": node_id, "gflops": gflops, "params": params}
        last = metrics["epoch"] >= cfg.epochs or metrics["diverged"]
        if record is not None:
            record.epoch(metrics)
            metrics["final"] = last  # PBT neither clones nor restarts a trial at its end
        if metrics["epoch"] % checkpoint_every and not last:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            checkpoint.write(Path(d), state, meta)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    oom = None
    try:
        fit(cfg, on_epoch=on_epoch, resume_state=resume_state)
    except Exception as e:
        if not _is_oom(e):
            raise
        oom = _oom_message(cfg, device, e, resources)
    if oom:  # outside the except block, so the failed step's tensors can be freed first
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        exp.write_trial_error(trial_id, f"TrialOutOfMemory: {oom}")
