"""Training throughput: vggbn's loop against a conventional loop like the original study's.

Same model (build_model), same synthetic CIFAR-shaped data, same number of steps, same optimizer.
  conventional: torchvision-style dataset of HWC uint8 images -> PIL -> ToTensor + Normalize,
                DataLoader(shuffle, num_workers), NCHW fp32, `.item()` on loss and accuracy each step
  vggbn:        fit(): uint8 data on the device, batched normalisation, device randperm,
                channels_last, no per-step host sync; precision fp32 and auto (bf16 autocast where the
                device computes bf16 natively: CUDA, or CPUs with AMX / AVX512-BF16)
Each run trains 2 epochs and times the second (steady state); the figure is the median of --repeats.

    python benchmarks/throughput.py                       # CPU, vgg_a_bn width 0.5, batch 128
    python benchmarks/throughput.py --device cuda --width 1 --compile
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import VisionDataset

from vggbn.config import TrialConfig
from vggbn.data import synthetic
from vggbn.models import build_model
from vggbn.provenance import provenance
from vggbn.train import autocast_dtype, fit, resolve_device


class ArrayCIFAR(VisionDataset):
    """What torchvision.datasets.CIFAR10 does per item: HWC uint8 -> PIL -> transforms."""

    def __init__(self, x_hwc: np.ndarray, y: np.ndarray, transform):
        super().__init__(root=None, transform=transform)
        self.data, self.targets = x_hwc, y.tolist()

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def conventional_epoch_rate(cfg: TrialConfig, arrays, workers: int, device: torch.device) -> float:
    torch.manual_seed(cfg.seed)
    ds = ArrayCIFAR(arrays["train_x"].permute(0, 2, 3, 1).numpy(), arrays["train_y"].numpy(),
                    T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)]))
    loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, num_workers=workers,
                        drop_last=True, pin_memory=device.type == "cuda")
    model = build_model(cfg, 3, 10).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    crit = torch.nn.CrossEntropyLoss()
    rate = 0.0
    for _ in range(2):
        t0, n = time.perf_counter(), 0
        running_loss = correct = 0.0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss = crit(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            running_loss += loss.item()  # the study's per-step host syncs
            correct += (out.argmax(1) == y).sum().item()
            n += len(y)
        rate = n / (time.perf_counter() - t0)
    return rate


def vggbn_epoch_rate(cfg: TrialConfig) -> float:
    return fit(cfg)["history"][-1]["images_per_s"]  # second epoch, training phase


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="vgg_a_bn")
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=40, help="steps per epoch")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers (conventional)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (vggbn)")
    args = ap.parse_args()

    n = args.batch_size * args.steps
    base = dict(recipe="seed", preset=args.preset, width=args.width, batch_size=args.batch_size, epochs=2,
                dataset="synthetic", synthetic_size=n, device=args.device, eval_batch_size=1024)
    cfg = TrialConfig.from_flat(base)
    device = resolve_device(cfg.device)
    arrays = synthetic(n)
    variants = {"vggbn fp32": dict(precision="fp32"), "vggbn auto": dict(precision="auto")}
    if args.compile:
        variants["vggbn auto + compile"] = dict(precision="auto", compile=True)
    auto = autocast_dtype(TrialConfig.from_flat({**base, "precision": "auto"}), device)

    rates: dict[str, list[float]] = {"conventional": []}
    for _ in range(args.repeats):  # interleaved, so drift on a noisy machine hits all alike
        rates["conventional"].append(conventional_epoch_rate(cfg, arrays, args.workers, device))
        for name, kw in variants.items():
            rates.setdefault(name, []).append(vggbn_epoch_rate(TrialConfig.from_flat({**base, **kw})))

    prov = provenance(device)
    print(f"# {args.preset} width {args.width}, batch {args.batch_size}, {args.steps} steps/epoch, "
          f"{device} ({prov['device_name']}, {torch.get_num_threads()} threads), torch "
          f"{prov['torch_version']}; auto precision = {auto or 'fp32'}; median of {args.repeats}")
    conv = statistics.median(rates["conventional"])
    print(f"{'loop':<24}{'images/s':>10}{'ratio':>8}   runs")
    for name, rs in rates.items():
        med = statistics.median(rs)
        print(f"{name:<24}{med:>10.0f}{med / conv:>7.2f}x   {', '.join(f'{r:.0f}' for r in rs)}")


if __name__ == "__main__":
    main()
