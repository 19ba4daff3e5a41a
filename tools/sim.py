#!/usr/bin/env python3
"""midge host simulator: will this board carry this fleet?

    .venv/bin/python tools/sim.py tools/scenarios/pico_w_hub.toml [--out DIR] [--board NAME] [--duration S]

Runs the real broker under the MicroPython unix port with the board's heap
budget and caps, drives it with the scenario's fleet, prints a verdict and a
report, writes report.txt, report.json and chart.png. The code is in
tools/sim/ (see tools/sim/__init__.py); the scenario format is in README.md,
"Host simulator".
"""
import sys

from sim.cli import main  # the package tools/sim/, not this file

if __name__ == "__main__":
    sys.exit(main())
