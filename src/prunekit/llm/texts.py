"""The texts of an llm recipe: calibration and evaluation sources checked, and their token streams.

A text is ``"kjv"`` (the King James Bible: its calibration half, or its evaluation half;
the halves share no verse), another evaluation domain of :data:`prunekit.llm.data.EVAL_DOMAINS`
(evaluation only), or a UTF-8 text file; a relative path is looked up beside the recipe
file first (``base``), then in the current folder. :func:`check_text` and
:func:`check_eval_text` check a source before any model is loaded; :func:`load_texts`
tokenizes them (the KJV once for both halves) and :func:`evaluation_windows` cuts the
evaluation windows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import PruneError

__all__ = [
    "KJV", "check_eval_text", "check_text", "evaluation_windows", "load_streams", "load_texts", "locate", "same_file",
]

KJV = "kjv"


# ------------------------------------------------------------------------------ sources


def locate(value: str, base: Path | None) -> Path:
    """``value`` as a path: beside the recipe file if it exists there, else as given."""
    p = Path(value).expanduser()
    if not p.is_absolute() and base is not None and (base / p).exists():
        p = base / p
    return p


def check_text(value: str, base: Path | None = None) -> str:
    """``"kjv"`` or the absolute path of an existing text file; else a :class:`PruneError`."""
    if value == KJV:
        return value
    from .data import EVAL_DOMAINS

    p = locate(value, base)
    if not p.is_file() and value in EVAL_DOMAINS:
        raise PruneError(f"text {value!r} is an evaluation domain; calibration text is 'kjv' (the King James "
                         "Bible's calibration half) or a text file, so that it shares no document with the evaluation")
    if not p.is_file():
        raise PruneError(f"text {value!r} is neither 'kjv' (the King James Bible halves) nor an existing text file")
    return str(p.resolve())


def check_eval_text(value: str, base: Path | None = None) -> str:
    """An evaluation domain name (``kjv``, ``pydoc``, ``news``) as given, or the absolute path of
    an existing text file; else a :class:`PruneError`.

    A domain whose package is missing is refused here, with the ``pip`` command that installs it.
    """
    from .data import EVAL_DOMAINS, eval_domain

    if value in EVAL_DOMAINS:
        eval_domain(value).locate()
        return value
    p = locate(value, base)
    if not p.is_file():
        raise PruneError(f"text {value!r} is neither an evaluation domain ({', '.join(EVAL_DOMAINS)}) "
                         "nor an existing text file")
    return str(p.resolve())


def same_file(a: str, b: str) -> bool:
    """Whether two text sources are the same file or the same domain (``"kjv"``'s halves are
    disjoint, so ``"kjv"`` is never the same as itself)."""
    from .data import EVAL_DOMAINS

    if KJV in (a, b):
        return False
    if a in EVAL_DOMAINS or b in EVAL_DOMAINS:
        return a == b
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


# ------------------------------------------------------------------------------ streams


def _kjv_summary(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if not k.endswith("_books")}


def load_streams(tokenizer: Any, calib_text: str | None, eval_text: str | None) -> tuple[Any, Any, dict[str, Any] | None]:
    """Token streams ``(calibration, evaluation, kjv info)`` for ``"kjv"``, other evaluation
    domains or file sources (``None``: not needed)."""
    calib, evals, kjv, _ = load_texts(tokenizer, calib_text, [eval_text] if eval_text is not None else [])
    return calib, (evals[eval_text] if eval_text is not None else None), kjv


def load_texts(tokenizer: Any, calib_text: str | None,
               eval_texts: list[str]) -> tuple[Any, dict[str, Any], dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """Token streams of a calibration text and of evaluation texts.

    Args:
        tokenizer: the model's tokenizer.
        calib_text: ``"kjv"`` (its calibration half) or a file; ``None`` when not needed.
        eval_texts: evaluation domains (``"kjv"``: its evaluation half, ``"pydoc"``, ``"news"``)
            and files.

    Returns:
        ``(calibration stream or None, {text: evaluation stream}, kjv info or None,
        {text: what the stream holds})``. The KJV is tokenized once for both halves.
    """
    from .data import domain_info, eval_stream, kjv_streams, text_tokens

    kjv = kjv_streams(tokenizer) if KJV == calib_text or KJV in eval_texts else None
    calib = None
    if calib_text is not None:
        calib = kjv[0] if calib_text == KJV else text_tokens(calib_text, tokenizer)
    streams: dict[str, Any] = {}
    infos: dict[str, dict[str, Any]] = {}
    for text in eval_texts:
        if text == KJV:
            assert kjv is not None
            streams[text], infos[text] = kjv[1], domain_info(KJV, kjv[1])
        else:
            streams[text], infos[text] = eval_stream(text, tokenizer)
    return calib, streams, (_kjv_summary(kjv[2]) if kjv is not None else None), infos


def evaluation_windows(streams: dict[str, Any], n: int, seqlen: int, seed: int) -> dict[str, Any]:
    """:func:`prunekit.llm.data.eval_windows` of every stream; an error names the text it is about."""
    from .data import eval_windows

    out = {}
    for text, stream in streams.items():
        try:
            out[text] = eval_windows(stream, n, seqlen, seed)
        except PruneError as e:
            raise PruneError(f"evaluation text {text!r}: {e}") from None
    return out
