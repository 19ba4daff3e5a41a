"""Run a host tool inside the repo's .venv (where its pinned packages
are), creating it with tools/setup.sh when it is missing."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_PYTHON = os.path.join(ROOT, ".venv", "bin", "python")


def ensure_venv():
    """Re-execute this script under .venv/bin/python unless it runs there."""
    if os.path.realpath(sys.prefix) == os.path.realpath(os.path.join(ROOT, ".venv")):
        return
    if not os.path.exists(VENV_PYTHON):
        subprocess.run([os.path.join(ROOT, "tools", "setup.sh")], check=True)
    os.execv(VENV_PYTHON, [VENV_PYTHON] + sys.argv)
