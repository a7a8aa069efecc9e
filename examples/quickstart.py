"""Quickstart: prune a trained MNIST CNN to 80 % sparsity, check accuracy, save and reload.

Shows the whole basic flow on real data, offline:

1. load the pretrained ``MNISTNet`` from the zoo and evaluate it on 2,000 MNIST test images;
2. prune 80 % of its prunable weights by magnitude with LAMP allocation (one call);
3. evaluate again, make the masks permanent with ``pk.commit``;
4. save it (safetensors + JSON spec) into a temporary folder and load it back;
5. print the before/after table of ``pk.measure`` (parameters, nonzeros, FLOPs, measured
   latency, size, estimated energy). Masks make nothing faster by themselves: the
   latency rows stay about equal, while nonzeros, effective FLOPs and compressed size drop.

Run: ``python examples/quickstart.py`` (about 10 s on 2 CPU cores).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import prunekit as pk
from prunekit import datasets, train, zoo
from prunekit.metrics import compare_table, format_table_text


def main() -> None:
    torch.manual_seed(0)
    model = zoo.create("mnistnet", pretrained=True)
    test = datasets.subset(datasets.load_mnist("test"), 2000, seed=0)
    x = test.tensors[0][:64]  # example inputs for pk.measure

    acc_dense = train.evaluate(model, test)
    before = pk.measure(model, x, batch_size=32, repeats=10)

    result = pk.prune(model, sparsity=0.8, criterion="magnitude", allocation="lamp")
    print(result.summary())
    acc_pruned = train.evaluate(model, test)

    pk.commit(model)  # masks -> permanent zeros; a plain nn.Module again
    after = pk.measure(model, x, batch_size=32, repeats=10)

    with tempfile.TemporaryDirectory() as tmp:
        folder = pk.save(model, Path(tmp) / "mnistnet-80", metadata={"accuracy": acc_pruned})
        files = sorted(p.name for p in folder.iterdir())
        reloaded = pk.load(folder)
        loaded_state = reloaded.state_dict()
        same = all(torch.equal(v, loaded_state[k]) for k, v in model.state_dict().items())
        acc_reloaded = train.evaluate(reloaded, test)

    print(f"dense accuracy:    {acc_dense:.2%}")
    print(f"pruned accuracy:   {acc_pruned:.2%} at sparsity {pk.sparsity(model):.2%}")
    print(f"saved files:       {', '.join(files)}; reloaded identical: {same}; accuracy {acc_reloaded:.2%}")
    print(format_table_text(compare_table(before, after, before_acc=acc_dense, after_acc=acc_pruned)))


if __name__ == "__main__":
    main()
