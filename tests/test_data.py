import gzip
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from vggbn.config import TrialConfig
from vggbn.data import (DataError, channel_stats, crop_flip, load, load_arrays, prepare,
                        stratified_split, synthetic)


def write_idx(path, array: torch.Tensor):
    """An MNIST-format (idx) file, gzipped, as published."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.to(torch.uint8).numpy().tobytes()))


def fake_fmnist(d, n_train=60, n_test=20):
    g = torch.Generator().manual_seed(0)
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(d / f"{split}-images-idx3-ubyte.gz", torch.randint(0, 256, (n, 28, 28), generator=g))
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", torch.arange(n) % 10)
    return d


def test_synthetic_dtypes_shapes_and_determinism():
    a, b = synthetic(200), synthetic(200)
    assert a["train_x"].dtype == torch.uint8 and a["train_y"].dtype == torch.int64
    assert a["train_x"].shape == (200, 3, 32, 32) and a["test_x"].shape == (50, 3, 32, 32)
    assert torch.equal(a["train_x"], b["train_x"]) and torch.equal(a["test_y"], b["test_y"])
    assert torch.bincount(a["train_y"]).tolist() == [20] * 10
    assert not torch.equal(synthetic(300)["train_x"][:200], a["train_x"])


def test_local_archives_are_read_and_padded(tmp_path):
    d = fake_fmnist(tmp_path / "fm")
    arrays = load_arrays("fashion_mnist", str(d))
    assert arrays["train_x"].shape == (60, 1, 32, 32) and arrays["test_x"].shape == (20, 1, 32, 32)
    assert arrays["train_x"].dtype == torch.uint8
    assert (arrays["train_x"][:, :, :2] == 0).all() and (arrays["train_x"][:, :, :, -2:] == 0).all()
    assert arrays["train_y"].tolist() == [i % 10 for i in range(60)]
    # also found in torchvision's layout
    tv = fake_fmnist(tmp_path / "tv" / "FashionMNIST" / "raw")
    assert load_arrays("fashion_mnist", str(tv.parent.parent))["train_x"].shape[0] == 60


def test_normalisation_half_and_dataset():
    half = load(TrialConfig.from_flat({"dataset": "synthetic", "synthetic_size": 400, "normalize": "half"}))
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    torch.testing.assert_close(half.normalize(x)[:, 0, 0, 0], torch.tensor([-1.0, 1.0]))
    ds = load(TrialConfig.from_flat({"dataset": "synthetic", "synthetic_size": 400,
                                     "normalize": "dataset"}))
    z = ds.normalize(ds.train.x)
    assert z.dtype == torch.float32 and z.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std((0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)
    mean, std = channel_stats(ds.train.x)
    torch.testing.assert_close(mean, ds.train.x.float().mean((0, 2, 3)) / 255)


def test_crop_flip_keeps_content_and_labels():
    data = load(TrialConfig.from_flat({"dataset": "synthetic", "synthetic_size": 64}))
    g = torch.Generator().manual_seed(1)
    x = data.train.x[:64]
    out = crop_flip(x, g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    flips = shifts = 0
    for i in range(len(x)):  # each output is one window (maybe mirrored) of its own padded image
        hits = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (0, 1)
                if torch.equal(out[i], (padded[i, :, dy:dy + 32, dx:dx + 32].flip(-1) if f
                                        else padded[i, :, dy:dy + 32, dx:dx + 32]))]
        assert hits, f"image {i} is not a crop of its own input"
        flips += hits[0][2]
        shifts += (hits[0][0], hits[0][1]) != (4, 4)
    assert 10 < flips < 54 and shifts > 40
    # batches pair every augmented image with its own label
    batches = list(data.train_batches(16, torch.Generator().manual_seed(0), augment=True))
    assert len(batches) == 4
    assert all(b[0].shape == (16, 3, 32, 32) for b in batches)
    ys = torch.cat([b[1] for b in batches])
    assert sorted(ys.tolist()) == sorted(data.train.y.tolist())


def test_validation_split_is_disjoint_stratified_deterministic():
    y = torch.arange(1000) % 10
    tr, va = stratified_split(y, 0.1)
    assert len(va) == 100 and len(set(tr.tolist()) & set(va.tolist())) == 0
    assert len(tr) + len(va) == 1000
    assert torch.bincount(y[va]).tolist() == [10] * 10
    tr2, va2 = stratified_split(y, 0.1)
    assert torch.equal(va, va2)
    d = load(TrialConfig.from_flat({"dataset": "synthetic", "synthetic_size": 1000,
                                    "val_fraction": 0.2}))
    assert len(d.val) == 200 and len(d.train) == 800
    assert torch.bincount(d.val.y).tolist() == [20] * 10
    # no image of the validation split is also a training image
    tr_rows = {tuple(r.tolist()) for r in d.train.x.flatten(1)[:, :64]}
    assert not any(tuple(r.tolist()) in tr_rows for r in d.val.x.flatten(1)[:, :64])


def test_train_subset_is_first_n_of_a_seeded_permutation():
    a = load(TrialConfig.from_flat({"dataset": "synthetic", "synthetic_size": 500,
                                    "train_subset": 100}))
    b = load(TrialConfig.from_flat({"dataset": "synthetic", "synthetic_size": 500,
                                    "train_subset": 100, "seed": 7}))
    assert len(a.train) == 100 and torch.equal(a.train.x, b.train.x)
    c = load(TrialConfig.from_flat({"dataset": "synthetic", "synthetic_size": 500,
                                    "train_subset": 200}))
    assert torch.equal(c.train.x[:100], a.train.x)


def test_cache_is_built_once(tmp_path):
    d = fake_fmnist(tmp_path / "fm")
    path, built = prepare("fashion_mnist", str(d))
    assert built and path.is_file()
    assert prepare("fashion_mnist", str(d)) == (path, False)


def test_two_processes_preparing_one_dataset_extract_once(tmp_path):
    d = fake_fmnist(tmp_path / "fm")
    worker = textwrap.dedent(f"""
        import sys, time
        import vggbn.data as D
        decode = D._decode_fashion_mnist
        def slow(data_dir):  # a slow extraction: without the lock both processes would do it
            time.sleep(2.0)
            return decode(data_dir)
        D._decode_fashion_mnist = slow
        path, built = D.prepare("fashion_mnist", {str(d)!r})
        print("BUILT" if built else "REUSED")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", worker], stdout=subprocess.PIPE, text=True,
                              env=os.environ.copy()) for _ in range(2)]
    outs = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert outs == ["BUILT", "REUSED"]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise OSError("network disabled by the test")
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("dataset,expected", [
    ("cifar10", "cifar-10-python.tar.gz"),
    ("fashion_mnist", "train-images-idx3-ubyte.gz"),
])
def test_offline_error_names_dataset_dir_files_and_fix(tmp_path, no_network, dataset, expected):
    with pytest.raises(DataError) as e:
        prepare(dataset, str(tmp_path / "empty"))
    msg = str(e.value)
    for part in (dataset, str(tmp_path / "empty"), expected, "Fix"):
        assert part in msg, (part, msg)
    assert len(msg.splitlines()) == 2


def test_real_fashion_mnist_from_debian_package(fmnist_dir):
    arrays = load_arrays("fashion_mnist", str(fmnist_dir))
    assert arrays["train_x"].shape == (60000, 1, 32, 32) and arrays["test_x"].shape == (10000, 1, 32, 32)
    assert torch.bincount(arrays["train_y"]).tolist() == [6000] * 10
