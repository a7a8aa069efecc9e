"""Shared fixtures: small real-data models and batches that keep the suite fast."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Every run starts from empty caches, as on a new user's machine: the MNIST cache, the
# dequantized LLM cache, Hugging Face, Keras and matplotlib state all live in a fresh folder
# (subprocesses inherit it). PRUNEKIT_TEST_CACHE_DIR names a folder to reuse instead.
_CACHE = os.environ.get("PRUNEKIT_TEST_CACHE_DIR") or tempfile.mkdtemp(prefix="prunekit-test-cache-")
for _var, _sub in (("XDG_CACHE_HOME", "xdg"), ("HF_HOME", "hf"), ("KERAS_HOME", "keras"), ("MPLCONFIGDIR", "mpl")):
    os.environ[_var] = os.path.join(_CACHE, _sub)
    os.makedirs(os.environ[_var], exist_ok=True)
os.environ.pop("PRUNEKIT_DATA_DIR", None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite times nothing it asserts on: leave glibc's allocator as it is in this long-lived
# process, which also loads LLMs (tests/unit/test_steady_heap.py checks the default in children).
os.environ.setdefault("PRUNEKIT_KEEP_FREED_MEMORY", "0")

import pytest
import torch
from torch import nn

# Under pytest-xdist (`make test` runs `-n 2`) the workers share the cores: one thread each,
# so that no OpenMP region waits on a thread the other worker has descheduled.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // _WORKERS))


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by fixture scope
def pytest_collection_modifyitems(config, items):
    """Modules with slow tests run first, each module's tests kept together (so its
    module-scoped fixtures are built once per process). With two test processes
    (pytest-xdist), the long tests then run side by side at the start, and the many short
    ones fill the gaps, instead of one long test keeping one process busy at the end."""
    def module(item):
        return getattr(getattr(item, "module", None), "__name__", None)

    slow_modules = {module(item) for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: 0 if module(item) in slow_modules else 1)


class MLP(nn.Module):
    def __init__(self, sizes=(64, 48, 32, 10)):
        super().__init__()
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(torch.flatten(x, 1))


class TiedLM(nn.Module):
    """Embedding (50 × 16) → Linear → ReLU → a head that shares the embedding's weight."""

    def __init__(self):
        super().__init__()
        self.emb, self.lin, self.head = nn.Embedding(50, 16), nn.Linear(16, 16), nn.Linear(16, 50, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x):
        return self.head(torch.relu(self.lin(self.emb(x))))


class ConvBN(nn.Module):
    """conv → BN → ReLU twice, then a linear head (8×8 single-channel inputs)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(16 * 4, 10)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


@pytest.fixture
def mlp() -> nn.Module:
    torch.manual_seed(0)
    return MLP()


@pytest.fixture
def convbn() -> nn.Module:
    torch.manual_seed(0)
    m = ConvBN()
    # Non-trivial BN scales and statistics, as a trained network would have.
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.1, 1.5)
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m


@pytest.fixture(scope="session")
def digits_batches():
    """Real data: four batches of 64 sklearn digits, images (N, 1, 8, 8) scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data[:256], dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target[:256], dtype=torch.long)
    return [(x[i : i + 64], y[i : i + 64]) for i in range(0, 256, 64)]


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)
