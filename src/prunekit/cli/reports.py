"""``--report DIR`` of ``prunekit compare``, ``prunekit analyze`` and ``prunekit search``:
the HTML report, its Markdown twin and the numbers as JSON, written into DIR (checked
before the work by :func:`prunekit.cli.output.check_report_out`, or
:func:`check_search_report_out` for a search; every file written atomically).

This module imports neither torch nor the rest of prunekit at import time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prunekit.cli import output
from prunekit.cli.common import console, expected_errors, fail, new_parents_removed_on_failure


def _settings_text(payload: dict[str, Any], threads: int) -> dict[str, Any]:
    recipe = dict(payload.get("recipe") or {})
    t, ft = payload.get("phases") or (None, None)
    out: dict[str, Any] = {
        "model": payload["model"],
        "data": f"MNIST, {payload['train_examples']:,} training / {payload['test_examples']:,} test images",
        "target sparsity": f"{recipe.pop('sparsity', 0):.2%}",
        "epoch budget": f"{recipe.pop('epochs', '')} ({t} training + {ft} fine-tuning)",
        "seeds": ", ".join(map(str, payload.get("seeds") or [])),
    }
    recipe.pop("train_epochs", None)
    out.update({k.replace("_", " "): v for k, v in recipe.items()})
    out["wall time"] = f"{payload.get('wall_time_s', 0):.0f} s"
    out["threads (--threads)"] = threads
    return out


def write_compare(folder: Path, payload: dict[str, Any], threads: int) -> None:
    """``folder/report.html``, ``report.md`` and ``compare.json`` of a ``prunekit compare`` run."""
    from prunekit.report.compare import write_compare_report

    with expected_errors(prefix=f"--report {str(folder)!r}: "), new_parents_removed_on_failure(folder):
        folder.mkdir(parents=True, exist_ok=True)
        output.write_text_atomic(folder / "compare.json", json.dumps(payload, indent=2) + "\n")
        path = write_compare_report(folder / "report.html", payload["rows"],
                                    settings=_settings_text(payload, threads), warnings=payload.get("warnings") or (),
                                    title=f"prunekit compare: {payload['model']} at "
                                          f"{payload['recipe']['sparsity']:.0%} sparsity")
    console.print(f"wrote {path} (and report.md, compare.json)", highlight=False, soft_wrap=True)


def write_sensitivity(folder: Path, report: Any, settings: dict[str, Any]) -> None:
    """``folder/report.html``, ``report.md`` and ``sensitivity.json`` of ``prunekit analyze``."""
    from prunekit.report.analyze import write_sensitivity_report

    with expected_errors(prefix=f"--report {str(folder)!r}: "), new_parents_removed_on_failure(folder):
        folder.mkdir(parents=True, exist_ok=True)
        output.write_text_atomic(folder / "sensitivity.json", json.dumps(report.to_dict(), indent=2) + "\n")
        path = write_sensitivity_report(folder / "report.html", report, settings=settings,
                                        title=f"prunekit analyze: sensitivity of {settings.get('source')}")
    console.print(f"wrote {path} (and report.md, sensitivity.json)", highlight=False, soft_wrap=True)


#: What ``prunekit search --report DIR`` writes into DIR.
SEARCH_OUTPUTS = ("report.html", "report.md", "search.json")


def check_search_report_out(option: str, path: Path, results: Path | None = None) -> None:
    """``search --report``: a folder that is new or empty, or holds an earlier search's
    report (replaced: a search is rerun to resume, and its report is rebuilt from every run
    in ``--results``, which must not be inside it). A folder holding anything else, another
    command's report included, is refused. matplotlib must be there."""
    if results is not None and path.resolve() in results.resolve().parents:
        fail(f"{option} {str(path)!r} holds --results {str(results)!r}; keep the runs outside the report folder")
    if path.exists() and not path.is_dir():
        fail(f"{option} {str(path)!r} is a file; give a folder path (report.html, report.md and search.json go into it)")
    if path.is_dir():
        names = sorted(p.name for p in path.iterdir())
        others = [n for n in names if n not in SEARCH_OUTPUTS]
        if others or (names and "search.json" not in names):
            shown = others or names
            fail(f"{option} {str(path)!r} holds files that are not a prunekit search report "
                 f"({', '.join(shown[:3])}{' and more' if len(shown) > 3 else ''}); choose a new or empty folder")
    output.check_writable(option, path)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        fail(f"{option} needs matplotlib for the plots: pip install prunekit[plot]")


def write_search(folder: Path, result: Any, settings: dict[str, Any], title: str) -> None:
    """``folder/report.html``, ``report.md`` and ``search.json`` (the settings and
    ``SearchResult.to_dict()``) of ``prunekit search``."""
    from prunekit.report.search import write_search_report

    payload = {"settings": settings, **result.to_dict()}
    with expected_errors(prefix=f"--report {str(folder)!r}: "), new_parents_removed_on_failure(folder):
        folder.mkdir(parents=True, exist_ok=True)
        output.write_text_atomic(folder / "search.json", json.dumps(payload, indent=2) + "\n")
        path = write_search_report(folder / "report.html", payload, settings=settings, title=title)
    console.print(f"wrote {path} (and report.md, search.json)", highlight=False, soft_wrap=True)
