"""prunekit on Keras 3 (TensorFlow, JAX, PyTorch backends) vs TF-MOT 0.8.1 on tf-keras.

The same MNIST MLP (Flatten → Dense 128 ReLU → Dense 10) and a small CNN (two Conv2D +
pooling → Dense 10) are trained dense, then pruned to 90 % while training, on the same
cubic polynomial schedule (0 → 90 %, Zhu & Gupta; TF-MOT's ``PolynomialDecay`` with
power 3, prunekit's ``Gradual``), by magnitude:

- TF-MOT: ``prune_low_magnitude`` + ``UpdatePruningStep`` on ``tf-keras`` (TF-MOT has no
  Keras 3 support);
- prunekit: ``prunekit.keras.wrap`` + ``PruningCallback`` on Keras 3, once per backend.

Reported per framework and model: test accuracy (mean ± std over seeds); the step ratio,
the pruned model's training-step time (its pruning callback on, at the final sparsity)
over the dense model's, both fitted in turn on the same batches for ``timing_rounds``
rounds of ``timing_epochs`` epochs each, order alternating: the ratio of the 20th
percentiles of all their steps after each fit's first quarter (a step is one batch begin to
the next, so every callback's per-step work counts; timing the two side by side keeps the
machine's load drift out of the ratio, and a low percentile the other work on a shared
machine, which only ever adds time; a prunekit callback retraces the training step when
each fit begins, and a freshly traced TensorFlow step ran a few % slower for its first few
dozen steps here, hence several epochs per fit for the MLP). The JSON also holds the medians'
ratio (``step_ratio_p50``), the ratio of the pruning phase to the dense training phase
before it (``schedule_step_ratio``) and the narrower "call" window, batch begin to batch
end (``call_ratio``); the
saved file zipped (``.h5`` for tf-keras, ``.keras`` for Keras 3, stripped), the TFLite file
(TensorFlow only), and whether the zeros survive save → load → fit of the pruning-form
model. Each (framework, model, seed) runs in its own process: a Keras backend is fixed at
import. TF-MOT needs ``pip install prunekit[bench]`` (tf-keras, tensorflow-model-optimization);
``--tfmot-path DIR`` adds a folder holding them to the TF-MOT process's path only.

Run: ``OMP_WAIT_POLICY=PASSIVE python benchmarks/keras_vs_tfmot.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

FRAMEWORKS = ("tfmot", "prunekit-tensorflow", "prunekit-jax", "prunekit-torch")
FULL = {"models": ("mlp", "cnn"), "seeds": (0, 1, 2), "n_train": 12_000, "n_test": 10_000, "dense_epochs": 2,
        "prune_epochs": 3, "batch": 128, "timing_rounds": 6,
        "timing_epochs": {"mlp": 4, "cnn": 1}}
QUICK = {"models": ("mlp",), "seeds": (0,), "n_train": 1024, "n_test": 512, "dense_epochs": 1, "prune_epochs": 1,
         "batch": 128, "timing_rounds": 2, "timing_epochs": {"mlp": 1, "cnn": 1}}
SPARSITY = 0.9
COLUMNS = ("framework", "model", "accuracy", "vs TF-MOT", "step ratio", "vs TF-MOT", "call ratio", "sparsity", "zipped file",
           "TFLite", "zeros survive")


# -- worker (one framework, model and seed per process) ---------------------------------------
def _zipped(path: Path) -> int:
    out = path.with_suffix(path.suffix + ".zip")
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.write(path, arcname=path.name)
    return out.stat().st_size


def _build(K: Any, kind: str) -> Any:
    L = K.layers
    if kind == "mlp":
        layers = [L.Flatten(), L.Dense(128, activation="relu"), L.Dense(10)]
        shape = (28, 28)
    else:
        layers = [L.Conv2D(16, 3, activation="relu"), L.MaxPooling2D(), L.Conv2D(32, 3, activation="relu"),
                  L.MaxPooling2D(), L.Flatten(), L.Dense(10)]
        shape = (28, 28, 1)
    return K.Sequential([K.Input(shape), *layers]), shape


def _kernel_sparsity(K: Any, model: Any) -> float:
    zeros = total = 0
    for layer in model.layers:
        if isinstance(layer, (K.layers.Dense, K.layers.Conv2D)):
            import numpy as np

            k = np.asarray(layer.get_weights()[0])
            zeros, total = zeros + int((k == 0).sum()), total + k.size
    return zeros / max(1, total)


def worker(framework: str, kind: str, seed: int, cfg: dict[str, Any], tmp: Path) -> dict[str, Any]:
    import numpy as np

    from prunekit.datasets import load_mnist

    train, test = load_mnist("train"), load_mnist("test")
    x = train.tensors[0][: cfg["n_train"]].numpy().reshape(-1, 28, 28)
    y = train.tensors[1][: cfg["n_train"]].numpy()
    xt = test.tensors[0][: cfg["n_test"]].numpy().reshape(-1, 28, 28)
    yt = test.tensors[1][: cfg["n_test"]].numpy()
    if framework == "tfmot":
        import tensorflow as tf
        import tensorflow_model_optimization as tfmot
        import tf_keras as K
    else:
        import keras as K

        import prunekit.keras as pkk
        from prunekit.schedules import Gradual
    K.utils.set_random_seed(seed)
    model, shape = _build(K, kind)
    x, xt = x.reshape(-1, *shape), xt.reshape(-1, *shape)
    loss = K.losses.SparseCategoricalCrossentropy(from_logits=True)

    class Steps(K.callbacks.Callback):
        """Two step times, both after every other callback's hooks (it is last in the list):
        the call window (batch begin → batch end of this callback) and the full cycle (one
        batch begin to the next in the same epoch), which also counts the work each tool's
        callbacks do before the step (TF-MOT's step counter) and after it (prunekit's)."""

        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []
            self.cycles: list[float] = []
            self.t = self.last = None

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.last = None

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            self.t = time.perf_counter()
            if self.last is not None:
                self.cycles.append(self.t - self.last)
            self.last = self.t

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.times.append(time.perf_counter() - self.t)

    def median_step(times: list[float]) -> float:
        return statistics.median(times[len(times) // 4 :])  # after tracing/compilation

    model.compile(K.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    dense_steps = Steps()
    model.fit(x, y, epochs=cfg["dense_epochs"], batch_size=cfg["batch"], verbose=0, callbacks=[dense_steps])
    dense_acc = float(model.evaluate(xt, yt, verbose=0)[1])
    twin = K.models.clone_model(model)  # the dense model timed beside the pruned one
    twin.set_weights(model.get_weights())
    twin.compile(K.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    steps_per_epoch = -(-len(x) // cfg["batch"])
    end = max(2, int(0.7 * steps_per_epoch * cfg["prune_epochs"]))
    freq = max(1, end // 10)
    prune_steps = Steps()
    if framework == "tfmot":
        sched = tfmot.sparsity.keras.PolynomialDecay(0.0, SPARSITY, begin_step=0, end_step=end, power=3, frequency=freq)
        pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=sched)
        callbacks = [tfmot.sparsity.keras.UpdatePruningStep(), prune_steps]
    else:
        pruned = pkk.wrap(model)
        callbacks = [pkk.PruningCallback(Gradual(SPARSITY, begin=0, end=end, frequency=freq)), prune_steps]
    pruned.compile(K.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    pruned.fit(x, y, epochs=cfg["prune_epochs"], batch_size=cfg["batch"], verbose=0, callbacks=callbacks)
    acc = float(pruned.evaluate(xt, yt, verbose=0)[1])

    def interleaved() -> tuple[list[float], list[float]]:
        """Step times (after each fit's first quarter) of the pruned model (its callbacks
        on, at the final sparsity) and of the dense twin, the two fitted in turn on the same
        batches (order alternating): drift in the machine's load hits both alike."""
        epochs = cfg["timing_epochs"][kind]
        dense_t: list[float] = []
        pruned_t: list[float] = []
        for r in range(cfg["timing_rounds"]):
            sd, sp = Steps(), Steps()
            runs = [(twin, [sd]), (pruned, [*callbacks[:-1], sp])]
            for m, cbs in runs if r % 2 == 0 else runs[::-1]:
                m.fit(x, y, epochs=epochs, batch_size=cfg["batch"], verbose=0, callbacks=cbs)
            dense_t += sd.cycles[len(sd.cycles) // 4 :]
            pruned_t += sp.cycles[len(sp.cycles) // 4 :]
        return dense_t, pruned_t
    plain = tfmot.sparsity.keras.strip_pruning(pruned) if framework == "tfmot" else pkk.strip(pruned)
    sparsity = _kernel_sparsity(K, plain)
    file = tmp / ("m.h5" if framework == "tfmot" else "m.keras")
    plain.save(file)
    row: dict[str, Any] = {
        "framework": framework, "model": kind, "seed": seed, "dense_accuracy": dense_acc, "accuracy": acc,
        "sparsity": sparsity, "dense_step_s": median_step(dense_steps.cycles),
        "prune_step_s": median_step(prune_steps.cycles), "dense_call_s": median_step(dense_steps.times),
        "prune_call_s": median_step(prune_steps.times), "file": file.name, "file_bytes": file.stat().st_size,
        "zipped_bytes": _zipped(file),
    }
    row["schedule_step_ratio"] = row["prune_step_s"] / row["dense_step_s"]
    row["call_ratio"] = row["prune_call_s"] / row["dense_call_s"]
    dense_t, pruned_t = interleaved()
    for q in (20, 50):  # a low quantile: other work on a shared machine only ever adds time
        row[f"step_ratio_p{q}"] = float(np.percentile(pruned_t, q) / np.percentile(dense_t, q))
    row["step_ratio"] = row["step_ratio_p20"]
    if framework == "tfmot":
        conv = tf.lite.TFLiteConverter.from_keras_model(plain)
        conv.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        (tmp / "m.tflite").write_bytes(conv.convert())
        row["tflite_bytes"] = (tmp / "m.tflite").stat().st_size
    elif framework == "prunekit-tensorflow":
        row["tflite_bytes"] = pkk.export_tflite(pruned, tmp / "m.tflite", check_inputs=xt[:4]).bytes
    # save -> load -> fit of the pruning form (wrappers), with a fresh optimizer
    wrapped = tmp / ("w.h5" if framework == "tfmot" else "w.keras")
    pruned.save(wrapped)
    if framework == "tfmot":
        with tfmot.sparsity.keras.prune_scope():
            loaded = K.models.load_model(wrapped)
        extra = [tfmot.sparsity.keras.UpdatePruningStep()]  # TF-MOT's fit refuses to run without it
    else:
        loaded = K.models.load_model(wrapped)
        extra = []
    loaded.compile(K.optimizers.Adam(1e-3), loss)
    loaded.fit(x[:1024], y[:1024], epochs=1, batch_size=cfg["batch"], verbose=0, callbacks=extra)
    after = _kernel_sparsity(K, tfmot.sparsity.keras.strip_pruning(loaded) if framework == "tfmot" else pkk.strip(loaded))
    row["sparsity_after_reload_fit"] = after
    row["zeros_survive"] = bool(after >= sparsity - 1e-6)
    row["reload_fit_needs_callback"] = framework == "tfmot"
    return row


# -- driver ----------------------------------------------------------------------------------
def _run(framework: str, kind: str, seed: int, quick: bool, tfmot_path: str | None) -> dict[str, Any]:
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), TF_CPP_MIN_LOG_LEVEL="2")
    root = Path(__file__).resolve().parent.parent
    paths = [str(root / "src"), env.get("PYTHONPATH", "")]
    if framework == "tfmot":
        env["TF_USE_LEGACY_KERAS"] = "1"
        if tfmot_path:
            paths.insert(0, tfmot_path)
    else:
        env["KERAS_BACKEND"] = framework.split("-", 1)[1]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    cmd = [sys.executable, __file__, "--worker", framework, kind, str(seed)] + (["--quick"] if quick else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode != 0 or not last.startswith("{"):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"framework": framework, "model": kind, "seed": seed, "skipped": " | ".join(tail)[-400:]}
    return json.loads(last)


def _summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for fw in FRAMEWORKS:
        for kind in ("mlp", "cnn"):
            rs = [r for r in rows if r["framework"] == fw and r["model"] == kind and "skipped" not in r]
            skipped = [r["skipped"] for r in rows if r["framework"] == fw and r["model"] == kind and "skipped" in r]
            if not rs and not skipped:
                continue
            if not rs:
                out.append({"framework": fw, "model": kind, "skipped": skipped[0]})
                continue
            accs = [r["accuracy"] for r in rs]
            out.append({
                "framework": fw, "model": kind, "seeds": len(rs), "accuracy_mean": statistics.mean(accs),
                "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "step_ratio": statistics.median(r["step_ratio"] for r in rs),
                "call_ratio": statistics.median(r["call_ratio"] for r in rs),
                "sparsity": statistics.mean(r["sparsity"] for r in rs), "file": rs[0]["file"],
                "zipped_bytes": rs[0]["zipped_bytes"], "tflite_bytes": rs[0].get("tflite_bytes"),
                "zeros_survive": all(r["zeros_survive"] for r in rs),
            })
    ref = {s["model"]: s for s in out if s["framework"] == "tfmot" and "skipped" not in s}
    for s in out:
        r = ref.get(s["model"])
        if r is not None and "skipped" not in s:
            s["accuracy_minus_tfmot"] = s["accuracy_mean"] - r["accuracy_mean"]
            s["step_ratio_over_tfmot"] = s["step_ratio"] / r["step_ratio"]
            s["call_ratio_over_tfmot"] = s["call_ratio"] / r["call_ratio"]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed, the MLP, 1,024 training images (seconds)")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS), help=f"comma-separated subset of {FRAMEWORKS}")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; 1 with --quick)")
    ap.add_argument("--tfmot-path", default=None, help="a folder holding tf_keras and tensorflow_model_optimization")
    ap.add_argument("--worker", nargs=3, metavar=("FRAMEWORK", "MODEL", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.seeds is not None:
        if args.seeds < 1:
            ap.error(f"--seeds must be at least 1, got {args.seeds}")
        cfg["seeds"] = tuple(range(args.seeds))
    if args.worker:
        fw, kind, seed = args.worker
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(worker(fw, kind, int(seed), cfg, Path(tmp))))
        return
    frameworks = [f for f in args.frameworks.split(",") if f]
    bad = [f for f in frameworks if f not in FRAMEWORKS]
    if bad:
        ap.error(f"--frameworks: unknown {bad}; choose from {list(FRAMEWORKS)}")
    import _common

    start = time.perf_counter()
    rows = [_run(fw, kind, seed, args.quick, args.tfmot_path)
            for kind in cfg["models"] for seed in cfg["seeds"] for fw in frameworks]
    summary = _summary(rows)
    payload = {"benchmark": "keras_vs_tfmot", "environment": _common.environment(),
               "config": {**cfg, "sparsity": SPARSITY, "schedule": "polynomial power 3, 0 -> 0.9 over 70 % of the pruning steps, 10 updates",
                          "quick": args.quick, "frameworks": frameworks},
               "wall_s": round(time.perf_counter() - start, 1), "summary": summary, "rows": rows}
    path = _common.write_json("keras_vs_tfmot", payload, args.out)

    def fmt(s: dict[str, Any]) -> tuple[str, ...]:
        if "skipped" in s:
            return (s["framework"], s["model"], "skipped: " + s["skipped"][:60], "", "", "", "", "", "", "", "")
        acc = f"{s['accuracy_mean']:.2%} ± {s['accuracy_std']:.2%}"
        d_acc = f"{s['accuracy_minus_tfmot']:+.2%}" if "accuracy_minus_tfmot" in s else "-"
        d_step = f"{s['step_ratio_over_tfmot']:.2f}x" if "step_ratio_over_tfmot" in s else "-"
        tfl = f"{s['tflite_bytes']:,}" if s.get("tflite_bytes") else "-"
        return (s["framework"], s["model"], acc, d_acc, f"{s['step_ratio']:.2f}", d_step, f"{s['call_ratio']:.2f}",
                f"{s['sparsity']:.1%}",
                f"{s['zipped_bytes']:,} ({s['file']})", tfl, "yes" if s["zeros_survive"] else "no")

    _common.print_table("prunekit (Keras 3) vs TF-MOT 0.8.1 (tf-keras): 90 % sparsity, polynomial schedule",
                        COLUMNS, [fmt(s) for s in summary])
    print(f"wall time {payload['wall_s']:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
