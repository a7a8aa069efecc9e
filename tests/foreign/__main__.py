"""Print the foreign-architecture contract table: ``python -m tests.foreign``."""

import time
import warnings

from .contract import check, pairs, table

warnings.simplefilter("ignore")
start = time.perf_counter()
outcomes = [check(a, g) for a, g in pairs()]
print(table(outcomes))
print(f"({time.perf_counter() - start:.1f} s)")
