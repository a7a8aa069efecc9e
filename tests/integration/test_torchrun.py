"""``torchrun --nproc_per_node 2`` (gloo, CPU): distributed calibration and DDP fine-tuning.

The test launches this very file under ``python -m torch.distributed.run`` (the module
behind ``torchrun``) once; the two ranks run every case and write what they hold to files,
and the tests compare them:

* distributed calibration (``prune_llm(..., distributed=True)``, and the disk offload with
  it): each rank runs half of the calibration batches, the statistics are all-reduced, and
  every rank's pruned weights equal, bit for bit, those of one process pruning on all the
  batches (SparseGPT's updated weights included);
* fine-tuning (``prunekit.distributed.fit``) and distillation (``prunekit.distributed.distill``)
  under DDP: masks identical on both ranks after training, weights identical, checkpoints
  written by rank 0 only, and a run interrupted after one epoch and resumed ends exactly
  where the uninterrupted run ends.
"""

from __future__ import annotations

import faulthandler
import gc
import os
import socket
import warnings
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))  # llm_fixtures, when run by torchrun

WORLD = 2
CASES: dict[str, dict[str, Any]] = {
    "wanda": dict(method="wanda"),
    "sparsegpt": dict(method="sparsegpt"),
    "wanda_owl": dict(method="wanda", allocation="owl", owl_m=2.0),
    "sparsegpt_24_sequential": dict(method="sparsegpt", pattern="2:4", sequential=True),
}
COMMON = dict(batch_size=2, reconstruct=0, self_calibration=0.0)


def _ids() -> torch.Tensor:
    from llm_fixtures import token_ids

    return token_ids(10, 12, vocab=96, seed=3)  # 5 batches: 3 on rank 0, 2 on rank 1


def _llama() -> nn.Module:
    from llm_fixtures import tiny_llama

    return tiny_llama(0, num_hidden_layers=3)


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x[:256] / 16.0, dtype=torch.float32), torch.tensor(y[:256])


def _train(out: Path, tag: str, epochs: int, ckpt: Path | None, distill: bool) -> dict[str, Any]:
    import prunekit as pk
    from prunekit import distributed as pkd

    model = _classifier()
    pkd.prune_once(model, sparsity=0.7, criterion="magnitude", allocation="global")
    data = pkd.shard(_digits())
    kw = dict(epochs=epochs, lr=0.05, optimizer="sgd", batch_size=16, seed=0, progress=False,
              checkpoint_dir=ckpt, checkpoint_every=3)
    if distill:
        teacher = _classifier()
        pkd.distill(model, teacher, data[0], temperature=2.0, **kw)
    else:
        pkd.fit(model, data, **kw)
    return {"masks": {k: v.clone() for k, v in pk.masks(model).items()},
            "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "identical": pkd.masks_identical(model)}


def _worker(out: Path, source: Path) -> None:
    """One rank of the torchrun job: every case, results to ``out``."""
    import torch.distributed as dist

    from prunekit import distributed as pkd
    from prunekit.llm import prune_llm
    from prunekit.llm.offload import prune_offloaded

    faulthandler.enable(all_threads=True)  # a native crash prints every thread's Python stack
    torch.set_num_threads(1)
    assert pkd.init_from_env(backend="gloo", timeout_s=120)
    r = pkd.rank()

    def stage(what: str) -> None:
        print(f"rank {r}: {what}", flush=True)

    try:
        for name, kw in CASES.items():
            stage(name)
            model = _llama()
            prune_llm(model, _ids(), distributed=True, **COMMON, **kw)
            torch.save(model.state_dict(), out / f"{name}-rank{r}.pt")
        stage("offload")
        rep = prune_offloaded(source, out / "offloaded", _ids(), offload="disk", distributed=True, method="sparsegpt",
                              **COMMON)
        torch.save({"peak": rep.peak_rss_bytes}, out / f"offload-rank{r}.pt")
        for distill in (False, True):
            kind = "distill" if distill else "fit"
            stage(kind)
            whole = _train(out, kind, 2, out / f"{kind}-whole", distill)
            _train(out, kind, 1, out / f"{kind}-resumed", distill)  # "interrupted" after epoch 1 ...
            resumed = _train(out, kind, 2, out / f"{kind}-resumed", distill)  # ... and resumed to epoch 2
            torch.save({"whole": whole, "resumed": resumed}, out / f"{kind}-rank{r}.pt")
        dist.barrier()
        (out / f"done-rank{r}").touch()
        stage("done")
    finally:
        gc.collect()  # nothing that holds the process group is left for interpreter shutdown
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(port: int, *args: str) -> list[str]:
    """The launch line (as in docs/scale.md): ``torchrun --nproc_per_node 2 ...``."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(WORLD),
            "--master_addr", "127.0.0.1", "--master_port", str(port), *args]


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from llm_fixtures import tiny_llama_folder

    out = tmp_path_factory.mktemp("torchrun")
    source = tiny_llama_folder(out / "source", num_hidden_layers=3, vocab_size=96)  # the weights of _llama()
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[2] / "src")}
    failures = []
    for _ in range(3):
        run = subprocess.run(torchrun_command(_free_port(), str(HERE), str(out), str(source)), env=env,
                             capture_output=True, text=True, timeout=240)
        if run.returncode == 0:
            break
        failures.append(f"torchrun exited {run.returncode}\n--- stdout ---\n{run.stdout[-4000:]}\n"
                        f"--- stderr (head) ---\n{run.stderr[:6000]}\n--- stderr (tail) ---\n{run.stderr[-3000:]}")
        if all((out / f"done-rank{r}").is_file() for r in range(WORLD)):
            break  # every rank finished and wrote its results: the crash came at shutdown
        port_taken = "address already in use" in (run.stderr + run.stdout).lower()
        crashed = any(sign in run.stderr for sign in ("SIGABRT", "SIGSEGV", "SIGBUS", "terminate called", "Fatal Python"))
        if not (port_taken or crashed):
            break  # a Python error in a rank: the same again on a retry
    if not all((out / f"done-rank{r}").is_file() for r in range(WORLD)):
        pytest.fail("the torchrun job did not finish:\n" + "\n\n".join(failures))
    if failures:  # finished, after a crash that is not ours to hide: shown in the test summary
        warnings.warn("torchrun job: " + "\n\n".join(failures), RuntimeWarning, stacklevel=1)
    return out


def _reference(kw: dict[str, Any]) -> dict[str, torch.Tensor]:
    from prunekit.llm import prune_llm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks' setting: same kernels, same sums
    try:
        model = _llama()
        prune_llm(model, _ids(), **COMMON, **kw)
    finally:
        torch.set_num_threads(threads)
    return model.state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_distributed_calibration_equals_one_process(job: Path, case: str) -> None:
    ref = _reference(CASES[case])
    zeros = 0
    for r in range(WORLD):
        got = torch.load(job / f"{case}-rank{r}.pt")
        assert got.keys() == ref.keys()
        for k, v in ref.items():
            assert torch.equal(got[k], v), (case, r, k)
        zeros += sum(int((v == 0).sum()) for k, v in got.items() if "proj" in k)
    assert zeros > 0  # the reference did prune


@pytest.mark.slow
def test_distributed_offload_writes_one_process_result(job: Path) -> None:
    import transformers

    ref = _reference(dict(method="sparsegpt"))
    back = transformers.AutoModelForCausalLM.from_pretrained(job / "offloaded").state_dict()
    for k, v in ref.items():
        assert torch.equal(back[k], v), k
    assert torch.load(job / "offload-rank0.pt")["peak"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fit", "distill"])
def test_ddp_training_keeps_masks_and_resumes_exactly(job: Path, kind: str) -> None:
    runs = [torch.load(job / f"{kind}-rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for run in runs:
        for which in ("whole", "resumed"):
            assert run[which]["identical"]
            assert run[which]["masks"] and all(m.sum() < m.numel() for m in run[which]["masks"].values())
        # Interrupted after epoch 1 and resumed == uninterrupted, exactly.
        for k, v in run["whole"]["state"].items():
            assert torch.equal(run["resumed"]["state"][k], v), k
    for k, v in runs[0]["whole"]["state"].items():  # both ranks hold the same model
        torch.testing.assert_close(runs[1]["whole"]["state"][k], v, atol=1e-6, rtol=0)
    # Rank 0 alone wrote checkpoints: one file per folder.
    for folder in (f"{kind}-whole", f"{kind}-resumed"):
        assert sorted(p.name for p in (job / folder).iterdir()) == ["last.pt"]


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
