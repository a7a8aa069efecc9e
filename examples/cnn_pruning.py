"""Channel pruning, then unstructured pruning, then fine-tuning of a small VGG-style CNN.

The PyTorch version of the classic CIFAR-style pruning example (conv 64 → conv 128 →
fc 256 → 10 classes; ``zoo.create("smallcnn")``), on 1-channel 28×28 MNIST:

1. train one epoch on 2,000 training images and evaluate on 500 test images;
2. remove half of the output channels of every hidden layer (conv filters, fc neurons)
   with the first-order Taylor criterion, ``granularity="channel"``, uniform allocation;
   the output layer keeps its 10 units (its channels are the classes);
3. prune the remaining weights unstructured by magnitude with LAMP until 95 % of all
   prunable weights are zero (earlier zeros count toward the 95 %);
4. fine-tune one epoch on 1,000 of those images with ``prunekit.train.fit``: the masks keep every zero;
5. ``pk.compact``: physically remove the pruned channels (the unstructured masks on what
   is left are kept, sliced), check the outputs are unchanged, commit, and print accuracy
   before/after and the ``pk.measure`` figures.

Channel pruning is coupled: a removed filter takes the next layer's input slice with it,
so the compacted model is a genuinely smaller dense model (half the widths, about a
quarter of the weights) and runs faster; the unstructured zeros inside it only shrink the
compressed file and the effective FLOPs (what a kernel that skips zeros would execute).

Run: ``python examples/cnn_pruning.py`` (about 25 s on 2 CPU cores).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import prunekit as pk
from prunekit import datasets, train, zoo
from prunekit.metrics import compare_table, format_table_text


def channels_left(result: pk.PruneResult) -> str:
    return ", ".join(f"{l.name.removesuffix('.weight')} {l.units - l.pruned_units}/{l.units}" for l in result.layers)


def main() -> None:
    torch.manual_seed(0)
    train_set = datasets.subset(datasets.load_mnist("train"), 2_000, seed=0)
    test_set = datasets.subset(datasets.load_mnist("test"), 500, seed=0)
    x, y = train_set.tensors
    calibration = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 256, 64)]
    example = x[:16]

    model = zoo.create("smallcnn")
    train.fit(model, train_set, epochs=1, batch_size=64, seed=0, progress=False)
    acc_dense = train.evaluate(model, test_set, batch_size=100)
    before = pk.measure(model, example, batch_size=16, warmup=2, repeats=10)

    channels = pk.prune(
        model,
        0.5,
        criterion="taylor",
        granularity="channel",
        allocation="uniform",
        data=calibration,
        loss_fn=F.cross_entropy,
        example_inputs=example,
    )
    acc_channels = train.evaluate(model, test_set, batch_size=100)
    print(f"channels kept: {channels_left(channels)}")

    weights = pk.prune(model, 0.95, criterion="magnitude", allocation="lamp")
    acc_pruned = train.evaluate(model, test_set, batch_size=100)
    print("per-layer sparsity: " + ", ".join(f"{l.name} {l.sparsity:.1%}" for l in weights.layers))

    tune_set = datasets.subset(train_set, 1_000, seed=1)
    train.fit(model, tune_set, epochs=1, batch_size=64, lr=5e-4, seed=1, progress=False)
    acc_tuned = train.evaluate(model, test_set, batch_size=100)
    sparsity_after_tuning = pk.sparsity(model)

    small = pk.compact(model, example)  # checks small(example) == model(example)
    pk.commit(small)
    widths = [m.weight.shape[0] for m in small.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    print(f"compacted widths: {widths} (from {[64, 128, 256, 10]})")
    acc_small = train.evaluate(small, test_set, batch_size=100)
    after = pk.measure(small, example, batch_size=16, warmup=2, repeats=10)

    print(f"accuracy dense:                      {acc_dense:.2%}")
    print(f"accuracy after channel pruning:      {acc_channels:.2%} (sparsity {channels.sparsity:.2%} of hidden layers)")
    print(f"accuracy after unstructured pruning: {acc_pruned:.2%} (sparsity {weights.sparsity:.2%})")
    print(f"accuracy after fine-tuning:          {acc_tuned:.2%} (sparsity {sparsity_after_tuning:.2%}, zeros kept)")
    print(f"accuracy of the compacted model:     {acc_small:.2%}")
    print(format_table_text(compare_table(before, after, before_acc=acc_dense, after_acc=acc_small)))


if __name__ == "__main__":
    main()
