#!/usr/bin/env python3
"""tools/heap_report.py: heap figures of midge (tools/measure/heap.py; --help)."""
import sys

from measure.heap import main

if __name__ == "__main__":
    sys.exit(main())
