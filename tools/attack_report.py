#!/usr/bin/env python3
"""tools/attack_report.py: the attacks' before/after table (tools/hardening/attack_report.py; --help)."""
import sys

from hardening.attack_report import main

if __name__ == "__main__":
    sys.exit(main())
