"""fit()'s hooks: how one process takes part in training. No Ray (sweep/data_parallel.py sets up
the process group through Ray Train and hands each rank a DataParallel).

fit() has one code path; what differs between a single process and a rank of a data-parallel run
is asked of its hooks object:

- `SingleProcess` (the default): every hook is the identity, so fit trains as it always has;
- `DataParallel`: the same device randperm on every rank, each rank takes its contiguous slice of
  each global batch, DistributedDataParallel averages the gradients (SyncBatchNorm on CUDA; on
  CPU/gloo each worker normalises its own slice), and the epoch's sums are all-reduced.
"""

from __future__ import annotations

import logging

import torch

from vggbn.config import ConfigError, TrialConfig
from vggbn.data import Split

log = logging.getLogger("vggbn")
# torch's public BatchNorm classes (their base, _BatchNorm, is private)
BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)
BN_CPU_NOTE = ("BatchNorm on CPU workers (gloo): each worker normalises its own slice of the global "
               "batch (SyncBatchNorm needs CUDA), so BN statistics differ from a single-process run")


class SingleProcess:
    """One process trains on every batch: each hook hands back what it is given."""

    def convert(self, model, cfg: TrialConfig):
        """The model to train (before it is wrapped): refuse what these hooks cannot run."""
        return model

    def wrap(self, model):
        """What the steps call (the model, or a wrapper that syncs its gradients)."""
        return model

    def shard(self, batches, cfg: TrialConfig, epoch: int):
        """This process's part of the epoch's batches."""
        return batches

    def scaled(self, loss):
        """The loss to backpropagate."""
        return loss

    def step_loss(self, loss):
        """The step's contribution to the global batch's mean loss (recorded per step)."""
        return loss.detach()

    def eval_batches(self, data, split, batch_size: int):
        """This process's part of an evaluation split."""
        return data.eval_batches(split, batch_size)

    def eval_model(self, model, net):
        """What evaluates: `net` (maybe compiled) or `model`, the module that is checkpointed."""
        return net

    def all_sum(self, t):
        """The sum of `t` over the processes."""
        return t


class DataParallel(SingleProcess):
    """The hooks of one rank of a torch.distributed process group (set up by the caller)."""

    def __init__(self, rank: int, world: int, device):
        self.rank, self.world, self.device = rank, world, device
        self.weight, self.share = 1.0, 1.0

    def convert(self, model, cfg: TrialConfig):
        if cfg.probe_every:
            raise ConfigError(f"probe_every={cfg.probe_every} is invalid with {self.world} workers: "
                              f"the Santurkar probes run in a single process (probe_every=0)")
        has_bn = any(isinstance(m, BATCH_NORMS) for m in model.modules())
        if has_bn and self.device.type == "cuda":
            return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same state_dict keys
        if has_bn and self.rank == 0:
            log.warning("vggbn: %s", BN_CPU_NOTE)
        return model

    def wrap(self, model):
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index if self.device.index is not None else 0] if self.device.type == "cuda" else None
        return DDP(model, device_ids=ids)

    def shard(self, batches, cfg: TrialConfig, epoch: int):
        """This rank's contiguous slice of each global batch. `weight` makes DDP's mean over the
        ranks the global batch's mean whatever the slice sizes; `share` weighs a step's loss."""
        # dropout: one stream per (seed, epoch, rank), so a resume replays it without saved state
        torch.manual_seed((cfg.seed * 1_000_003 + epoch) * 1009 + self.rank)
        for x, y in batches:
            n = len(y)
            lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
            self.share = (hi - lo) / n
            self.weight = self.share * self.world
            yield x[lo:hi], y[lo:hi]

    def scaled(self, loss):
        return loss * self.weight  # DDP averages over the ranks: this makes it the global batch's mean

    def step_loss(self, loss):
        return loss.detach() * self.share

    def eval_batches(self, data, split, batch_size: int):
        n = len(split)
        lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        return data.eval_batches(Split(split.x[lo:hi], split.y[lo:hi]), batch_size)

    def eval_model(self, model, net):
        """The model with rank 0's BatchNorm buffers on every rank (what rank 0 checkpoints)."""
        import torch.distributed as td

        for b in model.buffers():
            td.broadcast(b, 0)
        return model

    def all_sum(self, t):
        import torch.distributed as td

        t = t.clone()
        td.all_reduce(t)
        return t
