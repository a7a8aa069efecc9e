"""``python -m prunekit.cli``: the ``prunekit`` command line."""

from prunekit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
