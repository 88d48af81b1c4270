"""Datasets as uint8 tensors resident on the trial's device, with batched on-device augmentation.

Habits from airbench / hlb-CIFAR10: decode once into a uint8 tensor cache, keep it on the device,
shuffle with a device `randperm`, crop and flip whole batches with tensor ops. No DataLoader.

Where files come from (`data_dir`, default $VGGBN_DATA_DIR or the user cache dir):
  cifar10/cifar100  the official `cifar-10-python.tar.gz` / `cifar-100-python.tar.gz` (or their
                    extracted folders), else torchvision downloads them there;
  fashion_mnist     the four official `*-idx?-ubyte.gz` files (flat, as Debian's
                    dataset-fashion-mnist installs them, or in FashionMNIST/raw/), else torchvision
                    downloads them;
  synthetic         generated: class-dependent low-frequency patterns plus noise.
Decoded tensors are cached in $VGGBN_CACHE_DIR (default: user cache dir) under a file lock, so
concurrent trials on a node decode (and download) once; a damaged cache file (truncated, overwritten)
is decoded again under the same lock.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import socket
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock

from vggbn.errors import DataError

SPLIT_SEED = 0  # validation split and train_subset: the same images for every trial seed
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "fashion_mnist": 10, "synthetic": 10}
FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR = {"cifar10": ("CIFAR10", "cifar-10-python.tar.gz", "cifar-10-batches-py"),
         "cifar100": ("CIFAR100", "cifar-100-python.tar.gz", "cifar-100-python")}


def _user_cache() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("vggbn"))


def default_data_dir() -> str:
    return os.path.abspath(os.environ.get("VGGBN_DATA_DIR") or _user_cache() / "datasets")


def cache_dir() -> Path:
    return Path(os.environ.get("VGGBN_CACHE_DIR") or _user_cache() / "tensors").absolute()


def cache_path(dataset: str, data_dir: str) -> Path:
    key = hashlib.sha1(os.path.abspath(data_dir).encode()).hexdigest()[:12]
    return cache_dir() / f"{dataset}-{key}.pt"


# ---------------------------------------------------------------------- reading official files
def _read_idx(path: Path) -> torch.Tensor:
    """An MNIST-format (idx) file, gzipped or not, as a uint8 tensor."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        ndim = raw[3]
        shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
        return torch.from_numpy(np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape).copy())
    except (OSError, EOFError, ValueError, IndexError, zlib.error) as e:  # truncated, not gzip, not idx
        raise DataError(f"{path}: unreadable or corrupt ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]}).", "replace it with the official file, or "
                        "delete it to have it downloaded again") from None


def _find_fmnist(dirs: list[Path]) -> dict[str, Path] | None:
    for d in dirs:
        found = {}
        for name in FMNIST_FILES:
            for cand in (d / f"{name}.gz", d / name):
                if cand.is_file():
                    found[name] = cand
                    break
        if len(found) == len(FMNIST_FILES):
            return found
    return None


def _download_lock(data_dir: Path, dataset: str):
    """Serialise downloads into a shared data_dir; a read-only dir cannot be downloaded into anyway."""
    if os.access(data_dir, os.W_OK):
        return FileLock(str(data_dir / f".vggbn-{dataset}.download.lock"))
    return contextlib.nullcontext()


def _offline_error(dataset: str, data_dir: Path, searched: list[Path], expected: str,
                   reason: Exception) -> DataError:
    where = ", ".join(str(p) for p in dict.fromkeys(searched))
    return DataError(
        f"dataset '{dataset}' is not in {data_dir} (searched {where}; expected {expected}) and "
        f"downloading it failed ({type(reason).__name__}: {' '.join(str(reason).split())[:200]}).",
        f"connect to the internet, or copy the official archive files into {data_dir}, or point "
        f"data_dir (--set data_dir=DIR, or $VGGBN_DATA_DIR) at a directory that holds them.")


def _decode_fashion_mnist(data_dir: Path) -> dict[str, torch.Tensor]:
    dirs = [data_dir, data_dir / "FashionMNIST" / "raw", data_dir / "fashion-mnist",
            data_dir / "fashion_mnist"]
    files = _find_fmnist(dirs)
    if files is None:
        from torchvision.datasets import FashionMNIST
        try:
            with _download_lock(data_dir, "fashion_mnist"):
                FashionMNIST(str(data_dir), train=True, download=True)
        except Exception as e:  # no network, read-only dir, bad checksum ...
            raise _offline_error("fashion_mnist", data_dir, dirs,
                                 ", ".join(f"{n}.gz" for n in FMNIST_FILES), e) from None
        files = _find_fmnist(dirs)
        assert files is not None, "torchvision downloaded FashionMNIST to an unexpected place"
    return {"train_x": _read_idx(files[FMNIST_FILES[0]]).unsqueeze(1),
            "train_y": _read_idx(files[FMNIST_FILES[1]]).long(),
            "test_x": _read_idx(files[FMNIST_FILES[2]]).unsqueeze(1),
            "test_y": _read_idx(files[FMNIST_FILES[3]]).long()}


def _decode_cifar(dataset: str, data_dir: Path) -> dict[str, torch.Tensor]:
    import torchvision.datasets as tvd

    cls_name, archive, folder = CIFAR[dataset]
    cls = getattr(tvd, cls_name)
    have_local = (data_dir / folder).is_dir() or (data_dir / archive).is_file()
    out = {}
    try:
        with _download_lock(data_dir, dataset):
            for split, train in (("train", True), ("test", False)):
                # download=True with the archive present only verifies its MD5 and extracts it.
                ds = cls(str(data_dir), train=train,
                         download=not (data_dir / folder).is_dir())
                out[f"{split}_x"] = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
                out[f"{split}_y"] = torch.tensor(ds.targets, dtype=torch.long)
    except Exception as e:
        if have_local:
            raise DataError(f"dataset '{dataset}': the files in {data_dir} are unreadable or "
                            f"corrupt ({type(e).__name__}: {' '.join(str(e).split())[:200]}).",
                            f"replace {archive} with the official archive, "
                            f"or delete {data_dir / folder} to re-extract.") from None
        raise _offline_error(dataset, data_dir, [data_dir],
                             f"{archive} or its extracted folder {folder}/", e) from None
    return out


def synthetic(size: int, num_classes: int = 10, channels: int = 3) -> dict[str, torch.Tensor]:
    """Learnable, class-dependent low-frequency patterns plus pixel noise; the same for every call."""
    g = torch.Generator().manual_seed(20181010 + size)
    templates = F.interpolate(torch.rand(num_classes, channels, 4, 4, generator=g), size=32,
                              mode="bilinear", align_corners=False)
    out = {}
    for split, n in (("train", size), ("test", max(size // 4, num_classes * 2))):
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        x = templates[y] + 0.35 * torch.randn(n, channels, 32, 32, generator=g)
        out[f"{split}_x"] = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        out[f"{split}_y"] = y
    return out


def _read_cache(path: Path) -> dict[str, torch.Tensor] | None:
    """The cached arrays, or None when the file is damaged (truncated, overwritten, not ours)."""
    try:
        arrays = torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001  (torch raises several kinds for a damaged file)
        return None
    keys = ("train_x", "train_y", "test_x", "test_y")
    ok = isinstance(arrays, dict) and all(isinstance(arrays.get(k), torch.Tensor) for k in keys)
    return arrays if ok else None


def prepare(dataset: str, data_dir: str | None = None, *, damaged: bool = False) -> tuple[Path, bool]:
    """Make sure the decoded uint8 cache exists. Returns (cache file, whether this call built it).
    damaged=True: the caller could not read the cache; decode again unless another process has."""
    if dataset == "synthetic":
        raise ValueError("the synthetic dataset is generated, not prepared")
    data_dir_p = Path(data_dir or default_data_dir()).absolute()
    path = cache_path(dataset, str(data_dir_p))
    lock = FileLock(str(path) + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as e:
        raise _cache_error(path.parent, e) from None
    try:
        if path.is_file() and not (damaged and _read_cache(path) is None):
            return path, False
        try:
            _decode_into(path, dataset, data_dir_p, "\treplaced a damaged cache" if damaged else "")
        except DataError as e:
            if damaged:  # the damaged file stays: it is replaced only by a good one
                raise DataError(f"{path}: the decoded cache is damaged and cannot be rebuilt: {e.what}",
                                e.fix) from None
            raise
        return path, True
    finally:
        lock.release()


def _cache_error(where: Path, e: OSError) -> DataError:
    """The decoded-tensor cache cannot be made or written (a file in the way, read-only, full)."""
    which = "$VGGBN_CACHE_DIR" if os.environ.get("VGGBN_CACHE_DIR") else "the default cache directory"
    why = ("a file is there, not a directory" if e.errno in (errno.EEXIST, errno.ENOTDIR)
           else e.strerror or type(e).__name__)
    return DataError(f"{where}: the cache of decoded datasets ({which}) cannot be written ({why}).",
                     "set VGGBN_CACHE_DIR to a directory you can write, with room for the decoded dataset "
                     "(CIFAR-10: about 180 MB)")


def _decode_into(path: Path, dataset: str, data_dir_p: Path, note: str = "") -> None:
    """Decode the official files into the cache file (the caller holds its lock)."""
    if not data_dir_p.is_dir():
        try:
            data_dir_p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"data_dir {data_dir_p} does not exist and cannot be created ({e}).",
                            "set data_dir to a writable directory.") from None
    arrays = (_decode_fashion_mnist(data_dir_p) if dataset == "fashion_mnist"
              else _decode_cifar(dataset, data_dir_p))
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        torch.save(arrays, tmp)
        os.replace(tmp, path)  # atomic: readers never see half a file
    except (OSError, RuntimeError) as e:  # torch's writer says a full disk as a RuntimeError
        with contextlib.suppress(OSError):
            tmp.unlink()
        err = e if isinstance(e, OSError) else OSError(errno.ENOSPC, "no space left, or the write failed")
        raise _cache_error(path.parent, err) from None
    with open(path.parent / "prepare.log", "a") as log:  # who decoded what, when
        log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\t{dataset}\t{data_dir_p}\t"
                  f"{socket.gethostname()}\tpid={os.getpid()}{note}\n")


def load_arrays(dataset: str, data_dir: str | None = None, synthetic_size: int = 4096):
    """The dataset as CPU uint8 images (N, C, 32, 32) and int64 labels."""
    if dataset == "synthetic":
        return synthetic(synthetic_size)
    path, _ = prepare(dataset, data_dir)
    arrays = _read_cache(path)
    if arrays is None:  # a crash mid-copy, a full disk, a stray file: decode it again
        path, _ = prepare(dataset, data_dir, damaged=True)
        arrays = _read_cache(path)
    if arrays is None:
        raise DataError(f"{path}: the decoded cache is unreadable right after it was written.",
                        f"check the disk of {path.parent} (full? failing?), delete {path} and run again")
    if dataset == "fashion_mnist":  # 28x28 -> 32x32, zero padding as in LeNet
        arrays["train_x"] = F.pad(arrays["train_x"], (2, 2, 2, 2))
        arrays["test_x"] = F.pad(arrays["test_x"], (2, 2, 2, 2))
    return arrays


# ---------------------------------------------------------------------- splits
def stratified_split(y: torch.Tensor, fraction: float, seed: int = SPLIT_SEED):
    """(train_idx, val_idx): `fraction` of every class held out, deterministic by seed."""
    g = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = round(fraction * len(idx))
        val_idx.append(idx[:k])
        train_idx.append(idx[k:])
    return torch.cat(train_idx).sort().values, torch.cat(val_idx).sort().values


@dataclass
class Split:
    x: torch.Tensor  # uint8 (N, C, H, W) on the device
    y: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class DeviceData:
    train: Split
    val: Split | None
    test: Split
    num_classes: int
    mean: torch.Tensor  # (1, C, 1, 1) float32, in [0, 1] units
    std: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.train.x.device

    @property
    def in_channels(self) -> int:
        return self.train.x.shape[1]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 -> float32, (x/255 - mean)/std, channels_last."""
        x = x.float().div_(255).sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=torch.channels_last)

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, len(self.train) // batch_size)

    def train_batches(self, batch_size: int, gen: torch.Generator, augment: bool):
        """Shuffled full batches (the last partial batch is dropped, so every step has one size)."""
        n = len(self.train)
        perm = torch.randperm(n, generator=gen, device=self.device)
        for i in range(self.steps_per_epoch(batch_size)):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            x = self.train.x[idx]
            if augment:
                x = crop_flip(x, gen)
            yield self.normalize(x), self.train.y[idx]

    def eval_batches(self, split: Split, batch_size: int):
        for i in range(0, len(split), batch_size):
            yield self.normalize(split.x[i:i + batch_size]), split.y[i:i + batch_size]


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, per image, as batched indexing."""
    b, c, h, w = x.shape
    dev = x.device
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=dev)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=dev)
    flip = torch.rand(b, generator=gen, device=dev) < 0.5
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = dx[:, None] + torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    return xp[torch.arange(b, device=dev)[:, None, None, None],
              torch.arange(c, device=dev)[None, :, None, None], rows, cols]


def channel_stats(x: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images, in [0, 1] units, computed in chunks."""
    s = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    ss = torch.zeros_like(s)
    for i in range(0, len(x), chunk):
        xf = x[i:i + chunk].double() / 255
        s += xf.sum((0, 2, 3))
        ss += (xf * xf).sum((0, 2, 3))
    n = len(x) * x.shape[2] * x.shape[3]
    mean = s / n
    return mean.float(), (ss / n - mean * mean).clamp_min(1e-12).sqrt().float()


def load(cfg, device: torch.device | str = "cpu") -> DeviceData:
    """The trial's data on its device: splits per cfg (val_fraction, train_subset), normalisation."""
    a = load_arrays(cfg.dataset, cfg.data_dir, cfg.synthetic_size)
    train_x, train_y = a["train_x"], a["train_y"]
    val = None
    if cfg.val_fraction > 0:
        tr, va = stratified_split(train_y, cfg.val_fraction)
        val = Split(train_x[va], train_y[va])
        train_x, train_y = train_x[tr], train_y[tr]
    if cfg.train_subset is not None and cfg.train_subset < len(train_y):
        keep = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(SPLIT_SEED + 1))
        keep = keep[:cfg.train_subset]
        train_x, train_y = train_x[keep], train_y[keep]
    if cfg.normalize == "dataset":
        mean, std = channel_stats(train_x)
    else:
        mean = torch.full((train_x.shape[1],), 0.5)
        std = torch.full((train_x.shape[1],), 0.5)

    def put(s: Split | None) -> Split | None:
        return None if s is None else Split(s.x.to(device), s.y.to(device))

    return DeviceData(train=put(Split(train_x, train_y)), val=put(val),
                      test=put(Split(a["test_x"], a["test_y"])),
                      num_classes=NUM_CLASSES[cfg.dataset],
                      mean=mean.view(1, -1, 1, 1).to(device), std=std.view(1, -1, 1, 1).to(device))
