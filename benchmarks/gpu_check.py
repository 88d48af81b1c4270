"""The GPU check: one table from one NVIDIA GPU in under 5 minutes. Run it as benchmarks/gpu_check.sh.

Model and data: vgg_a_bn at width 1 with the strong recipe (SGD, batch 128, crop + flip) on
CIFAR-shaped synthetic data (50,000 training and 12,500 test images, 3x32x32, 10 classes). Each run
is its own process that calls fit() (no Ray: processes stand in for Ray's trial workers), trains 2
epochs, and is measured on the second, warm one (the first pays for cuDNN's choices and compiling).

  fp32, bf16, bf16 + compile   one trial alone: epoch time (training + test evaluation), training
                               images/s, and that as a ratio to the fp32 run (channels_last in all)
  packed x1, x2, x4            k bf16 trials at once on the one GPU, each capped at 1/k of its memory
                               with the trainable's own call (vggbn.limits.cap_gpu_memory,
                               as Ray Tune trials at resources.gpu=1/k): images/s per trial, the
                               aggregate (all trials' training images over the wall time of their
                               measured epochs) and each process's peak reserved memory against its cap
  over-budget + neighbour      two trials at resources.gpu=0.25, one with a batch that needs more than
                               its quarter: it stops with the trainable's out-of-memory line, alone

`--dry-run-cpu` runs the same code tiny on the CPU (width 1/16, 512 images, 1 thread a process, no
compile, the trainable's host-memory cap in place of the GPU cap): a test of the script, not a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a plain checkout: no install needed
    sys.path.insert(0, str(REPO))

GIB = 2**30
CPU_BUDGET = 512 * 2**20  # --dry-run-cpu: each process's host-memory cap (resources.memory_gb=0.5)


# ---------------------------------------------------------------------- one trial (a process)
def worker() -> None:
    """Reads its spec from stdin, sets up (cap, data on the device), says READY, waits for GO, trains,
    prints one RESULT line. An out-of-memory ends it with the trainable's line, as in a sweep."""
    spec = json.loads(sys.stdin.readline())
    import torch

    from vggbn.config import TrialConfig
    from vggbn.data import load
    from vggbn.limits import cap_gpu_memory, cap_host_memory, is_oom, oom_message
    from vggbn.train import fit, resolve_device

    cfg = TrialConfig.from_flat(spec["cfg"])
    device = resolve_device(cfg.device)
    share = spec["share"]
    if device.type == "cuda":  # what vggbn_trial does for resources.gpu=share
        cap_gpu_memory(share, device)
        resources = {"GPU": share}
        total = torch.cuda.get_device_properties(device).total_memory
        cap = share * total if 0 < share < 1 else None
    else:  # ... and for resources.memory_gb on a CPU node
        cap_host_memory(spec["memory"])
        resources, total, cap = {"memory": spec["memory"]}, None, spec["memory"] or None
    data = load(cfg, device)
    images = data.steps_per_epoch(cfg.batch_size) * min(cfg.batch_size, len(data.train))
    print("READY", flush=True)
    sys.stdin.readline()  # GO: every process of the group starts training together

    epochs: list[dict] = []

    def on_epoch(metrics: dict, state: dict) -> None:
        epochs.append({"t_end": time.time(), "epoch_time_s": metrics["epoch_time_s"],
                       "images_per_s": metrics["images_per_s"]})

    out = {"images_per_epoch": images, "epochs": epochs, "cap": cap, "total": total}
    try:
        fit(cfg, on_epoch=on_epoch, data=data)
    except Exception as e:
        if not is_oom(e):
            raise
        out["error"] = f"TrialOutOfMemory: {oom_message(cfg, device, e, resources)}"
    if device.type == "cuda":
        out["peak"] = torch.cuda.max_memory_reserved(device)
    print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------------- a group of concurrent trials
_live: list[subprocess.Popen] = []


def run_group(specs: list[dict], logs: Path, timeout: float) -> list[dict]:
    """Start one process per spec, wait until all are set up, start them together, collect results.
    A process that failed another way comes back as {"failed": the end of its stderr}."""
    procs = []
    for i, spec in enumerate(specs):
        err = open(logs / f"{time.time_ns()}-{i}.err", "w+")
        p = subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO)
        p.stdin.write(json.dumps(spec) + "\n")
        p.stdin.flush()
        procs.append((p, err))
        _live.append(p)
    ready = [p.stdout.readline().strip() == "READY" for p, _ in procs]
    for (p, _), ok in zip(procs, ready):
        if ok:
            p.stdin.write("GO\n")
            p.stdin.flush()
    results = []
    for p, err in procs:
        try:
            stdout, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, _ = p.communicate()
        _live.remove(p)
        line = next((x for x in stdout.splitlines() if x.startswith("RESULT ")), None)
        if line and p.returncode == 0:
            results.append(json.loads(line[len("RESULT "):]))
            os.unlink(err.name)  # only a failed process's stderr is kept
        else:
            err.seek(0)
            tail = " ".join(err.read().strip().splitlines()[-3:])
            results.append({"failed": f"exit {p.returncode}: {tail[-400:]}"})
        err.close()
    return results


# ---------------------------------------------------------------------- measures and the table
def measured(r: dict) -> list[dict]:
    return r.get("epochs", [])[1:]  # the first epoch is the warm-up


def per_trial(results: list[dict]) -> tuple[float, float]:
    """Mean over trials of the last epoch's time and training images/s."""
    last = [r["epochs"][-1] for r in results]
    return (sum(e["epoch_time_s"] for e in last) / len(last),
            sum(e["images_per_s"] for e in last) / len(last))


def aggregate(results: list[dict]) -> float:
    """All trials' training images in their measured epochs over the wall time those epochs span."""
    start = min(r["epochs"][0]["t_end"] for r in results)
    end = max(r["epochs"][-1]["t_end"] for r in results)
    return sum(r["images_per_epoch"] * len(measured(r)) for r in results) / (end - start)


def memory_cell(results: list[dict]) -> str:
    peaks = [r["peak"] for r in results if "peak" in r]
    if not peaks:
        return "n/a (CPU)"
    cap = results[0].get("cap")
    if cap is None:
        return f"{max(peaks) / GIB:.2f} / no cap"
    held = all(r["peak"] <= r["cap"] for r in results if "peak" in r)
    return f"{max(peaks) / GIB:.2f} / {cap / GIB:.1f} ({'holds' if held else 'EXCEEDED'})"


def problem(results: list[dict]) -> str | None:
    for r in results:
        if "failed" in r:
            return f"failed: {r['failed']}"
        if "error" in r:
            return "errored: " + r["error"][:120]
        if len(r["epochs"]) < 2:
            return "no measured epoch"
    return None


class Table:
    COLS = ("run", "trials", "share", "epoch s", "img/s per trial", "vs fp32", "aggregate img/s",
            "peak / cap GiB", "status")

    def __init__(self):
        print("| " + " | ".join(self.COLS) + " |")
        print("|" + "|".join("---" for _ in self.COLS) + "|", flush=True)

    def row(self, *cells) -> None:  # rows appear as they are measured: a cut-short run still says something
        print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


def refuse_without_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device visible here (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda or 'none'}); run it on a machine with an NVIDIA GPU, or with "
              f"--dry-run-cpu to try the script on the CPU", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run-cpu", action="store_true", help="the same code, tiny, on the CPU")
    ap.add_argument("--check-cuda", action="store_true", help="only refuse (exit 2) without CUDA")
    ap.add_argument("--no-compile", action="store_true", help="skip the bf16 + compile run")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker()
    if not args.dry_run_cpu:
        refuse_without_cuda()
    if args.check_cuda:
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` or a lease ending: stop the workers

    import torch

    dry = args.dry_run_cpu
    cores = os.cpu_count() or 1
    base = dict(recipe="strong", preset="vgg_a_bn", dataset="synthetic", augment=True, epochs=2,
                precision="bf16", compile=False, seed=0)
    if dry:
        base.update(width=0.0625, synthetic_size=512, batch_size=64, eval_batch_size=256, device="cpu")
        over = dict(width=1.0, synthetic_size=1024, batch_size=1024, eval_batch_size=1024)
        timeout = 120
    else:
        base.update(width=1.0, synthetic_size=50_000, batch_size=128, eval_batch_size=2048, device="cuda")
        over = dict(synthetic_size=32_768, batch_size=32_768, eval_batch_size=8192)
        timeout = 240

    def spec(k: int = 1, **kw) -> dict:
        threads = 1 if dry else max(1, cores // k)  # as Ray gives each of k trials its CPUs
        return {"cfg": {**base, "cpu_threads": threads, **kw}, "share": 1 / k,
                "memory": CPU_BUDGET if dry and k > 1 else 0}

    if dry:
        where = f"CPU dry run ({cores} cores): width 1/16, {base['synthetic_size']} images, batch 64"
    else:
        props = torch.cuda.get_device_properties(0)
        where = (f"{props.name} ({props.total_memory / GIB:.1f} GiB), {cores} CPU cores: vgg_a_bn width 1, "
                 f"synthetic CIFAR-shaped 50,000 + 12,500 images, batch 128, crop + flip")
    print(f"# gpu_check: {where}; torch {torch.__version__}; 2 epochs a run, the second measured")
    t0 = time.time()
    table = Table()
    logs = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    notes: list[str] = []
    try:
        fp32_rate = bf16 = None
        singles = [("fp32", dict(precision="fp32")), ("bf16", {}), ("bf16 + compile", dict(compile=True))]
        for name, kw in singles:
            if kw.get("compile") and (dry or args.no_compile):
                table.row(name, 1, 1, "", "", "", "", "", "skipped (--dry-run-cpu)" if dry else "skipped")
                continue
            res = run_group([spec(**kw)], logs, timeout)
            bad = problem(res)
            if bad:
                table.row(name, 1, 1, "", "", "", "", memory_cell(res), bad)
                continue
            epoch_s, rate = per_trial(res)
            fp32_rate = rate if name == "fp32" else fp32_rate
            bf16 = res if name == "bf16" else bf16
            ratio = f"{rate / fp32_rate:.2f}x" if fp32_rate else ""
            table.row(name, 1, 1, f"{epoch_s:.2f}", f"{rate:,.0f}", ratio, f"{aggregate(res):,.0f}",
                      memory_cell(res), "ok")
        x1 = None
        for k in (1, 2, 4):
            # one trial "packed" alone is the bf16 run above: the same config, the same process
            res = bf16 if k == 1 and bf16 else run_group([spec(k, seed=i) for i in range(k)], logs, timeout)
            bad = problem(res)
            if bad:
                table.row(f"packed x{k}", k, f"{1 / k:g}", "", "", "", "", memory_cell(res), bad)
                continue
            epoch_s, rate = per_trial(res)
            agg = aggregate(res)
            x1 = agg if k == 1 else x1
            vs = f" ({agg / x1:.2f}x x1)" if x1 and k > 1 else ""
            table.row(f"packed x{k}", k, f"{1 / k:g}", f"{epoch_s:.2f}", f"{rate:,.0f}", "",
                      f"{agg:,.0f}{vs}", memory_cell(res), "ok (the bf16 run)" if res is bf16 else "ok")
        res = run_group([spec(4, **over), spec(4, seed=1)], logs, timeout)
        big, neighbour = res
        oom = "error" in big and big["error"].startswith("TrialOutOfMemory:")
        ok = problem([neighbour]) is None
        status = (f"1 of 2 errored (out of memory), neighbour {'ok' if ok else problem([neighbour])}" if oom
                  else f"over-budget trial did not run out of memory: {problem([big]) or 'it completed'}")
        table.row("over-budget + neighbour", 2, 0.25, "", "", "", "", memory_cell(res), status)
        if oom:
            notes.append(f"over-budget trial (batch {over['batch_size']}): {big['error']}")
    finally:
        for p in list(_live):
            p.kill()
    for n in notes:
        print(f"\n{n}")
    kept = sorted(logs.iterdir())
    print(f"\n# done in {time.time() - t0:.0f} s" + (f"; stderr of the failed processes in {logs}" if kept else ""))
    if not kept:
        logs.rmdir()


if __name__ == "__main__":
    main()
