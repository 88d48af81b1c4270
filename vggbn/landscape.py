"""Li et al. 2018 ("Visualizing the Loss Landscape of Neural Nets") surfaces around a checkpoint.

Filter-normalised random directions: each filter (output channel of a conv, output unit of a
linear layer) of a Gaussian direction is rescaled to the norm of the same filter of the weights;
biases and BatchNorm parameters get a zero direction (as the paper: they are not perturbed). The
loss and accuracy are evaluated in eval mode (BN uses its running statistics) on a fixed, seeded
subset of the training set, at w + a·d1 (1D, a in [-span, span]) and w + a·d1 + b·d2 (2D grid).
Grid points are independent: `map_chunks` may spread them over Ray tasks (sweep.py does when a
cluster is there); by default they run in this process. No Ray import here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from vggbn.config import TrialConfig
from vggbn.data import load
from vggbn.models import build_model


def filter_normalized_direction(model: nn.Module, gen: torch.Generator) -> list[torch.Tensor]:
    dirs = []
    for p in model.parameters():
        if p.dim() <= 1:  # biases, BatchNorm weight and bias
            dirs.append(torch.zeros_like(p))
            continue
        d = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)
        w_norm = p.detach().flatten(1).norm(dim=1)
        d_norm = d.flatten(1).norm(dim=1)
        d *= (w_norm / (d_norm + 1e-10)).view(-1, *([1] * (p.dim() - 1)))
        dirs.append(d)
    return dirs


def grid_points(resolution: int, span: float = 1.0, two_d: bool = True) -> list[tuple[str, float, float]]:
    axis = np.linspace(-span, span, resolution)
    pts = [("1d", float(a), 0.0) for a in axis]
    if two_d:
        pts += [("2d", float(a), float(b)) for b in axis for a in axis]
    return pts


@torch.no_grad()
def evaluate_points(config: dict, weights: dict, directions: tuple[list, list], x: torch.Tensor,
                    y: torch.Tensor, points: list[tuple[str, float, float]],
                    batch_size: int = 1024) -> list[dict]:
    """Loss and accuracy at each (kind, a, b). Pure function of its arguments (a Ray task body)."""
    cfg = TrialConfig.from_stored({k: v for k, v in config.items() if not k.startswith("_")})
    model = build_model(cfg, x.shape[1], int(config.get("_num_classes", 10)))
    model.load_state_dict(weights)
    model.eval()
    params = list(model.parameters())
    w0 = [p.detach().clone() for p in params]
    d1, d2 = directions
    out = []
    for kind, a, b in points:
        for p, w, u, v in zip(params, w0, d1, d2):
            p.copy_(w + a * u + b * v)
        loss = correct = 0.0
        for i in range(0, len(y), batch_size):
            logits = model(x[i:i + batch_size])
            loss += nn.functional.cross_entropy(logits, y[i:i + batch_size], reduction="sum").item()
            correct += (logits.argmax(1) == y[i:i + batch_size]).sum().item()
        out.append({"kind": kind, "alpha": a, "beta": b, "loss": loss / len(y),
                    "acc": correct / len(y)})
    return out


def surfaces(config: dict, weights: dict, *, resolution: int = 21, span: float = 1.0,
             samples: int = 2048, seed: int = 0, two_d: bool = True, chunks: int = 8,
             map_chunks: Callable | None = None) -> pd.DataFrame:
    """1D curve and 2D grid of loss/accuracy around `weights` (a model state dict) of `config`."""
    cfg = TrialConfig.from_stored({**config, "device": "cpu", "augment": False})
    data = load(cfg, "cpu")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train), generator=g)[:samples]
    x = data.normalize(data.train.x[idx]).contiguous()
    y = data.train.y[idx]
    model = build_model(cfg, data.in_channels, data.num_classes)
    model.load_state_dict(weights)
    directions = (filter_normalized_direction(model, g), filter_normalized_direction(model, g))
    pts = grid_points(resolution, span, two_d)
    parts = [pts[i::chunks] for i in range(min(chunks, len(pts)))]
    args = ({**cfg.to_flat(), "_num_classes": data.num_classes}, weights, directions, x, y)
    if map_chunks is None:
        results = [evaluate_points(*args, part) for part in parts]
    else:
        results = map_chunks(evaluate_points, args, parts)
    rows = [r for part in results for r in part]
    return pd.DataFrame(rows).sort_values(["kind", "beta", "alpha"]).reset_index(drop=True)
