"""``--report DIR`` of ``prunekit compare`` and ``prunekit analyze``: the HTML report, its
Markdown twin and the numbers as JSON, written into DIR (checked before the work by
:func:`prunekit.cli_output.check_report_out`; every file written atomically).

This module imports neither torch nor the rest of prunekit at import time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import prunekit.cli_output as co
from prunekit.cli_util import console, fail


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
    from prunekit.errors import PruneError
    from prunekit.report.compare import write_compare_report

    try:
        with co.new_parents_removed_on_failure(folder):
            folder.mkdir(parents=True, exist_ok=True)
            co.write_text_atomic(folder / "compare.json", json.dumps(payload, indent=2) + "\n")
            path = write_compare_report(folder / "report.html", payload["rows"],
                                        settings=_settings_text(payload, threads), warnings=payload.get("warnings") or (),
                                        title=f"prunekit compare: {payload['model']} at "
                                              f"{payload['recipe']['sparsity']:.0%} sparsity")
    except PruneError as e:
        fail(f"--report {str(folder)!r}: {e}")
    console.print(f"wrote {path} (and report.md, compare.json)", highlight=False, soft_wrap=True)


def write_sensitivity(folder: Path, report: Any, settings: dict[str, Any]) -> None:
    """``folder/report.html``, ``report.md`` and ``sensitivity.json`` of ``prunekit analyze``."""
    from prunekit.errors import PruneError
    from prunekit.report.analyze import write_sensitivity_report

    try:
        with co.new_parents_removed_on_failure(folder):
            folder.mkdir(parents=True, exist_ok=True)
            co.write_text_atomic(folder / "sensitivity.json", json.dumps(report.to_dict(), indent=2) + "\n")
            path = write_sensitivity_report(folder / "report.html", report, settings=settings,
                                            title=f"prunekit analyze: sensitivity of {settings.get('source')}")
    except PruneError as e:
        fail(f"--report {str(folder)!r}: {e}")
    console.print(f"wrote {path} (and report.md, sensitivity.json)", highlight=False, soft_wrap=True)
