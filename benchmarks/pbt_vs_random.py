"""sweeps/pbt.yaml against random search on the same budget, on Fashion-MNIST at CPU scale.

For each repetition r (default 0 and 1) it runs, one after the other with `vggbn sweep`:
- pbt_s{r}: sweeps/pbt.yaml with seed r (the sampler) and base.seed r (weights, data order);
- random_s{r}: the same file with scheduler.type fifo: the same space, the same population size and
  epochs (the same trial-epochs), and, with the same sampler seed, the same starting draws: PBT
  without its exploits.
It prints, per run, the best trial by its final val_acc (the tuning metric), that trial's final
test_acc (reported, never used to choose), the trial-epochs trained and the wall time.

    python benchmarks/pbt_vs_random.py [--data-dir /usr/share/datasets/fashion-mnist] [--out DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent


def run(name: str, sets: list[str], out: Path) -> dict:
    args = [sys.executable, "-m", "vggbn", "sweep", str(REPO / "sweeps" / "pbt.yaml"),
            "--set", f"storage={out}", "--set", f"name={name}"]
    for s in sets:
        args += ["--set", s]
    t0 = time.time()
    r = subprocess.run(args, capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode != 0:
        sys.exit(f"{name}: vggbn sweep failed ({r.returncode}):\n{r.stderr[-3000:]}")
    trials = pd.read_parquet(out / name / "trials.parquet")
    epochs = pd.read_parquet(out / name / "epochs.parquet")
    best = trials.loc[trials["val_acc"].idxmax()]
    return {"run": name, "best_val_acc": best["val_acc"], "its_test_acc": best["test_acc"],
            "mean_final_val_acc": trials["val_acc"].mean(), "trial_epochs": len(epochs),
            "exploits": int(trials["pbt_exploits"].sum()) if "pbt_exploits" in trials else 0,
            "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--out", default=None, help="where the experiments go (default: a temporary dir)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    a = ap.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix="pbt-vs-random-"))
    rows = []
    for r in a.seeds:
        common = [f"seed={r}", f"base.seed={r}", f"base.data_dir={a.data_dir}"]
        for method, extra in (("pbt", []), ("random", ["scheduler.type=fifo"])):
            rows.append({"method": method, "rep": r, **run(f"{method}_s{r}", common + extra, out)})
            print(f"done: {rows[-1]}", file=sys.stderr, flush=True)
    df = pd.DataFrame(rows)
    fmt = {"best_val_acc": "{:.4f}", "its_test_acc": "{:.4f}", "mean_final_val_acc": "{:.4f}",
           "wall_s": "{:.0f}"}
    for k, f in fmt.items():
        df[k] = df[k].map(f.format)
    print(f"experiments in {out}")
    df = df.drop(columns="run").astype(str)
    print("| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns))
    for row in df.itertuples(index=False):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
