import io
import math
import time

import pytest
import torch

from conftest import tiny
from vggbn.config import TrialConfig
from vggbn.train import fit, lr_factor

METRICS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_time_s",
           "images_per_s", "diverged"}
TIMING = {"epoch_time_s", "images_per_s"}


def strip_timing(history):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def test_learns_synthetic_data_well_above_chance_in_seconds():
    t = time.perf_counter()
    seen = []
    r = fit(tiny(epochs=3, synthetic_size=1024, width=0.125),
            on_epoch=lambda m, s: seen.append(m))
    assert time.perf_counter() - t < 60
    assert r["test_acc"] > 0.8, r["test_acc"]  # chance is 0.1
    assert [m["epoch"] for m in seen] == [1, 2, 3]
    assert set(seen[0]) == METRICS
    assert not r["diverged"] and r["params"] > 0 and len(r["history"]) == 3
    assert seen[-1]["train_loss"] < seen[0]["train_loss"]


def test_validation_metrics_when_split():
    r = fit(tiny(val_fraction=0.2))
    assert set(r["history"][0]) == METRICS | {"val_loss", "val_acc"}
    assert r["best_val_acc"] == max(h["val_acc"] for h in r["history"])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_divergence_is_reported_not_raised(optimizer):
    r = fit(tiny(lr=1e3, optimizer=optimizer, epochs=5, bn=False))
    assert r["diverged"] is True
    assert len(r["history"]) < 5  # it stopped
    assert not math.isfinite(r["history"][-1]["train_loss"])


def test_same_config_same_result_on_cpu():
    cfg = tiny(bn=True, dropout=0.3, augment=True)
    a, b = fit(cfg), fit(cfg)
    assert strip_timing(a["history"]) == strip_timing(b["history"])
    c = fit({**cfg, "seed": 1})
    assert strip_timing(c["history"]) != strip_timing(a["history"])


def test_resume_equals_uninterrupted():
    """Stop after epoch 2 (state saved as a checkpoint would be), resume, compare bit for bit."""
    cfg = tiny(epochs=4, bn=True, dropout=0.3, augment=True, record_steps=True,
               optimizer="sgd", schedule="onecycle", warmup_epochs=1, lr=0.05)
    saved = {}

    def keep(metrics, state):
        buf = io.BytesIO()
        torch.save(state, buf)
        saved[metrics["epoch"]] = buf.getvalue()

    full = fit(cfg, on_epoch=keep)
    state = torch.load(io.BytesIO(saved[2]), weights_only=False)
    final_full = torch.load(io.BytesIO(saved[4]), weights_only=False)["model"]
    resumed_states = {}

    def keep_weights(m, s):
        resumed_states[m["epoch"]] = {k: v.clone() for k, v in s["model"].items()}

    resumed = fit(cfg, resume_state=state, on_epoch=keep_weights)
    assert sorted(resumed_states) == [3, 4]
    assert strip_timing(resumed["history"]) == strip_timing(full["history"])
    assert resumed["steps"] == full["steps"]
    for k, v in final_full.items():
        assert torch.equal(v, resumed_states[4][k]), k


def test_record_steps():
    r = fit(tiny(record_steps=True, epochs=2, synthetic_size=512, batch_size=64))
    assert [s["step"] for s in r["steps"]] == list(range(1, 17))
    assert all(math.isfinite(s["train_loss"]) for s in r["steps"])
    assert fit(tiny())["steps"] == []


def test_lr_schedules():
    c = TrialConfig.from_flat({"recipe": "seed", "epochs": 10, "warmup_epochs": 2, "schedule": "onecycle"})
    f = [lr_factor(c, s, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.05) and f[19] == pytest.approx(1.0)
    assert f[20] == pytest.approx(1.0) and f[99] == pytest.approx(1 / 80, abs=1e-9 + 0.02)
    assert all(a >= b for a, b in zip(f[20:], f[21:]))
    cos = TrialConfig.from_flat({"recipe": "seed", "epochs": 10, "schedule": "cosine"})
    assert lr_factor(cos, 0, 10) == 1.0 and lr_factor(cos, 50, 10) == pytest.approx(0.5, abs=0.02)
    const = TrialConfig.from_flat({"recipe": "seed", "epochs": 10})
    assert {lr_factor(const, s, 10) for s in range(100)} == {1.0}


def test_lr_metric_follows_schedule():
    r = fit(tiny(epochs=3, schedule="cosine", lr=0.01, optimizer="sgd"))
    lrs = [h["lr"] for h in r["history"]]
    assert lrs[0] > lrs[1] > lrs[2] >= 0


def test_label_smoothing_and_adamw_train():
    r = fit(tiny(label_smoothing=0.1, optimizer="adamw", weight_decay=0.05, epochs=3,
                 synthetic_size=1024, width=0.125))
    assert r["test_acc"] > 0.6


def test_bf16_autocast_on_cpu_trains():
    r = fit(tiny(precision="bf16", epochs=3, synthetic_size=1024, width=0.125, bn=True))
    assert r["test_acc"] > 0.6 and not r["diverged"]


@pytest.mark.slow
def test_real_fashion_mnist_one_epoch(fmnist_dir):
    """vgg_a_bn, width 0.25, the default (strong) recipe, one epoch of real Fashion-MNIST."""
    r = fit({"preset": "vgg_a_bn", "dataset": "fashion_mnist", "data_dir": str(fmnist_dir),
             "width": 0.25, "epochs": 1, "device": "cpu"})
    assert r["test_acc"] >= 0.85, r["test_acc"]
