"""GPU trials on machines without CUDA, and benchmarks/gpu_check.sh where no GPU is.

A worker with `num_gpus=1` on the session's `ray.cluster_utils.Cluster` is a logical GPU: Ray schedules and packs
GPU trials on it exactly as on a real one, but torch finds no CUDA there. Such a trial must stop
with one clear line, not train on the CPU without a word. The GPU check itself needs a GPU; here
it must refuse in one line, and its `--dry-run-cpu` mode runs the same measuring and packing code
on the CPU, tiny.
"""
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from conftest import REPO, SWEEPS, vggbn

GPU_CHECK = REPO / "benchmarks" / "gpu_check.sh"


@pytest.fixture
def gpu_cluster(cluster):
    """The session's 0-CPU head and one worker with 4 CPUs and one logical GPU (gone after the test)."""
    cluster.add_node(num_cpus=4, num_gpus=1)
    cluster.wait_for_nodes()
    return cluster


@pytest.mark.timeout(300)
@pytest.mark.skipif(torch.cuda.is_available(), reason="the trials would find CUDA here")
def test_gpu_trial_that_sees_no_cuda_errors_with_one_line(tmp_path, gpu_cluster):
    """Four trials at resources.gpu 0.25 are packed on the logical GPU; each finds no CUDA and
    ends with the reason, once (not retried), instead of training on the CPU."""
    r = vggbn("sweep", SWEEPS / "smoke.yaml", "--set", f"storage={tmp_path}", "--set", "resources.gpu=0.25",
              "--set", "base.device=auto", "--set", "max_failures=2", "--address", gpu_cluster.address)
    assert "4 errored" in r.stdout, (r.returncode, r.stdout[-3000:], r.stderr[-3000:])
    t = pd.read_parquet(tmp_path / "smoke" / "trials.parquet")
    assert len(t) == 4 and set(t["status"]) == {"errored"}, t[["status", "error"]]
    assert (t["failures"] == 0).all()  # deterministic: Ray never re-ran them
    for err in t["error"]:
        assert err.startswith("TrialNoCUDA: no CUDA on node "), err
        assert "resources.gpu=0.25" in err and "would train on the CPU" in err and "Fix:" in err
        assert "\n" not in err
    assert not (tmp_path / "smoke" / "epochs.parquet").exists() or pd.read_parquet(
        tmp_path / "smoke" / "epochs.parquet").empty  # not one epoch trained on the CPU


def test_gpu_memory_cap_is_set_per_process_with_a_device_index(monkeypatch):
    """Packed trials (0 < share < 1) are capped on the trial's CUDA device, named by index (torch
    refuses a bare torch.device("cuda")); whole GPUs and CPU trials are left alone."""
    from vggbn.limits import cap_gpu_memory

    calls = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: calls.append((f, d)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    cap_gpu_memory(0.25, torch.device("cuda"))
    cap_gpu_memory(0.5, torch.device("cuda:1"))
    cap_gpu_memory(1, torch.device("cuda"))
    cap_gpu_memory(0.25, torch.device("cpu"))
    assert calls == [(0.25, 0), (0.5, 1)]
    assert all(isinstance(f, float) and isinstance(d, int) for f, d in calls)


def test_what_the_gpu_check_imports_needs_no_ray():
    """The GPU machine has torch, numpy and pyyaml but no Ray, pandas, pyarrow or boto3, and gets only
    the few wheels gpu_check.sh --fetch-wheels names: the worker's imports must stay within those."""
    code = ("import sys, vggbn.train, vggbn.data, vggbn.limits; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'pandas', 'pyarrow', 'boto3', "
            "'optuna', 'scipy', 'matplotlib', 'torchvision'}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr[-2000:])


def _gpu_check(*args, env=None, timeout=120):
    return subprocess.run(["bash", str(GPU_CHECK), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, "PYTHON": sys.executable, **(env or {})})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_check_refuses_without_cuda():
    r = _gpu_check()
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA device"), r.stderr


@pytest.mark.timeout(180)
@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu_prints_the_table():
    """The same code path as on a GPU, tiny, on the CPU: single runs, 1/2/4 packed processes and
    an over-budget trial that errors alone with the out-of-memory line (under a host-memory cap)."""
    r = _gpu_check("--dry-run-cpu")
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    out = r.stdout
    rows = [x for x in out.splitlines() if x.startswith("| ") and not x.startswith("| run ")]
    names = [x.split("|")[1].strip() for x in rows]
    assert names == ["fp32", "bf16", "bf16 + compile", "packed x1", "packed x2", "packed x4",
                     "over-budget + neighbour"], out
    cells = {n: [c.strip() for c in x.split("|")[2:-1]] for n, x in zip(names, rows)}
    assert cells["bf16 + compile"][-1].startswith("skipped")
    for name in ("fp32", "bf16", "packed x1", "packed x2", "packed x4"):
        assert cells[name][-1].startswith("ok"), (name, cells[name])
        assert float(cells[name][3].replace(",", "")) > 0  # images/s per trial
    assert cells["packed x4"][0] == "4"
    assert "1 of 2 errored (out of memory), neighbour ok" in cells["over-budget + neighbour"][-1], out
    assert "TrialOutOfMemory: out of memory on cpu (resources.memory_gb=" in out
    assert "Only this trial stopped." in out
