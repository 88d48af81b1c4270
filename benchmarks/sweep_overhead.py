"""What Ray Tune costs, and what ASHA saves.

1. Overhead: the same K trials run (a) one after another in-process with `fit` (1 thread each, as
   in the sweep) and (b) through `vggbn sweep` with 1 CPU per trial, so concurrency = the CPUs.
   Prints  wall(b) x concurrency / sum of trial compute(a)  (1.00 = no overhead; target <= 1.10
   for trials of >= 20 s on 2 cores). Wall (b) is the whole command: Ray's start included.
2. ASHA: an HPO-style grid (good and bad learning rates x widths) run with ASHA on val_acc and
   again FIFO to max_t. Prints the share of epochs ASHA saved and whether both pick the same best.

    python benchmarks/sweep_overhead.py [--trials 4] [--epochs 12]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from vggbn.train import fit


def trial_base(args) -> dict:
    return {"recipe": "seed", "dataset": "synthetic", "synthetic_size": args.size, "width": args.width,
            "batch_size": 128, "epochs": args.epochs, "device": "cpu"}


def run_cli(spec: dict, root: Path) -> tuple[float, Path]:
    path = root / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "vggbn", "sweep", str(path)], capture_output=True,
                       text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"sweep failed:\n{r.stderr[-3000:]}")
    return wall, root / spec["name"]


def overhead(args, root: Path) -> None:
    base = trial_base(args)
    cpus = os.cpu_count() or 1
    seeds = list(range(args.trials))
    computes = [fit({**base, "seed": s, "cpu_threads": 1})["wall_time_s"] for s in seeds]
    spec = {"name": "overhead", "storage": str(root), "base": base,
            "space": {"seed": {"grid": seeds}}, "resources": {"cpu": 1}}
    wall, exp = run_cli(spec, root)
    trials = pd.read_parquet(exp / "trials.parquet")
    concurrency = min(cpus, args.trials)
    ratio = wall * concurrency / sum(computes)
    in_ray = trials["wall_time_s"].sum()
    print(f"## overhead: {args.trials} trials of {base['epochs']} epochs, width {base['width']}, "
          f"{cpus} CPUs")
    print(f"in-process, one after another: {sum(computes):7.1f} s   "
          f"(trials {min(computes):.1f}-{max(computes):.1f} s each)")
    print(f"vggbn sweep, {concurrency} at a time:    {wall:7.1f} s wall   "
          f"(trial time inside Ray {in_ray:.1f} s)")
    print(f"wall x concurrency / sum(compute) = {ratio:.3f}   (target <= 1.10)")
    print(f"wall x concurrency / sum(trial time inside Ray) = {wall * concurrency / in_ray:.3f}   "
          f"(Ray's scheduling and start-up alone; the rest is {concurrency} trials sharing the "
          f"machine's memory bandwidth and caches)")


def asha(args, root: Path) -> None:
    base = {**trial_base(args), "val_fraction": 0.2}
    base.pop("width")
    space = {"lr": {"grid": [3e-3, 1e-3, 3e-4, 1e-5, 1e-6, 1e-7]},
             "width": {"grid": [args.width / 2, args.width]}}
    common = {"metric": "val_acc", "base": base, "space": space, "resources": {"cpu": 1},
              "storage": str(root)}
    _, fifo_dir = run_cli({**common, "name": "hpo_fifo"}, root)
    _, asha_dir = run_cli({**common, "name": "hpo_asha", "scheduler": {
        "type": "asha", "grace_period": 1, "reduction_factor": 3}}, root)
    fifo = pd.read_parquet(fifo_dir / "trials.parquet")
    ash = pd.read_parquet(asha_dir / "trials.parquet")

    def best(t):
        row = t.sort_values(["best_val_acc", "lr"], ascending=[False, False]).iloc[0]
        return (float(row["lr"]), float(row["width"])), float(row["best_val_acc"])

    saved = 1 - ash["epochs_run"].sum() / fifo["epochs_run"].sum()
    (bf, vf), (ba, va) = best(fifo), best(ash)
    print(f"## ASHA: {len(fifo)} trials (lr x width), max_t {base['epochs']} epochs, val_acc")
    print(f"epochs run: FIFO {fifo['epochs_run'].sum()}, ASHA {ash['epochs_run'].sum()} "
          f"({(ash['status'] == 'early_stopped').sum()} stopped early) -> ASHA saved {saved:.0%}")
    print(f"best (lr, width): FIFO {bf} val_acc {vf:.4f}; ASHA {ba} val_acc {va:.4f}; "
          f"same config: {bf == ba}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--size", type=int, default=4096, help="synthetic training images")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--skip-asha", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        overhead(args, Path(d))
        if not args.skip_asha:
            asha(args, Path(d))


if __name__ == "__main__":
    main()
