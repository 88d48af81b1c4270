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
from vggbn.probes import probe, rng_state


OnEpoch = Callable[[dict[str, Any], dict[str, Any]], None]


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
             dist=None) -> tuple[float, float]:
    model.eval()
    loss = torch.zeros((), device=data.device, dtype=torch.float64)
    correct = torch.zeros((), device=data.device, dtype=torch.long)
    batches = data.eval_batches(split, batch_size) if dist is None else dist.eval_batches(data, split, batch_size)
    for x, y in batches:
        with amp():
            out = model(x)
        loss += nn.functional.cross_entropy(out.float(), y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
    if dist is not None:  # each rank evaluated its share of the split
        loss, correct = dist.all_sum(loss), dist.all_sum(correct)
    return loss.item() / len(split), correct.item() / len(split)


def fit(cfg: TrialConfig | dict[str, Any], on_epoch: OnEpoch | None = None,
        resume_state: dict[str, Any] | None = None, *, data: DeviceData | None = None,
        dist=None) -> dict:
    """Train one trial. Calls on_epoch(metrics, state) after every epoch; returns the result dict.

    `state` holds live references (model/optimizer state dicts): save or copy it inside the
    callback. Passing it back as `resume_state` continues exactly where it was taken.
    `dist` (sweep/distributed.py's DataParallel, on each of its ranks) trains data-parallel: every
    rank draws the same global batch and takes its slice; metrics are summed over the ranks.
    """
    if not isinstance(cfg, TrialConfig):
        cfg = TrialConfig.from_flat(cfg)
    t_start = time.perf_counter()
    if cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)
    device = resolve_device(cfg.device)
    dtype = autocast_dtype(cfg, device)

    def amp():
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    if data is None:
        data = load(cfg, device)
    torch.manual_seed(cfg.seed)  # weight init and dropout
    model = build_model(cfg, data.in_channels, data.num_classes).to(
        device, memory_format=torch.channels_last)
    if dist is not None:
        model = dist.convert(model, cfg)  # SyncBatchNorm on CUDA; refuses what it cannot run
    net = model if dist is None else dist.wrap(model)  # DistributedDataParallel
    net = torch.compile(net) if cfg.compile else net
    opt = make_optimizer(cfg, model)
    spe = data.steps_per_epoch(cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, spe))
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1_000_003)  # shuffle + augment
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    history: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    probes: list[dict[str, Any]] = []
    start_epoch = 0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        in_force = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        opt.load_state_dict(resume_state["optimizer"])
        sched.load_state_dict(resume_state["scheduler"])
        _keep_config(opt, sched, in_force, cfg, spe)
        torch.set_rng_state(resume_state["rng"]["torch"])
        if device.type == "cuda" and resume_state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(resume_state["rng"]["cuda"], device)
        gen.set_state(resume_state["rng"]["data"])
        history = list(resume_state["history"])
        steps = list(resume_state.get("steps", []))
        probes = list(resume_state.get("probes", []))
        start_epoch = resume_state["epoch"]

    diverged = bool(history and history[-1]["diverged"])
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        if diverged:
            break
        t0 = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        correct = torch.zeros((), device=device, dtype=torch.long)
        step_losses, step_lrs, probe_rows = [], [], []
        first_step = (epoch - 1) * spe
        lr_now = opt.param_groups[0]["lr"]
        batches = data.train_batches(cfg.batch_size, gen, cfg.augment)
        if dist is not None:  # this rank's slice of each global batch; its own dropout stream
            batches = dist.shard(batches, cfg, epoch)
        for i, (x, y) in enumerate(batches):
            probing = cfg.probe_every > 0 and (first_step + i + 1) % cfg.probe_every == 0
            if probing:
                rng0 = rng_state(device)  # the probes replay this step's dropout masks
            lr_now = opt.param_groups[0]["lr"]  # what this step uses, as the optimizer holds it
            with amp():
                out = net(x)
                loss = criterion(out, y)
            opt.zero_grad(set_to_none=True)
            (loss if dist is None else loss * dist.weight).backward()  # DDP: the global batch's mean
            if probing:
                rows = probe(net, lambda m, x=x, y=y: criterion(m(x), y), lr_now, cfg.probe_etas,
                             rng0, amp)
                probe_rows.append((first_step + i + 1, lr_now, loss.detach(), rows))
            opt.step()
            sched.step()
            # running sums stay on the device: no host sync per step
            loss_sum += loss.detach() * len(y)
            correct += (out.argmax(1) == y).sum()
            if cfg.record_steps:
                step_losses.append(loss.detach() if dist is None else loss.detach() * dist.share)
                step_lrs.append(lr_now)
        if dist is not None:  # the ranks' sums -> the global batches'
            loss_sum, correct = dist.all_sum(loss_sum), dist.all_sum(correct)
            step_losses = list(dist.all_sum(torch.stack(step_losses))) if step_losses else []
        n_seen = spe * min(cfg.batch_size, len(data.train))
        train_loss = loss_sum.item() / n_seen  # the epoch's one sync
        train_time = time.perf_counter() - t0
        diverged = not math.isfinite(train_loss)
        metrics: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss,
                                   "train_acc": correct.item() / n_seen}
        evaluated = net if dist is None else dist.eval_model(model)  # rank 0's BN buffers
        if data.val is not None:
            metrics["val_loss"], metrics["val_acc"] = evaluate(evaluated, data, data.val,
                                                               cfg.eval_batch_size, amp, dist)
        metrics["test_loss"], metrics["test_acc"] = evaluate(evaluated, data, data.test,
                                                             cfg.eval_batch_size, amp, dist)
        metrics["lr"] = lr_now  # the epoch's last step's, read from the optimizer
        metrics["epoch_time_s"] = time.perf_counter() - t0
        metrics["images_per_s"] = n_seen / train_time
        metrics["diverged"] = diverged
        history.append(metrics)
        if step_losses:
            values = torch.stack(step_losses).float().cpu().tolist()
            steps += [{"step": first_step + i + 1, "epoch": epoch, "train_loss": v, "lr": lr}
                      for i, (v, lr) in enumerate(zip(values, step_lrs))]
        for step, lr_now, base, rows in probe_rows:  # host transfers at the epoch's end
            probes += [{"step": step, "epoch": epoch, "eta": m * lr_now, "eta_mult": m,
                        "base_loss": float(base), "loss": r[1], "grad_diff": r[2], "beta": r[3]}
                       for m, r in zip(cfg.probe_etas, rows.double().cpu().tolist())]
        if on_epoch is not None:
            state = {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(),
                     "rng": {"torch": torch.get_rng_state(), "data": gen.get_state(),
                             "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda"
                             else None},
                     "history": history, "steps": steps, "probes": probes,
                     "config": cfg.to_flat()}
            on_epoch(metrics, state)
    return summarize(cfg, history, steps, probes, model=model, device=device,
                     wall_time_s=time.perf_counter() - t_start)


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
        from vggbn.provenance import provenance

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
