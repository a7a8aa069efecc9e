"""Print the foreign-architecture contract table: ``.venv/bin/python tests/foreign/table.py``."""

import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foreign.contract import check, pairs, table  # noqa: E402

warnings.simplefilter("ignore")
start = time.perf_counter()
outcomes = [check(a, g) for a, g in pairs()]
print(table(outcomes))
print(f"({time.perf_counter() - start:.1f} s)")
if "-v" in sys.argv:
    for o in outcomes:
        print(f"{o.arch:28} {o.granularity:12} {o.status:8} {o.detail[:150]} {o.compact[:100]}")
