"""Sentence encoders: pooled embeddings from token ids equal the reference embedding path,
the cosine/MSE objectives are what they say, and a pruned encoder distilled on unlabelled
text moves towards the dense one's embeddings, with the teacher untouched."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from conftest import clone_state, same_state  # noqa: E402
from llm_fixtures import bert_tokenizer, random_sentences, tiny_bert  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit.distillation import distillation_loss, output_loss  # noqa: E402
from prunekit.errors import PruneError, PruneTypeError  # noqa: E402
from prunekit.llm import SentenceEmbedder, apply_shape, distill_encoder, score, sentence_embeddings, text_batches  # noqa: E402
from prunekit.llm.budget import Shape  # noqa: E402


@pytest.fixture
def tok(tmp_path: Path):
    return bert_tokenizer(tmp_path)


_sentences = random_sentences


def _mean_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=-1).mean())


def test_objectives_are_their_formulas():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    cos = torch.stack([F.cosine_similarity(s[i, j], t[i, j], dim=0) for i in range(2) for j in range(5)])
    assert float(output_loss(s, t, "cosine")) == pytest.approx(float((1 - cos).mean()), abs=1e-6)
    assert float(output_loss(s, t, "mse")) == pytest.approx(float(((s - t) ** 2).mean()), abs=1e-6)
    assert torch.equal(output_loss(s, t, "kl", 2.0), distillation_loss(s, t, 2.0))
    assert float(output_loss(t, t, "cosine")) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(PruneError, match=r"differ in shape"):
        output_loss(s, t[..., :3], "cosine")


def test_embedder_equals_the_reference_embedding_path(tok):
    model = tiny_bert(vocab_size=len(tok))
    texts = _sentences(20, seed=3)
    reference = sentence_embeddings(model, tok, texts, max_length=64)
    batches = text_batches(tok, texts, batch_size=6, max_length=64, seed=1)
    # Every text exactly once, each batch padded to its longest text with the pad id.
    ids = tok(texts, truncation=True, max_length=64)["input_ids"]
    rows = [[int(v) for v in r if v != tok.pad_token_id] for b in batches for r in b]
    assert sorted(map(tuple, rows)) == sorted(map(tuple, ids))
    assert [len(b) for b in sorted(batches, key=len)] == [2, 6, 6, 6]
    assert all(int((b != tok.pad_token_id).sum(1).max()) == b.shape[1] for b in batches)
    emb = SentenceEmbedder(model).eval()
    with torch.no_grad():
        got = {tuple(int(v) for v in r if v != tok.pad_token_id): e for b in batches for r, e in zip(b, emb(b))}
    for i, row in enumerate(ids):
        assert torch.allclose(got[tuple(row)], reference[i], atol=1e-5)
    cls = SentenceEmbedder(model, pooling="cls", normalize=False).eval()
    with torch.no_grad():
        first = cls(batches[0])
        assert torch.allclose(first, model(input_ids=batches[0], attention_mask=batches[0].ne(0).long()).last_hidden_state[:, 0])


def test_a_shrunk_encoder_is_distilled_towards_the_dense_embeddings(tok):
    teacher = tiny_bert(vocab_size=len(tok), num_hidden_layers=3, intermediate_size=64)
    before_state = clone_state(teacher)
    train, held = _sentences(240, seed=1), _sentences(60, seed=2)
    calib = torch.tensor([tok(" ".join(_sentences(4, seed=s)), truncation=True, max_length=48, padding="max_length")["input_ids"]
                          for s in range(8)])
    student = copy.deepcopy(teacher)
    kept = apply_shape(student, Shape(32, 4, 4, 16, 2), score(teacher, calib))
    assert student.config.num_hidden_layers == 2 and student.config.intermediate_size == 16
    dense = sentence_embeddings(teacher, tok, held)
    pruned = _mean_cos(sentence_embeddings(student, tok, held), dense)
    hist = distill_encoder(student, teacher, tok, train, epochs=4, lr=3e-3, batch_size=16,
                           layers={i: k for i, k in enumerate(kept)}, seed=0)
    after = _mean_cos(sentence_embeddings(student, tok, held), dense)
    assert after > pruned + 0.02 and after > 0.9, (pruned, after)  # on texts it never saw
    assert hist["loss"][-1] < hist["loss"][0]
    assert same_state(teacher, before_state) and not teacher.training
    # A sample budget stops after the step that reaches it.
    h = distill_encoder(copy.deepcopy(student), teacher, tok, train, epochs=3, batch_size=16, max_samples=40, seed=0)
    assert h["samples"] == 48 and h["steps"] == 3


def test_feature_terms_add_the_hidden_state_error(tok):
    teacher = tiny_bert(vocab_size=len(tok), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.encoder.layer[0].output.dense.weight.mul_(0.5)
    texts = _sentences(8, seed=4)
    seen = []

    class Spy:
        def on_step_end(self, step, model, loss):
            seen.append(float(loss))

    batch = text_batches(tok, texts, batch_size=8)[0]
    pk.distill(SentenceEmbedder(student), SentenceEmbedder(teacher), [batch], lr=1e-12, objective="cosine",
               features={"encoder.encoder.layer.0": "encoder.encoder.layer.1"}, progress=False, callbacks=[Spy()])
    with torch.no_grad():
        mask = batch.ne(0).long()
        s_out = student(input_ids=batch, attention_mask=mask, output_hidden_states=True)
        t_out = teacher(input_ids=batch, attention_mask=mask, output_hidden_states=True)
        cos = output_loss(SentenceEmbedder(student)(batch), SentenceEmbedder(teacher)(batch), "cosine")
        mse = F.mse_loss(s_out.hidden_states[1], t_out.hidden_states[2])
    assert seen[0] == pytest.approx(float(cos + mse), rel=1e-4)


def test_bad_calls_are_refused_and_change_nothing(tok):
    teacher = tiny_bert(vocab_size=len(tok))
    student = copy.deepcopy(teacher)
    state = clone_state(student)
    texts = _sentences(8, seed=5)
    narrow = tiny_bert(vocab_size=len(tok), hidden_size=16)
    with pytest.raises(PruneError, match=r"hidden size 16 differs from the teacher's 32"):
        distill_encoder(narrow, teacher, tok, texts)
    with pytest.raises(PruneError, match=r"alpha=0.5 .* needs objective='kl', not 'cosine'"):
        pk.distill(SentenceEmbedder(student), SentenceEmbedder(teacher), text_batches(tok, texts), alpha=0.5,
                   objective="cosine", progress=False)
    with pytest.raises(PruneError, match=r"objective must be one of 'kl', 'cosine', 'mse'"):
        pk.distill(student, teacher, text_batches(tok, texts), objective="l1", progress=False)
    with pytest.raises(PruneError, match=r"schedule must be one of 'cosine', 'constant'"):
        distill_encoder(student, teacher, tok, texts, schedule="step")
    with pytest.raises(PruneError, match=r"texts\[1\] is ''"):
        text_batches(tok, ["a", ""])
    with pytest.raises(PruneTypeError, match="non-empty list of strings"):
        text_batches(tok, "the lord")
    with pytest.raises(PruneError, match="pooling must be one of 'mean', 'cls'"):
        SentenceEmbedder(student, pooling="max")
    assert same_state(student, state)
