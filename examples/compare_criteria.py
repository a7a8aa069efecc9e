"""Compare every element-level criterion at 90 % sparsity on LeNet-300-100 (no fine-tuning).

A LeNet-300-100 is trained for one epoch on 10,000 MNIST images; then each criterion that
scores single weights (``magnitude``, ``normalized_magnitude``, ``gradient``,
``normalized_gradient``, ``taylor``, ``hessian``, and the ``random`` baseline) prunes a
fresh copy to 90 % with LAMP allocation, and the test accuracy is printed as a table.
Data-driven criteria get four calibration batches and cross entropy as ``loss_fn``.

With LAMP, ``normalized_magnitude`` equals ``magnitude`` and ``normalized_gradient``
equals ``gradient``: LAMP's rescaling does not change under a per-layer scale factor.

Run: ``python examples/compare_criteria.py`` (about 10 s on 2 CPU cores).
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

import prunekit as pk
from prunekit import datasets, registry, train, zoo

SPARSITY = 0.9


def element_criteria() -> list[str]:
    """Registered criteria whose scores have the weight's shape (usable unstructured)."""
    return [n for n in pk.available("criterion") if registry.get("criterion", n).level == "element"]


def main() -> None:
    torch.manual_seed(0)
    train_set = datasets.subset(datasets.load_mnist("train", flatten=True), 10_000, seed=0)
    test_set = datasets.subset(datasets.load_mnist("test", flatten=True), 2_000, seed=0)
    x, y = train_set.tensors
    calibration = [(x[i : i + 128], y[i : i + 128]) for i in range(0, 512, 128)]

    model = zoo.create("lenet300100")
    train.fit(model, train_set, epochs=1, seed=0, progress=False)
    dense = train.evaluate(model, test_set)

    rows = []
    for name in element_criteria():
        pruned = copy.deepcopy(model)
        start = time.perf_counter()
        result = pk.prune(
            pruned, SPARSITY, criterion=name, allocation="lamp", data=calibration, loss_fn=F.cross_entropy
        )
        seconds = time.perf_counter() - start
        rows.append((name, result.sparsity, train.evaluate(pruned, test_set), seconds))

    print(f"LeNet-300-100, 1 epoch on 10k MNIST images: dense accuracy {dense:.2%}")
    print(f"{'criterion':<22}{'sparsity':>10}{'accuracy':>10}{'time':>9}")
    for name, sparsity, acc, seconds in sorted(rows, key=lambda r: -r[2]):
        print(f"{name:<22}{sparsity:>10.2%}{acc:>10.2%}{seconds:>8.2f}s")
    best = max(rows, key=lambda r: r[2])
    baseline = next(r for r in rows if r[0] == "random")
    print(f"best: {best[0]} {best[2]:.2%} vs random baseline {baseline[2]:.2%}")


if __name__ == "__main__":
    main()
