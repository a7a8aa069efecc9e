"""benchmarks/imagenet_distill.py's data path: crops of the photos that install with
scikit-learn and matplotlib (the EfficientNet-Lite0 weights are a benchmark-only install)."""

from __future__ import annotations

import numpy as np
import torch

from llm_fixtures import load_benchmark


def test_crops_are_normalised_224_squares_drawn_anew_each_pass_and_reproducible():
    bench = load_benchmark("imagenet_distill")
    photos = [bench.photo("sklearn:china.jpg"), bench.photo("matplotlib:grace_hopper.jpg")]
    crops = bench.Crops(photos, n=10, batch_size=4, seed=3)
    first, second = list(crops), list(crops)
    assert [b.shape for b in first] == [(4, 3, 224, 224), (4, 3, 224, 224), (2, 3, 224, 224)] and len(crops) == 3
    assert not torch.equal(first[0], second[0])  # new crops at every pass
    again = list(bench.Crops(photos, n=10, batch_size=4, seed=3))
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # seeded
    # ImageNet normalisation: pixel 0 and 255 map to (0 - mean) / std and (1 - mean) / std
    lo, hi = (0 - bench.MEAN) / bench.STD, (1 - bench.MEAN) / bench.STD
    x = torch.cat(first)
    assert torch.all(x >= lo - 1e-5) and torch.all(x <= hi + 1e-5)


def test_heldout_crops_hold_each_photo_whole_then_its_crops():
    bench = load_benchmark("imagenet_distill")
    img = bench.photo("sklearn:flower.jpg")
    x = bench.heldout_crops([img, img], per_photo=3, seed=0)
    assert x.shape == (8, 3, 224, 224)
    whole = bench._tensor(img.resize((224, 224)))
    assert torch.equal(x[0], whole) and torch.equal(x[4], whole)
    crop = bench.random_crop(img, np.random.default_rng(0), scale=(1.0, 1.0))
    assert crop.shape == (3, 224, 224)
