#!/usr/bin/env python3
"""tools/attacks.py: one attack of issue 8 (tools/hardening/attacks.py; --help)."""
import sys

from hardening.attacks import main

if __name__ == "__main__":
    sys.exit(main())
