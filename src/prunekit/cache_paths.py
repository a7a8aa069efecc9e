"""Where prunekit keeps files between runs: one rule for every on-disk cache.

A cache folder is the environment variable that names it when set, else
``$XDG_CACHE_HOME/prunekit/...``, else ``~/.cache/prunekit/...``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["user_cache_dir"]


def user_cache_dir(env_var: str, *sub: str) -> Path:
    """The cache folder ``sub`` under prunekit's, unless ``env_var`` names one (it may not
    exist yet).

    Args:
        env_var: the environment variable that overrides the folder (e.g. ``PRUNEKIT_DATA_DIR``).
        *sub: path parts under ``.../prunekit``.

    Example:
        >>> user_cache_dir("PRUNEKIT_NO_SUCH_VARIABLE", "latency").parts[-2:]
        ('prunekit', 'latency')
    """
    env = os.environ.get(env_var)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache").joinpath("prunekit", *sub)
