"""Where ``prunekit`` commands write: outputs checked before the work starts, built in a
temporary sibling, and moved into place at the end.

* A file or a ``pk.save`` folder that exists is replaced only with ``--overwrite``; a
  folder holding files prunekit did not write is refused (the save replaces the folder).
* ``prunekit run`` writes into a new or empty folder; with ``--overwrite`` into an earlier
  run's folder or beside a user's files, which are kept.
* An unwritable location is reported before anything runs; a failure or Ctrl-C removes
  the temporary folder and the parent folders it created
  (:func:`prunekit.cli.common.new_parents_removed_on_failure`).

This module imports neither torch nor the rest of prunekit at import time.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prunekit.cli.common import fail, new_parents_removed_on_failure

#: what ``prunekit run`` writes into its output folder
RUN_OUTPUTS = ("model", "metrics.json", "recipe.yaml", "report.html", "report.md")
#: what ``pk.save`` writes into its folder
SAVE_OUTPUTS = frozenset({"spec.json", "model.safetensors", "model.pkpack"})
_SHOWN = 3  # file names listed in a message before "and N more"


def _listing(path: Path) -> str:
    names = sorted(p.name for p in path.iterdir())
    return ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def check_writable(option: str, path: Path) -> None:
    """The place ``path`` would be created in (its nearest existing ancestor) is a writable folder."""
    anc = path.absolute().parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        fail(f"{option} {str(path)!r} cannot be created: {str(anc)!r} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        fail(f"{option} {str(path)!r} cannot be written: the folder {str(anc)!r} is not writable")
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        fail(f"{option} {str(path)!r} cannot be written: the folder is not writable")


def check_file_out(option: str, path: Path, overwrite: bool) -> None:
    """A file output: not a folder, replaced only with ``--overwrite``, writable."""
    if path.is_dir():
        fail(f"{option} {str(path)!r} is a folder; give a file name")
    if path.exists() and not overwrite:
        fail(f"{option} {str(path)!r} already exists; pass --overwrite to replace it")
    check_writable(option, path)


def _save_spec(path: Path) -> dict[str, Any] | None:
    try:
        spec = json.loads((path / "spec.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return spec if isinstance(spec, dict) and spec.get("format") == "prunekit" else None


def check_save_out(option: str, path: Path, overwrite: bool, *, own_demo: bool = False) -> None:
    """A folder ``pk.save`` writes: new or empty, or an earlier save replaced with
    ``--overwrite`` (``own_demo``: an earlier demo save is replaced without it). A folder
    holding anything else is refused, since the whole folder is replaced."""
    if path.exists() and not path.is_dir():
        fail(f"{option} {str(path)!r} is a file; give a folder path")
    if path.is_dir() and any(path.iterdir()):
        spec = _save_spec(path)
        if spec is None:
            fail(f"{option} {str(path)!r} is a non-empty folder that is not a prunekit save ({_listing(path)}); "
                 "choose a new or empty folder (the save replaces the whole folder)")
        others = sorted(p.name for p in path.iterdir() if p.name not in SAVE_OUTPUTS)
        if others:
            fail(f"{option} {str(path)!r} holds a prunekit save and other files ({', '.join(others[:_SHOWN])}); "
                 "move them or choose another folder (the save replaces the whole folder)")
        if not overwrite and not (own_demo and (spec.get("metadata") or {}).get("demo")):
            fail(f"{option} {str(path)!r} already holds a saved model; pass --overwrite to replace it")
    check_writable(option, path)


#: what ``--report DIR`` of ``prunekit compare`` / ``analyze`` writes into its folder
REPORT_OUTPUTS = ("report.html", "report.md", "compare.json", "sensitivity.json")


def check_report_out(option: str, path: Path, overwrite: bool) -> None:
    """A report folder: new or empty, or an earlier report's (its files replaced only with
    ``--overwrite``); a folder holding other files is refused. matplotlib must be there."""
    if path.exists() and not path.is_dir():
        fail(f"{option} {str(path)!r} is a file; give a folder path (report.html and report.md go into it)")
    if path.is_dir():
        others = sorted(p.name for p in path.iterdir() if p.name not in REPORT_OUTPUTS)
        if others:
            fail(f"{option} {str(path)!r} holds files that are not a prunekit report ({', '.join(others[:_SHOWN])}"
                 f"{' and more' if len(others) > _SHOWN else ''}); choose a new or empty folder")
        if not overwrite and any(path.iterdir()):
            fail(f"{option} {str(path)!r} already holds a report; pass --overwrite to replace it")
    check_writable(option, path)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        fail(f"{option} needs matplotlib for the plots: pip install prunekit[plot]")


def is_run_output(path: Path) -> bool:
    """``path`` holds what an earlier ``prunekit run`` wrote (metrics.json, recipe.yaml, model/)."""
    try:
        metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(metrics, dict) and ("recipe" in metrics or "task" in metrics)
            and (path / "recipe.yaml").is_file() and (path / "model").is_dir())


def check_run_out(option: str, path: Path, overwrite: bool) -> None:
    """``prunekit run``'s folder: new or empty; else ``--overwrite`` replaces prunekit's own
    entries (``RUN_OUTPUTS``) and keeps every other file."""
    if path.exists() and not path.is_dir():
        fail(f"{option} {str(path)!r} is a file; give a folder path")
    if path.is_dir() and any(path.iterdir()):
        earlier = is_run_output(path)
        if not overwrite:
            if earlier:
                fail(f"{option} {str(path)!r} holds an earlier prunekit run; pass --overwrite to replace it")
            fail(f"{option} {str(path)!r} is a non-empty folder that is not a prunekit run ({_listing(path)}); "
                 "choose a new folder, or pass --overwrite to write prunekit's files beside yours (yours are kept)")
        clash = [n for n in RUN_OUTPUTS if (path / n).exists()]
        if clash and not earlier:
            fail(f"{option} {str(path)!r} holds {', '.join(clash)}, which prunekit did not write and would replace; "
                 f"move {'it' if len(clash) == 1 else 'them'} or choose another folder")
        model = path / "model"
        if model.is_dir():  # replaced as a whole: it may hold only what pk.save wrote
            extra = sorted(p.name for p in model.iterdir() if p.name not in SAVE_OUTPUTS)
            if extra:
                fail(f"{option} {str(path)!r}: model/ holds files prunekit did not write ({', '.join(extra[:_SHOWN])}"
                     f"{' and more' if len(extra) > _SHOWN else ''}), which replacing it would delete; move them first")
    check_writable(option, path)


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; when the block succeeds, its entries
    take their places in ``out`` (see :func:`place`); when it fails, it is removed and
    ``out`` stays as it was."""
    with new_parents_removed_on_failure(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        # named before it exists, so an interrupt at any point leaves nothing to find
        tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.partial"
        try:
            tmp.mkdir(mode=0o777)  # the umask applies, as for any folder
            yield tmp
            place(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def place(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out``. A new or empty ``out`` is replaced in
    one rename; otherwise each entry replaces its namesake in ``out`` (and the entries an
    earlier run wrote that this one did not are removed), keeping every other file. If a
    step fails, what was moved is put back."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        os.replace(tmp, out)
        return
    stale = [n for n in RUN_OUTPUTS if (out / n).exists() and not (tmp / n).exists()] if is_run_output(out) else []
    aside = Path(tempfile.mkdtemp(prefix=".prunekit-old.", dir=out))
    moved: list[str] = []  # old entries set aside
    placed: list[str] = []
    try:
        for name in sorted(p.name for p in tmp.iterdir()) + stale:
            if (out / name).exists():
                os.replace(out / name, aside / name)
                moved.append(name)
            if (tmp / name).exists():
                os.replace(tmp / name, out / name)
                placed.append(name)
    except BaseException:
        for name in placed:
            os.replace(out / name, tmp / name)
        for name in moved:
            os.replace(aside / name, out / name)
        aside.rmdir()  # empty unless something could not be put back; then it keeps it
        raise
    shutil.rmtree(aside, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling renamed into place (the file
    gets the mode a plain ``open`` gives it)."""
    with new_parents_removed_on_failure(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.partial"
        try:
            with open(tmp, "x", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
