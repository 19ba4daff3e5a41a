#!/usr/bin/env python3
"""tools/fuzz.py: the seeded socket fuzzer (tools/hardening/fuzz.py; --help)."""
import sys

from hardening.fuzz import main

if __name__ == "__main__":
    sys.exit(main())
