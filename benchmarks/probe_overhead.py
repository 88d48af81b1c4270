"""Training time with Santurkar probes (every 20 steps, 4 step sizes) over training without them.

Same config, same data, same steps; each probe costs 4 extra forward + backward passes on the
step's minibatch, so every 20 steps the expected cost is about 4/20 = +20%. Target: <= 1.3x.
Median of --repeats interleaved runs; the training phase only (images/s of the second epoch).

    python benchmarks/probe_overhead.py [--every 20] [--width 0.25]
"""

from __future__ import annotations

import argparse
import statistics

from vggbn.train import fit


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="vgg_a_bn")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=80, help="steps per epoch")
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    base = dict(recipe="seed", preset=args.preset, width=args.width, batch_size=args.batch_size, epochs=2,
                dataset="synthetic", synthetic_size=args.batch_size * args.steps, device=args.device)
    times = {"without probes": [], f"probes every {args.every} steps, 4 etas": []}
    for _ in range(args.repeats):
        for name, extra in zip(times, ({}, {"probe_every": args.every})):
            h = fit({**base, **extra})["history"][-1]
            times[name].append(args.batch_size * args.steps / h["images_per_s"])  # seconds/epoch
    base_t = statistics.median(times["without probes"])
    print(f"# {args.preset} width {args.width}, batch {args.batch_size}, {args.steps} steps/epoch, "
          f"{args.device}; training seconds per epoch, median of {args.repeats}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<34}{med:8.2f} s  {med / base_t:5.2f}x   ({', '.join(f'{t:.2f}' for t in ts)})")


if __name__ == "__main__":
    main()
