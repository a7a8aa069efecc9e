"""Reference models for examples, tests and benchmarks.

Every model records how to rebuild itself in ``model.zoo_spec`` (``{"name", "kwargs"}``,
JSON-serializable), so ``create(spec["name"], **spec["kwargs"])`` gives the same
architecture. All models trace with ``torch.fx.symbolic_trace`` and deepcopy/pickle.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import PruneError, PruneTypeError, unknown

__all__ = ["LeNet300100", "LeNet5", "MNISTNet", "SmallCNN", "available", "create"]

_CCEXAM_INSTALL = "pip install --no-deps ccexam==1.0.0"


def _pos_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PruneTypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise PruneError(f"{name} must be a positive int, got {value!r}")
    return value


def _int_list(name: str, values: object, length: int | None = None) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise PruneTypeError(f"{name} must be a sequence of positive ints, got {values!r}")
    out = [_pos_int(name, v) for v in values]
    if length is not None and len(out) != length:
        raise PruneError(f"{name} must have {length} entries, got {values!r}")
    return out


class LeNet300100(nn.Module):
    """LeNet-300-100: a fully connected net with ReLU (LeCun et al. 1998; Han et al. 2015).

    Accepts ``(N, 1, 28, 28)`` or ``(N, 784)``; 266,610 parameters with the defaults.

    Args:
        in_features: input size after flattening (64 for the 8×8 digits).
        hidden: widths of the hidden layers.
        num_classes: number of outputs.

    Example:
        >>> LeNet300100()(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self, in_features: int = 784, hidden: Sequence[int] = (300, 100), num_classes: int = 10
    ) -> None:
        super().__init__()
        in_features = _pos_int("in_features", in_features)
        widths = _int_list("hidden", hidden)
        num_classes = _pos_int("num_classes", num_classes)
        self.zoo_spec = {
            "name": "lenet300100",
            "kwargs": {"in_features": in_features, "hidden": widths, "num_classes": num_classes},
        }
        layers: list[nn.Module] = []
        prev = in_features
        for width in widths:
            layers += [nn.Linear(prev, width), nn.ReLU()]
            prev = width
        layers.append(nn.Linear(prev, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(x, 1))


class LeNet5(nn.Module):
    """LeNet-5 as in Caffe's MNIST example, the variant pruned by Han et al. 2015.

    conv5×5 20 → maxpool 2 → conv5×5 50 → maxpool 2 → fc 500 → ReLU → fc 10, no padding;
    431,080 parameters for 28×28 input.

    Args:
        in_channels: input channels.
        channels: output channels of the two convolutions.
        hidden: width of the hidden fully connected layer.
        num_classes: number of outputs.
        input_size: side of the square input; at least 16.

    Example:
        >>> LeNet5()(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (20, 50),
        hidden: int = 500,
        num_classes: int = 10,
        input_size: int = 28,
    ) -> None:
        super().__init__()
        in_channels = _pos_int("in_channels", in_channels)
        c1, c2 = _int_list("channels", channels, length=2)
        hidden = _pos_int("hidden", hidden)
        num_classes = _pos_int("num_classes", num_classes)
        input_size = _pos_int("input_size", input_size)
        side = ((input_size - 4) // 2 - 4) // 2
        if side < 1:
            raise PruneError(f"LeNet5 needs input_size >= 16, got {input_size}")
        self.zoo_spec = {
            "name": "lenet5",
            "kwargs": {
                "in_channels": in_channels,
                "channels": [c1, c2],
                "hidden": hidden,
                "num_classes": num_classes,
                "input_size": input_size,
            },
        }
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=5),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=5),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(c2 * side * side, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class MNISTNet(nn.Module):
    """The MNIST CNN of the ``ccexam`` package, whose trained weights ``create`` can load.

    conv3×3 32 → ReLU → maxpool 2 → conv3×3 64 → ReLU → maxpool 2 → fc 128 → ReLU → fc 10,
    padding 1; 421,642 parameters for 28×28 input. Parameter names match the weights file
    (``features.0.weight``, ``features.3.weight``, ``classifier.0.weight``,
    ``classifier.2.weight`` and biases). Expects inputs normalized like
    ``datasets.load_mnist(normalize=True)``.

    Args:
        input_size: side of the square input; at least 4.

    Example:
        >>> MNISTNet()(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, input_size: int = 28) -> None:
        super().__init__()
        input_size = _pos_int("input_size", input_size)
        if input_size < 4:
            raise PruneError(f"MNISTNet needs input_size >= 4, got {input_size}")
        self.zoo_spec = {"name": "mnistnet", "kwargs": {"input_size": input_size}}
        self.input_size = input_size
        self.feature_dim = input_size // 4
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(64 * self.feature_dim**2, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # No input-shape check here (unlike ccexam's): a Python `if` on the shape would
        # stop torch.fx from tracing the model; a wrong size still fails in the Linear.
        return self.classifier(torch.flatten(self.features(x), 1))


class SmallCNN(nn.Module):
    """A small VGG-style CNN for 1×28×28 input (the classic CIFAR pruning example, adapted).

    conv3×3 64 → ReLU → maxpool 2 → conv3×3 128 → ReLU → maxpool 2 → fc 256 → ReLU →
    fc ``num_classes``, padding 1.

    Args:
        in_channels: input channels.
        num_classes: number of outputs.
        input_size: side of the square input; at least 4.

    Example:
        >>> SmallCNN()(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> None:
        super().__init__()
        in_channels = _pos_int("in_channels", in_channels)
        num_classes = _pos_int("num_classes", num_classes)
        input_size = _pos_int("input_size", input_size)
        if input_size < 4:
            raise PruneError(f"SmallCNN needs input_size >= 4, got {input_size}")
        self.zoo_spec = {
            "name": "smallcnn",
            "kwargs": {
                "in_channels": in_channels,
                "num_classes": num_classes,
                "input_size": input_size,
            },
        }
        side = input_size // 4
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(128 * side * side, 256),
            nn.ReLU(),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


_MODELS: dict[str, type[nn.Module]] = {
    "lenet300100": LeNet300100,
    "lenet5": LeNet5,
    "mnistnet": MNISTNet,
    "smallcnn": SmallCNN,
}
_PRETRAINED = ("mnistnet",)


def available() -> list[str]:
    """Names accepted by :func:`create`, sorted.

    Example:
        >>> "lenet5" in available()
        True
    """
    return sorted(_MODELS)


def _pretrained_state(name: str) -> dict[str, torch.Tensor]:
    # find_spec instead of `import ccexam`: importing it pulls in its broken data module.
    try:
        spec = importlib.util.find_spec("ccexam")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / "weights" / "mnist.pth" if locations else None
    if path is None or not path.is_file():
        raise PruneError(
            f"pretrained weights for {name!r} come from the 'ccexam' package, which is not "
            f"installed; install it with `{_CCEXAM_INSTALL}`"
        )
    # The file was saved from a GPU; map_location lets it load on any machine.
    return torch.load(path, map_location="cpu", weights_only=True)


def create(name: str, *, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a reference model by name.

    Args:
        name: one of :func:`available`: ``"lenet300100"``, ``"lenet5"``, ``"mnistnet"``,
            ``"smallcnn"``.
        pretrained: load trained weights; only ``"mnistnet"`` has them (99.05 % on the
            MNIST test set with ``load_mnist(normalize=True)`` inputs), from the ``ccexam``
            package.
        **kwargs: constructor arguments of the model class.

    Returns:
        The model, with ``zoo_spec`` set so it can be rebuilt.

    Raises:
        PruneError: unknown name, bad constructor arguments, weights asked for a model that
            has none, or ``ccexam`` not installed.

    Example:
        >>> model = create("mnistnet", pretrained=True)
        >>> same = create(model.zoo_spec["name"], **model.zoo_spec["kwargs"])
    """
    if not isinstance(name, str):
        raise PruneTypeError(f"model name must be a str, got {type(name).__name__}: {name!r}")
    if name not in _MODELS:
        raise unknown("model", name, _MODELS)
    cls = _MODELS[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    extra = sorted(set(kwargs) - set(accepted))
    if extra:
        raise PruneTypeError(
            f"{name!r} got unexpected argument(s) {', '.join(extra)}; "
            f"accepted: {', '.join(accepted)}"
        )
    if pretrained and name not in _PRETRAINED:
        raise PruneError(
            f"no pretrained weights for {name!r}; models with weights: "
            f"{', '.join(repr(n) for n in _PRETRAINED)}"
        )
    model = cls(**kwargs)
    if pretrained:
        state = _pretrained_state(name)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise PruneError(
                f"the pretrained {name!r} weights do not fit the arguments {kwargs!r}; "
                f"use the defaults: {exc}"
            ) from exc
    return model
