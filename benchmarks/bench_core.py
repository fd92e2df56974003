"""Thin wrapper: the suite lives in the package, as ``python -m procqueue.bench``.

Kept so that ``python benchmarks/bench_core.py [options]`` goes on working; it
takes the same options (``--help``). See ``benchmarks/README.md``.
"""

from procqueue.bench.__main__ import cli

if __name__ == "__main__":
    cli()
