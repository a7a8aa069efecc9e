"""Add a new pruning criterion in one class, then use it like a built-in one.

The criterion below scores each weight of a Linear layer by its magnitude times the norm
of the input feature it multiplies, |W_ij| · ‖X_j‖₂ over the calibration data (the score
of Wanda, Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language
Models"). Writing it takes one class:

* subclass ``pk.Criterion`` and implement ``scores(ctx)``, returning one tensor per
  prunable weight (``ctx.targets``), higher = more important;
* set ``needs_data = True`` so ``pk.prune`` asks for ``data=`` when it is missing;
* decorate it with ``@pk.register("criterion", "<name>")``.

From then on the name works everywhere a criterion is accepted (``pk.prune``,
``pk.Pruner``, ``pk.available("criterion")``), with every granularity and allocation, and
the class itself is callable as a functional scorer. The script trains a LeNet-300-100
briefly and compares the new criterion with plain magnitude at 90 % sparsity.

Run: ``python examples/custom_criterion.py`` (about 5 s on 2 CPU cores).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import prunekit as pk
from prunekit import datasets, train, zoo


@pk.register("criterion", "input_norm_magnitude")
class InputNormMagnitude(pk.Criterion):
    """|W_ij| · ‖X_j‖₂, where X_j is input feature j of the layer over the calibration data."""

    needs_data = True

    def scores(self, ctx: pk.criteria.Context) -> dict[str, torch.Tensor]:
        for t in ctx.targets:
            if not isinstance(t.module, nn.Linear):
                raise pk.PruneError(f"criterion {self.name!r} handles Linear layers only; ignore {t.name}")
        sq_norms: dict[str, torch.Tensor] = {}

        def record(name: str):
            def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
                x = inputs[0].detach().float()
                x = x.reshape(-1, x.shape[-1])  # (samples × tokens, in_features)
                sq_norms[name] = sq_norms.get(name, 0) + x.pow(2).sum(0)

            return hook

        handles = [t.module.register_forward_hook(record(t.name)) for t in ctx.targets]
        try:
            with torch.no_grad():
                for inputs in ctx.forward_inputs():  # pk.prune has set eval mode
                    ctx.model(inputs)
        finally:
            for h in handles:
                h.remove()
        return {t.name: t.weight.detach().abs() * sq_norms[t.name].sqrt() for t in ctx.targets}


def main() -> None:
    torch.manual_seed(0)
    train_set = datasets.subset(datasets.load_mnist("train", flatten=True), 10_000, seed=0)
    test_set = datasets.subset(datasets.load_mnist("test", flatten=True), 2_000, seed=0)
    x, y = train_set.tensors
    calibration = [(x[i : i + 256], y[i : i + 256]) for i in range(0, 1024, 256)]

    model = zoo.create("lenet300100")
    train.fit(model, train_set, epochs=1, seed=0, progress=False)
    print(f"registered: {'input_norm_magnitude' in pk.available('criterion')}")
    print(f"dense accuracy: {train.evaluate(model, test_set):.2%}")

    # The class is also a functional scorer: {weight name: scores}, the model untouched.
    scores = InputNormMagnitude()(model, data=calibration)
    print("scores:", {name: tuple(s.shape) for name, s in scores.items()})

    for criterion in ("magnitude", "input_norm_magnitude"):
        pruned = copy.deepcopy(model)
        pk.prune(pruned, 0.9, criterion=criterion, allocation="lamp", data=calibration)
        acc = train.evaluate(pruned, test_set)
        print(f"{criterion:<22} sparsity {pk.sparsity(pruned):.2%}  accuracy {acc:.2%}")


if __name__ == "__main__":
    main()
