#!/usr/bin/env python3
"""tools/wear.py: flash wear of the store (tools/measure/wear.py; --help)."""
import sys

from measure.wear import main

if __name__ == "__main__":
    sys.exit(main())
