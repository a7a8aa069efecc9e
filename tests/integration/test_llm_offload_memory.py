"""A model twice the size of the memory the process may use, pruned from disk.

A child process caps its own data memory with ``resource.setrlimit(RLIMIT_DATA)`` and prunes
(Wanda, 2:4) a random Llama whose fp32 weights are more than twice the cap, with
``prune_offloaded(offload="disk")``; it also prunes a small model the same way, which must
equal the in-memory :func:`prunekit.llm.prune_llm` bit for bit. The child prints its peak
resident memory.

Why ``RLIMIT_DATA`` and not ``RLIMIT_AS``: importing torch reserves gigabytes of address space
it never touches (allocator arenas, thread stacks, the shared libraries' mappings), so an
address-space cap small enough to matter stops ``import torch``. ``RLIMIT_DATA`` (Linux >= 4.7)
counts the private writable memory a process can actually fill (heap, anonymous mappings,
private file mappings such as safetensors' copy-on-write views), which is what holding a
model costs. The child sets ``MALLOC_MMAP_THRESHOLD_`` so that glibc returns freed
block-sized buffers to the system instead of keeping them in its heap (the heap's size is
what ``RLIMIT_DATA`` counts); large allocations of real models are above glibc's threshold
anyway. The cap is shown to bite: the child cannot allocate a buffer the size of the model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
resource = pytest.importorskip("resource")

CAP_MIB = 580
HIDDEN, MLP, HEADS, KV = 1024, 2048, 8, 4
LAYERS = 34  # 34 blocks of 34.3 MiB: 1166 MiB of fp32 weights, more than twice the 580 MiB cap

CHILD = textwrap.dedent("""
    import json, resource, sys
    import torch
    torch.set_num_threads(2)
    from prunekit.llm.offload import prune_offloaded

    big, small, out, cap, weights = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    ids = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(0))
    common = dict(method="wanda", pattern="2:4", batch_size=2, reconstruct=0)
    prune_offloaded(small, out + "/small", ids, **common)
    rep = prune_offloaded(big, out + "/big", ids, **common)
    try:
        torch.empty(weights // 4, dtype=torch.float32)
        bites = False
    except RuntimeError:
        bites = True
    print(json.dumps({"peak_rss": rep.peak_rss_bytes, "plan": rep.plan, "cap_bites": bites}))
""")


def _write_big(folder: Path) -> int:
    """A random Llama written shard by shard (the test process never holds it whole either)."""
    import transformers
    from safetensors.torch import save_file

    folder.mkdir()
    transformers.LlamaConfig(vocab_size=96, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS,
                             num_attention_heads=HEADS, num_key_value_heads=KV, max_position_embeddings=64,
                             tie_word_embeddings=False).save_pretrained(folder)
    kv = HIDDEN * KV // HEADS
    shapes = {"self_attn.q_proj.weight": (HIDDEN, HIDDEN), "self_attn.k_proj.weight": (kv, HIDDEN),
              "self_attn.v_proj.weight": (kv, HIDDEN), "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
              "mlp.gate_proj.weight": (MLP, HIDDEN), "mlp.up_proj.weight": (MLP, HIDDEN),
              "mlp.down_proj.weight": (HIDDEN, MLP), "input_layernorm.weight": (HIDDEN,),
              "post_attention_layernorm.weight": (HIDDEN,)}
    g = torch.Generator().manual_seed(0)
    # One block of random matrices; block i holds them rolled by i columns (cheaper than drawing 360M numbers).
    base = {k: torch.randn(s, generator=g) * 0.02 if len(s) == 2 else torch.ones(s) for k, s in shapes.items()}
    weight_map, total, count = {}, 0, LAYERS + 1
    for i in range(count):
        tensors = {f"model.layers.{i}.{k}": torch.roll(v, i, dims=-1) for k, v in base.items()} if i < LAYERS else {
            "model.embed_tokens.weight": torch.randn(96, HIDDEN, generator=g) * 0.02,
            "model.norm.weight": torch.ones(HIDDEN), "lm_head.weight": torch.randn(96, HIDDEN, generator=g) * 0.02}
        name = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        for k, v in tensors.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                    "weight_map": weight_map}))
    return total


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA counts anonymous memory on Linux")
def test_prunes_a_model_twice_the_memory_cap(tmp_path: Path) -> None:
    from llm_fixtures import tiny_llama
    from safetensors import safe_open

    from prunekit.llm import prune_llm

    weights = _write_big(tmp_path / "big")
    cap = CAP_MIB * 2**20
    assert weights >= 2 * cap
    tiny_llama(0, num_hidden_layers=3).save_pretrained(tmp_path / "small")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "big"), str(tmp_path / "small"),
                           str(tmp_path / "out"), str(cap), str(weights)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\nfp32 weights {weights / 2**20:.0f} MiB, RLIMIT_DATA cap {CAP_MIB} MiB, "
          f"child peak RSS {result['peak_rss'] / 2**20:.0f} MiB, plan {result['plan']}")
    # The proof is the cap itself: RLIMIT_DATA bounds the child's private memory, and a buffer the
    # size of the weights cannot be allocated under it, yet the whole model was pruned. Peak RSS
    # is printed, not asserted: it also counts clean file-backed pages (the shards being read),
    # which the kernel may leave resident (on a busy machine it reached 1.3 GB once) but can drop.
    assert result["cap_bites"]  # the model could not be held whole under the cap

    # The small model: the in-memory path's result, bit for bit.
    import transformers

    ids = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(0))
    ref = tiny_llama(0, num_hidden_layers=3)
    prune_llm(ref, ids, method="wanda", pattern="2:4", batch_size=2, reconstruct=0, self_calibration=0.0)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "small").state_dict()
    for k, v in ref.state_dict().items():
        assert torch.equal(back[k], v), k

    # The big model: every block linear 2:4 sparse, everything else as it was, every tensor present.
    out = tmp_path / "out" / "big"
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    source = json.loads((tmp_path / "big" / "model.safetensors.index.json").read_text())["weight_map"]
    assert index.keys() == source.keys()
    files = sorted(set(index.values()))
    for file in files[:2] + files[-3:]:  # the first blocks, the last block, the tensors outside the blocks
        with safe_open(str(out / file), "pt") as f, safe_open(str(tmp_path / "big" / source[next(iter(f.keys()))]), "pt") as s:
            for k in f.keys():
                w = f.get_tensor(k)
                if k.endswith("proj.weight"):
                    groups = (w.reshape(w.shape[0], -1, 4) != 0).sum(-1)
                    assert bool((groups == 2).all()), k
                    kept = w != 0
                    assert torch.equal(w[kept], s.get_tensor(k)[kept]), k
                else:
                    assert torch.equal(w, s.get_tensor(k)), k
