"""Offloaded one-shot pruning (:func:`prunekit.llm.offload.prune_offloaded`) against the in-memory path.

The reference is :func:`prunekit.llm.prune_llm` on the same model held whole in memory;
the offloaded result is read back with stock ``AutoModelForCausalLM.from_pretrained`` and
must equal it bit for bit (masks and SparseGPT's updated weights alike).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from llm_fixtures import tiny_llama, token_ids  # noqa: E402

from prunekit import PruneError  # noqa: E402
from prunekit.llm import prune_llm  # noqa: E402
from prunekit.llm.offload import memory_plan, prune_offloaded  # noqa: E402
from prunekit.llm.offload_io import INDEX, parse_bytes  # noqa: E402

LAYERS = 3
COMMON = dict(batch_size=3, self_calibration=0.0)


def _model() -> torch.nn.Module:
    return tiny_llama(0, num_hidden_layers=LAYERS)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("offload") / "source"
    _model().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return token_ids(8, 16, vocab=96, seed=1)


def _reference(ids: torch.Tensor, **kw: Any) -> dict[str, torch.Tensor]:
    model = _model()
    prune_llm(model, ids, **COMMON, **kw)
    return model.state_dict()


def _read_back(folder: Path) -> dict[str, torch.Tensor]:
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(folder).state_dict()


def _assert_same(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert got.keys() == ref.keys()
    for k, v in ref.items():
        assert torch.equal(got[k], v), k
    zeros = sum(int((v == 0).sum()) for k, v in got.items() if k.endswith("proj.weight"))
    assert zeros > 0


CASES = {
    "wanda": dict(method="wanda", reconstruct=0),
    "sparsegpt": dict(method="sparsegpt", reconstruct=0),
    "magnitude": dict(method="magnitude"),
    "wanda_24": dict(method="wanda", pattern="2:4", reconstruct=0),
    "sparsegpt_owl": dict(method="sparsegpt", allocation="owl", owl_m=2.0, reconstruct=0),
    "wanda_depth_sequential_reconstruct": dict(method="wanda", allocation="depth", sequential=True, reconstruct=1),
    "wanda_dsnot": dict(method="wanda", refine="dsnot", reconstruct=0),
    "rgs": dict(method="rgs", reconstruct=0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_disk_offload_equals_in_memory(source: Path, ids: torch.Tensor, tmp_path: Path, case: str) -> None:
    kw = CASES[case]
    rep = prune_offloaded(source, tmp_path / "out", ids, offload="disk", **COMMON, **kw)
    _assert_same(_read_back(tmp_path / "out"), _reference(ids, **kw))
    # One shard per block plus one per tensor outside the blocks, and the index stock loaders read.
    index = json.loads((tmp_path / "out" / INDEX).read_text())
    assert len(set(index["weight_map"].values())) == rep.shards == LAYERS + 3  # embed, norm, lm_head
    assert (tmp_path / "out" / "config.json").is_file() and rep.report.committed
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left


def test_cpu_offload_equals_in_memory(source: Path, ids: torch.Tensor, tmp_path: Path) -> None:
    kw = dict(method="sparsegpt", reconstruct=0)
    rep = prune_offloaded(source, tmp_path / "out", ids, offload="cpu", device="cpu", **COMMON, **kw)
    assert rep.offload == "cpu"
    _assert_same(_read_back(tmp_path / "out"), _reference(ids, **kw))


def test_prune_llm_with_execution_device_equals_plain(ids: torch.Tensor) -> None:
    model = _model()
    prune_llm(model, ids, device="cpu", method="wanda", reconstruct=0, **COMMON)
    _assert_same(model.state_dict(), _reference(ids, method="wanda", reconstruct=0))


@pytest.mark.parametrize("kw", [dict(method="wanda", allocation="owl", owl_m=2.0, reconstruct=0),
                                dict(method="rgs", reconstruct=0)], ids=["wanda_owl", "rgs"])
def test_spilled_activations_give_the_same_result(source: Path, ids: torch.Tensor, tmp_path: Path, kw: dict) -> None:
    full = prune_offloaded(source, tmp_path / "a", ids, **COMMON, **kw)
    budget = full.plan["total"] - full.plan["activations"] // 2  # everything fits but the activations
    rep = prune_offloaded(source, tmp_path / "b", ids, max_memory=budget, **COMMON, **kw)
    assert rep.spilled and not full.spilled
    _assert_same(_read_back(tmp_path / "b"), _read_back(tmp_path / "a"))


def test_memory_plan_formula() -> None:
    one = memory_plan(1000, [200, 300], [16, 32], 4, 16, 64, False, 50)
    assert one["total"] == 1000 + 300 * 25 + 12 * (16**2 + 32**2) + 64 * 16 * 4
    assert memory_plan(1000, [200, 300], [], 4, 16, 64, True, 50)["activations"] == 2 * 64 * 16 * 4


def test_refusals_leave_no_output(source: Path, ids: torch.Tensor, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(PruneError, match="below what one block needs"):
        prune_offloaded(source, out, ids, max_memory="1KB", method="wanda", **COMMON)
    with pytest.raises(PruneError, match="self_calibration"):
        prune_offloaded(source, out, ids, method="wanda", batch_size=3, self_calibration=0.5)
    with pytest.raises(PruneError, match="offload"):
        prune_offloaded(source, out, ids, offload="gpu", method="wanda", **COMMON)
    with pytest.raises(PruneError, match="reconstruct=0"):
        prune_offloaded(source, out, ids, max_memory=1, method="wanda", reconstruct=1, **COMMON)
    with pytest.raises(PruneError, match="does not accept unknown_option"):
        prune_offloaded(source, out, ids, method="wanda", unknown_option=1, **COMMON)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(PruneError, match="did not write"):
        prune_offloaded(source, mine, ids, method="magnitude", **COMMON)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_checkpoint_without_safetensors_is_refused(tmp_path: Path, ids: torch.Tensor) -> None:
    folder = tmp_path / "bin"
    model = _model()
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(PruneError, match="pytorch_model.bin.*safetensors"):
        prune_offloaded(folder, tmp_path / "out", ids, method="wanda", **COMMON)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value, expected", [("8GB", 8 * 10**9), ("512MiB", 512 * 2**20), ("1.5 tb", 1.5e12), (4096, 4096)])
def test_parse_bytes(value: object, expected: float) -> None:
    assert parse_bytes("max_memory", value) == int(expected)


@pytest.mark.parametrize("value", ["8XB", "-1GB", "", 0, True, 1.5])
def test_parse_bytes_refuses(value: object) -> None:
    with pytest.raises(PruneError, match="max_memory"):
        parse_bytes("max_memory", value)


@pytest.mark.parametrize("kw, match", [(dict(device="bogus"), "not a torch device"), (dict(device=3), "device must be"),
                                       (dict(distributed=True), "torchrun"), (dict(distributed=1), "distributed")])
def test_prune_llm_refuses_bad_device_and_distributed(ids: torch.Tensor, kw: dict[str, Any], match: str) -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PruneError, match=match):
        prune_llm(model, ids, method="wanda", reconstruct=0, **COMMON, **kw)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
