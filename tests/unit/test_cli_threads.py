"""--threads: the commands leave torch's thread count (OMP_NUM_THREADS, else the machine's
cores) unless it is given, and report the count torch uses."""

import torch

from prunekit.cli import checks


def test_threads_default_leaves_torch_as_it_is_and_reports_it():
    before = torch.get_num_threads()
    try:
        assert checks.set_threads(None) == before == torch.get_num_threads()
        assert checks.set_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_threads_default_follows_omp_num_threads_in_a_new_process(tmp_path):
    import os
    import subprocess
    import sys

    code = "from prunekit.cli import checks; print(checks.set_threads(None))"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
