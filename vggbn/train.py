"""The trial: `fit(cfg, on_epoch, resume_state) -> result`. No Ray import (sweep/trainable.py wraps it).

fit is a pure function of the config: same config and seed, same result on CPU. A diverging run
(non-finite loss) stops and reports `diverged: True` instead of raising. The state handed to
`on_epoch` (model, optimizer, scheduler, RNG states, epoch, history) resumes bit-identically.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vggbn.config import ConfigError, TrialConfig
from vggbn.data import DeviceData, load
from vggbn.files import write_atomic
from vggbn.models import build_model, count_params
from vggbn.parallel import SingleProcess
from vggbn.probes import probe, rng_state
from vggbn.provenance import provenance


OnEpoch = Callable[[dict[str, Any], dict[str, Any]], None]
SINGLE = SingleProcess()  # fit's default hooks: one process, every hook the identity


# ---------------------------------------------------------------------- device and precision
def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={spec!r} is invalid: no CUDA device is visible here "
                          f"(use device=auto or device=cpu)")
    if spec == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device='mps' is invalid: MPS is not available here (use device=auto)")
    return torch.device(spec)


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matmuls/convs run natively (oneDNN), several times fp32's speed."""
    cpu = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported())
    except AttributeError:
        return False


def autocast_dtype(cfg: TrialConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast (weights and BatchNorm stay fp32) or None for plain fp32."""
    if cfg.precision == "fp32" or device.type == "mps":
        return None
    if cfg.precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_native_bf16() else None


# ---------------------------------------------------------------------- optimisation
def make_optimizer(cfg: TrialConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":  # coupled L2, as the study's "L2" row
        return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.momentum, 0.999),
                                weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.momentum, 0.999),
                             weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrialConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of cfg.lr at a (0-based) global step: linear warm-up, then the schedule."""
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    t = min(1.0, (step - warm) / max(1.0, total - warm))
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "onecycle":  # with warm-up: a triangle (airbench); decays to 0
        return 1.0 - t
    return 1.0


def _keep_config(opt: torch.optim.Optimizer, sched, groups: list[dict], cfg: TrialConfig,
                 spe: int) -> None:
    """Put the config's hyperparameters back over a loaded optimizer and schedule.

    load_state_dict restores the values the state was saved with (lr, momentum, weight decay, the
    schedule's base lr); a PBT exploit continues another trial's state under other values, which
    must be the ones in force from the first step on. Under the same config these are the very
    numbers loaded (LambdaLR's lr is base_lr * factor too), so a resume stays bit-identical.
    """
    for g, want in zip(opt.param_groups, groups):
        g.update(want)
    sched.base_lrs = [g["initial_lr"] for g in opt.param_groups]
    factor = lr_factor(cfg, sched.last_epoch, spe)  # the next step's
    for g in opt.param_groups:
        g["lr"] = g["initial_lr"] * factor
    sched._last_lr = [g["lr"] for g in opt.param_groups]  # get_last_lr()


# ---------------------------------------------------------------------- the trial
@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceData, split, batch_size: int, amp,
             hooks: SingleProcess = SINGLE) -> tuple[float, float]:
    model.eval()
    loss = torch.zeros((), device=data.device, dtype=torch.float64)
    correct = torch.zeros((), device=data.device, dtype=torch.long)
    for x, y in hooks.eval_batches(data, split, batch_size):
        with amp():
            out = model(x)
        loss += nn.functional.cross_entropy(out.float(), y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
    loss, correct = hooks.all_sum(loss), hooks.all_sum(correct)  # data-parallel: each rank's share
    return loss.item() / len(split), correct.item() / len(split)


def fit(cfg: TrialConfig | dict[str, Any], on_epoch: OnEpoch | None = None,
        resume_state: dict[str, Any] | None = None, *, data: DeviceData | None = None,
        hooks: SingleProcess = SINGLE) -> dict:
    """Train one trial. Calls on_epoch(metrics, state) after every epoch; returns the result dict.

    `state` holds live references (model/optimizer state dicts): save or copy it inside the
    callback. Passing it back as `resume_state` continues exactly where it was taken.
    `hooks` (parallel.py): SingleProcess, or a DataParallel on each rank of a data-parallel run,
    where every rank draws the same global batch and takes its slice; metrics are summed over
    the ranks.
    """
    if not isinstance(cfg, TrialConfig):
        cfg = TrialConfig.from_flat(cfg)
    t_start = time.perf_counter()
    if cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)
    device = resolve_device(cfg.device)
    if data is None:
        data = load(cfg, device)
    run = _Run(cfg, data, device, hooks)
    if resume_state is not None:
        run.restore(resume_state)
    for epoch in range(run.epoch + 1, cfg.epochs + 1):
        if run.diverged:
            break
        metrics = run.train_epoch(epoch)
        if on_epoch is not None:
            on_epoch(metrics, run.state())
    return summarize(cfg, run.history, run.steps, run.probes, model=run.model, device=device,
                     wall_time_s=time.perf_counter() - t_start)


class _Run:
    """fit()'s training objects and its record so far (history, steps, probes), in that order of
    construction: the seeded weight init first, then what draws on no RNG."""

    def __init__(self, cfg: TrialConfig, data: DeviceData, device: torch.device, hooks: SingleProcess):
        self.cfg, self.data, self.device, self.hooks = cfg, data, device, hooks
        self.dtype = autocast_dtype(cfg, device)
        torch.manual_seed(cfg.seed)  # weight init and dropout
        model = build_model(cfg, data.in_channels, data.num_classes).to(
            device, memory_format=torch.channels_last)
        self.model = hooks.convert(model, cfg)  # data-parallel: SyncBatchNorm on CUDA; refuses probes
        net = hooks.wrap(self.model)  # data-parallel: DistributedDataParallel
        self.net = torch.compile(net) if cfg.compile else net
        self.opt = make_optimizer(cfg, self.model)
        self.spe = spe = data.steps_per_epoch(cfg.batch_size)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(cfg, s, spe))
        self.gen = torch.Generator(device=device).manual_seed(cfg.seed + 1_000_003)  # shuffle + augment
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.history: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []
        self.probes: list[dict[str, Any]] = []
        self.epoch = 0

    @property
    def diverged(self) -> bool:
        return bool(self.history and self.history[-1]["diverged"])

    def amp(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def restore(self, s: dict[str, Any]) -> None:
        """Continue from a state() taken at the end of an epoch, under this run's config."""
        opt, sched = self.opt, self.sched
        self.model.load_state_dict(s["model"])
        in_force = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        opt.load_state_dict(s["optimizer"])
        sched.load_state_dict(s["scheduler"])
        _keep_config(opt, sched, in_force, self.cfg, self.spe)
        torch.set_rng_state(s["rng"]["torch"])
        if self.device.type == "cuda" and s["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(s["rng"]["cuda"], self.device)
        self.gen.set_state(s["rng"]["data"])
        self.history = list(s["history"])
        self.steps = list(s.get("steps", []))
        self.probes = list(s.get("probes", []))
        self.epoch = s["epoch"]

    def state(self) -> dict[str, Any]:
        device = self.device
        return {"epoch": self.epoch, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "data": self.gen.get_state(),
                        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
                "history": self.history, "steps": self.steps, "probes": self.probes,
                "config": self.cfg.to_flat()}

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch's steps, then its evaluation; appends to the record and returns its metrics."""
        cfg, data, device, hooks, opt, net = self.cfg, self.data, self.device, self.hooks, self.opt, self.net
        t0 = time.perf_counter()
        self.model.train()
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        correct = torch.zeros((), device=device, dtype=torch.long)
        step_losses, step_lrs, probe_rows = [], [], []
        first_step = (epoch - 1) * self.spe
        lr_now = opt.param_groups[0]["lr"]
        # data-parallel: this rank's slice of each global batch; its own dropout stream
        batches = hooks.shard(data.train_batches(cfg.batch_size, self.gen, cfg.augment), cfg, epoch)
        for i, (x, y) in enumerate(batches):
            probing = cfg.probe_every > 0 and (first_step + i + 1) % cfg.probe_every == 0
            if probing:
                rng0 = rng_state(device)  # the probes replay this step's dropout masks
            lr_now = opt.param_groups[0]["lr"]  # what this step uses, as the optimizer holds it
            with self.amp():
                out = net(x)
                loss = self.criterion(out, y)
            opt.zero_grad(set_to_none=True)
            hooks.scaled(loss).backward()
            if probing:
                rows = probe(net, lambda m, x=x, y=y: self.criterion(m(x), y), lr_now, cfg.probe_etas,
                             rng0, self.amp)
                probe_rows.append((first_step + i + 1, lr_now, loss.detach(), rows))
            opt.step()
            self.sched.step()
            # running sums stay on the device: no host sync per step
            loss_sum += loss.detach() * len(y)
            correct += (out.argmax(1) == y).sum()
            if cfg.record_steps:
                step_losses.append(hooks.step_loss(loss))
                step_lrs.append(lr_now)
        # data-parallel: the ranks' sums -> the global batches'
        loss_sum, correct = hooks.all_sum(loss_sum), hooks.all_sum(correct)
        step_losses = hooks.all_sum(torch.stack(step_losses)) if step_losses else None
        n_seen = self.spe * min(cfg.batch_size, len(data.train))
        train_loss = loss_sum.item() / n_seen  # the epoch's one sync
        train_time = time.perf_counter() - t0
        metrics: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss,
                                   "train_acc": correct.item() / n_seen}
        evaluated = hooks.eval_model(self.model, net)  # data-parallel: rank 0's BN buffers
        if data.val is not None:
            metrics["val_loss"], metrics["val_acc"] = evaluate(evaluated, data, data.val,
                                                               cfg.eval_batch_size, self.amp, hooks)
        metrics["test_loss"], metrics["test_acc"] = evaluate(evaluated, data, data.test,
                                                             cfg.eval_batch_size, self.amp, hooks)
        metrics["lr"] = lr_now  # the epoch's last step's, read from the optimizer
        metrics["epoch_time_s"] = time.perf_counter() - t0
        metrics["images_per_s"] = n_seen / train_time
        metrics["diverged"] = not math.isfinite(train_loss)
        self.history.append(metrics)
        self.epoch = epoch
        if step_losses is not None:
            values = step_losses.float().cpu().tolist()
            self.steps += [{"step": first_step + i + 1, "epoch": epoch, "train_loss": v, "lr": lr}
                           for i, (v, lr) in enumerate(zip(values, step_lrs))]
        for step, lr_step, base, rows in probe_rows:  # host transfers at the epoch's end
            self.probes += [{"step": step, "epoch": epoch, "eta": m * lr_step, "eta_mult": m,
                             "base_loss": float(base), "loss": r[1], "grad_diff": r[2], "beta": r[3]}
                            for m, r in zip(cfg.probe_etas, rows.double().cpu().tolist())]
        return metrics


def summarize(cfg: TrialConfig, history: list[dict], steps: list[dict], probes: list[dict], *,
              model: nn.Module,
              device: torch.device, wall_time_s: float) -> dict[str, Any]:
    """Final metrics, best epoch (by val_acc when there is a split, else test_acc), history."""
    final = dict(history[-1]) if history else {}
    key = "val_acc" if history and "val_acc" in history[-1] else "test_acc"
    finite = [h for h in history if not math.isnan(h.get(key, float("nan")))]
    best = max(finite, key=lambda h: h[key]) if finite else {}
    result = {**final, "best_epoch": best.get("epoch"), "best_test_acc": best.get("test_acc"),
              "params": count_params(model), "diverged": bool(final.get("diverged", False)),
              "device": str(device), "wall_time_s": wall_time_s, "history": history,
              "steps": steps, "probes": probes}
    if key == "val_acc":
        result["best_val_acc"] = best.get("val_acc")
    return result


class RunDir:
    """What `vggbn train --out DIR` writes: config.json and provenance.json at the start,
    metrics.jsonl one line an epoch, result.json (and steps.jsonl) at the end."""

    def __init__(self, out: Path, cfg: TrialConfig, device: torch.device):
        self.out, self.cfg, self.prov = Path(out), cfg, provenance(device)
        write_atomic(self.out / "config.json", json.dumps(cfg.to_flat(), indent=2) + "\n")
        write_atomic(self.out / "provenance.json", json.dumps(self.prov, indent=2) + "\n")
        self.log = open(self.out / "metrics.jsonl", "w")  # a log: one line as each epoch ends

    def epoch(self, metrics: dict[str, Any]) -> None:
        self.log.write(json.dumps(metrics) + "\n")
        self.log.flush()

    def close(self, result: dict[str, Any] | None = None) -> None:
        self.log.close()
        if result is None:
            return
        summary = {k: v for k, v in result.items() if k not in ("history", "steps")}
        write_atomic(self.out / "result.json", json.dumps(
            {"config": self.cfg.to_flat(), "result": summary, "provenance": self.prov}, indent=2) + "\n")
        if result["steps"]:
            write_atomic(self.out / "steps.jsonl", "".join(json.dumps(s) + "\n" for s in result["steps"]))


def run(cfg: TrialConfig, data: DeviceData, *, out: Path | None = None, progress: bool = True) -> dict:
    """`vggbn train`: fit with a progress bar on stderr and, with `out`, a RunDir."""
    import sys

    from tqdm import tqdm

    run_dir = RunDir(out, cfg, data.device) if out is not None else None
    bar = tqdm(total=cfg.epochs, desc=cfg.preset or cfg.arch, unit="epoch", file=sys.stderr,
               disable=not progress)

    def on_epoch(metrics, state):
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['train_loss']:.3f}", test_acc=f"{metrics['test_acc']:.4f}")
        if run_dir is not None:
            run_dir.epoch(metrics)

    result = None
    try:
        result = fit(cfg, on_epoch=on_epoch, data=data)
    finally:
        bar.close()
        if run_dir is not None:
            run_dir.close(result)
    return result
