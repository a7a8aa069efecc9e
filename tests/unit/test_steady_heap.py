"""steady_heap: every timing first asks glibc to keep freed memory (same model, same regime).

Each case runs in a child process: the setting is process-wide and stays.
"""

import os
import subprocess
import sys

import pytest

CHILD = r"""
import os, sys
import torch
from prunekit.metrics_timing import steady_heap, time_runner

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

# a timing call is what turns it on
time_runner(lambda: None, (), 0, 1)
kept = steady_heap()
x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
before = rss()
del x
after = rss()
print(kept, (before - after) / 2**20)
"""

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.path.exists("/proc/self/statm"), reason="glibc and /proc only"
)


def _child(env_value: str | None) -> tuple[bool, float]:
    env = dict(os.environ)
    env.pop("PRUNEKIT_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["PRUNEKIT_KEEP_FREED_MEMORY"] = env_value
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"):
        env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    kept, released = out.stdout.split()
    return kept == "True", float(released)


@glibc_only
def test_timing_keeps_freed_memory_in_the_process():
    kept, released_mib = _child(None)
    assert kept
    # the freed 64 MiB stays with the process, ready for the next pass
    assert released_mib < 8


@glibc_only
def test_opt_out_leaves_the_allocator_alone():
    kept, released_mib = _child("0")
    assert not kept
    # glibc's default: a block this large is mapped on its own and handed back when freed
    assert released_mib > 56
