#!/usr/bin/env python3
"""tools/store_heap.py: heap cost of a full store (tools/measure/store_heap.py; --help)."""
import sys

from measure.store_heap import main

if __name__ == "__main__":
    sys.exit(main())
