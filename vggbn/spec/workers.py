"""The rules of a data-parallel trial (`resources: {gpu: 2}` or `{cpu: 1, workers: 2}`), said when
the sweep file is read, and the dry run's words for its resources. Running it is
sweep/data_parallel.py's (Ray Train); the hooks inside fit() are parallel.py's. Pure: no Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vggbn.config import TrialConfig

if TYPE_CHECKING:
    from vggbn.spec.model import SweepSpec
    from vggbn.spec.resources import Resources


def check_resources(r: Resources) -> None:
    """`resources`: gpu: N (a whole number > 1) is N workers x 1 GPU; workers: N makes cpu, gpu
    and memory_gb per worker. Contradictions are refused, not guessed."""
    if r.gpu > 1 and r.workers not in (1, int(r.gpu)):
        raise ValueError(f"gpu: {r.gpu:g} with workers: {r.workers}: gpu above 1 means {int(r.gpu)} "
                         f"workers x 1 GPU; give gpu: {int(r.gpu)} alone, or workers: {r.workers} "
                         f"with gpu: 1 (GPUs per worker)")
    if r.workers > 1 and 0 < r.gpu < 1:
        raise ValueError(f"gpu: {r.gpu:g} with workers: {r.workers}: a data-parallel worker takes a "
                         f"whole GPU (one NCCL rank per GPU); give gpu: 1 (per worker), or workers: 1 "
                         f"to pack single-process trials on a GPU")


def check_spec(spec: SweepSpec) -> None:
    """What a data-parallel trial cannot run, said at load time (ValueError -> SweepSpecError)."""
    n = spec.resources.n_workers
    if n == 1:
        return
    setups = [{**spec.base, **c} for c in spec.cases or [{}]]
    for i, flat in enumerate(setups):
        where = f"cases[{i}]" if spec.cases else "base"
        cfg = TrialConfig.from_flat(flat)
        if cfg.probe_every:
            raise ValueError(f"{where}.probe_every: {cfg.probe_every} with resources.workers {n}: the "
                             f"Santurkar probes run in a single process; set probe_every: 0, or "
                             f"resources.workers: 1")
        if cfg.batch_size < n and "batch_size" not in spec.space:
            raise ValueError(f"{where}.batch_size: {cfg.batch_size} is smaller than resources.workers "
                             f"{n} (each worker takes a slice of the batch); give a larger batch_size")
    small = [b for b in (spec.space["batch_size"].probe_values() if "batch_size" in spec.space else [])
             if int(b) < n]
    if small:
        raise ValueError(f"space.batch_size: {small[0]} is smaller than resources.workers {n} (each worker "
                         f"takes a slice of the batch); search batch sizes of at least {n}")
    dim = spec.space.get("probe_every")
    if dim is not None and any(getattr(dim, "values", None) or [1]):
        raise ValueError(f"space.probe_every with resources.workers {n}: the Santurkar probes run in a "
                         f"single process; leave probe_every out of the space, or set workers: 1")


def any_bn(spec: SweepSpec) -> bool:
    """Whether some trial of the spec has BatchNorm (its statistics differ on CPU workers)."""
    dim = spec.space.get("bn")
    return (any(TrialConfig.from_flat({**spec.base, **c}).bn for c in spec.cases or [{}])
            or (dim is not None and True in (getattr(dim, "values", None) or [True])))


def describe(r: Resources) -> str:
    """'2 workers x (1 CPU + 1 GPU)' or '1 CPU + 0 GPU' for the dry run."""
    if r.n_workers == 1:
        return f"{r.cpu:g} CPU + {r.gpu:g} GPU each"
    one = f"{r.cpu:g} CPU + {r.worker_gpu:g} GPU" + (f" + {r.memory_gb:g} GiB" if r.memory_gb else "")
    return f"{r.n_workers} workers x ({one}) each, data-parallel"
