"""Santurkar et al. 2018 ("How Does Batch Normalization Help Optimization?") probes, in training.

At weights w with the training minibatch's gradient g = ∇L(w), for each step size η (multiples
of the current learning rate, default 0.5, 1, 2, 4 as the paper):
  loss       L(w − ηg)                       -> the loss landscape band (min/max over η)
  grad_diff  ‖∇L(w − ηg) − ∇L(w)‖₂           -> gradient predictiveness (min/max over η)
  beta       ‖∇L(w − ηg) − ∇L(w)‖₂ / ‖ηg‖₂   -> effective β-smoothness (max over η)
All on the same minibatch, with the model in training mode (BatchNorm normalises with the batch's
statistics, as in the step itself) and the same dropout masks as the step. Probing changes
nothing of the training: weights, gradients, BatchNorm running statistics and the RNG state are
restored before the optimizer steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn


def _buffers(model: nn.Module) -> list[torch.Tensor]:
    return [b for b in model.buffers()]


@torch.no_grad()
def _add_(params: Sequence[torch.Tensor], direction: Sequence[torch.Tensor], alpha: float) -> None:
    torch._foreach_add_(list(params), list(direction), alpha=alpha)


def probe(model: nn.Module, loss_fn: Callable[[torch.Tensor], torch.Tensor], lr: float,
          etas: Sequence[float], rng_before_forward: dict | None = None,
          amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
          ) -> torch.Tensor:
    """Probe at the current weights, whose gradient (of this minibatch) is in `p.grad`.

    `loss_fn(model)` recomputes the minibatch loss. Returns a (len(etas), 4) tensor on the model's
    device: [η, loss, grad_diff, beta] per row, with η in absolute units (multiple × lr); no host
    sync. `rng_before_forward` (from `rng_state`) replays the step's dropout masks.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    w0 = [p.detach().clone() for p in params]
    g = [p.grad.detach().clone() for p in params]
    g_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in g]))
    saved_buffers = [b.clone() for b in _buffers(model)]
    rng_after = rng_state(params[0].device)
    rows = []
    for mult in etas:
        eta = mult * lr
        with torch.no_grad():
            torch._foreach_copy_(params, w0)
        _add_(params, g, -eta)  # w - ηg
        if rng_before_forward is not None:
            set_rng_state(rng_before_forward, params[0].device)
        for p in params:
            p.grad = None
        with torch.enable_grad():
            with amp():
                loss = loss_fn(model)
            loss.backward()
        diff = torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(p.grad.detach() - gi) for p, gi in zip(params, g)]))
        rows.append(torch.stack([torch.as_tensor(eta, dtype=diff.dtype, device=diff.device),
                                 loss.detach().to(diff.dtype), diff, diff / (eta * g_norm)]))
    # restore exactly: the weights, the gradient the optimizer will use, BN running stats, RNG
    with torch.no_grad():
        torch._foreach_copy_(params, w0)
        for p, gi in zip(params, g):
            p.grad = gi
        for b, s in zip(_buffers(model), saved_buffers):
            b.copy_(s)
    set_rng_state(rng_after, params[0].device)
    return torch.stack(rows)


def rng_state(device: torch.device) -> dict:
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
