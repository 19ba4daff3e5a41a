#!/usr/bin/env python3
"""tools/bench.py: the benchmark against mosquitto (tools/benchmarks/cli.py; --help)."""
from benchmarks.cli import main

if __name__ == "__main__":
    main()  # the figures are printed (and written with --json); exit 0
