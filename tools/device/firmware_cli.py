"""tools/firmware: MicroPython firmware with midge frozen in.

  tools/firmware unix32 --src MICROPYTHON [--dry-run]
      the MicroPython unix port as a 32-bit program (MICROPY_FORCE_32BIT=1;
      needs Debian's gcc-multilib), midge frozen in:
      build/firmware/unix32/micropython. Its heap figures are a 32-bit
      board's (tools/heap_report.py --micropython ... --code frozen).
  tools/firmware pico_w --src MICROPYTHON [--picotool DIR] [--dry-run]
      the Pico W firmware (stock RPI_PICO_W plus boards/pico_w/manifest.py
      and lwipopts_midge.h): build/firmware/pico_w/firmware.uf2; needs
      gcc-arm-none-eabi, cmake and the source's rp2 submodules.
  tools/firmware esp32 --src MICROPYTHON [--dry-run]
      the ESP32 firmware (stock ESP32_GENERIC plus boards/esp32/manifest.py
      and sdkconfig.midge): needs ESP-IDF (idf.py on PATH, `. export.sh`).

MICROPYTHON is a MicroPython source tree at the version of the pinned
interpreter (v1.28.0) with the submodules the port needs:
  git clone --branch v1.28.0 https://github.com/micropython/micropython
  make -C micropython/ports/unix submodules          (unix32: micropython-lib)
  make -C micropython/ports/rp2 BOARD=RPI_PICO_W submodules
  make -C micropython/ports/esp32 submodules
The source is build input only: it is never copied into this repository.
Each build assembles a board directory in build/firmware/<target>/board:
the stock board's files, its manifest as stock_manifest.py, a link "midge"
to this repository, and midge's manifest and options.
--dry-run prints the commands without running them.
"""
import argparse
import os
import shlex
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, "build", "firmware")
JOBS = str(max(1, os.cpu_count() or 1))

STOCK = {"pico_w": ("rp2", "RPI_PICO_W"), "esp32": ("esp32", "ESP32_GENERIC")}
UNIX32_FLAGS = ["MICROPY_FORCE_32BIT=1", "MICROPY_PY_BTREE=0", "MICROPY_PY_SSL=0", "MICROPY_PY_FFI=0"]


class FirmwareError(Exception):
    pass


def parser():
    ap = argparse.ArgumentParser(prog="tools/firmware", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("target", choices=["unix32", "pico_w", "esp32"])
    ap.add_argument("--src", required=True, help="MicroPython source tree (v1.28.0 with submodules)")
    ap.add_argument("--picotool", metavar="DIR",
                    help="pico_w: an installed picotool (its install prefix), as the Pico SDK 2 needs one "
                         "to make the UF2 and would otherwise download it")
    ap.add_argument("--dry-run", action="store_true")
    return ap


def check_src(src, target):
    if not os.path.isfile(os.path.join(src, "py", "mpconfig.h")):
        raise FirmwareError("%s is not a MicroPython source tree (no py/mpconfig.h)" % src)
    need = {"unix32": ["lib/micropython-lib/README.md"],
            "pico_w": ["lib/pico-sdk/pico_sdk_init.cmake", "lib/cyw43-driver/src/cyw43.h",
                       "lib/lwip/src/core/tcp.c", "lib/micropython-lib/README.md"],
            "esp32": ["lib/micropython-lib/README.md"]}[target]
    missing = [p for p in need if not os.path.exists(os.path.join(src, p))]
    if missing:
        raise FirmwareError("%s lacks %s: fetch the submodules (see tools/firmware --help)"
                            % (src, ", ".join(missing)))


def assemble_board(src, target, dry):
    """build/firmware/<target>/board: the stock board with midge's parts."""
    port, stock = STOCK[target]
    stock_dir = os.path.join(src, "ports", port, "boards", stock)
    board = os.path.join(BUILD, target, "board")
    if dry:
        return board
    shutil.rmtree(board, ignore_errors=True)
    shutil.copytree(stock_dir, board)
    if os.path.exists(os.path.join(board, "manifest.py")):
        os.rename(os.path.join(board, "manifest.py"), os.path.join(board, "stock_manifest.py"))
    else:
        with open(os.path.join(board, "stock_manifest.py"), "w") as f:
            f.write('include("$(PORT_DIR)/boards/manifest.py")\n')
    shutil.copyfile(os.path.join(ROOT, "boards", target, "manifest.py"), os.path.join(board, "manifest.py"))
    os.symlink(ROOT, os.path.join(board, "midge"))
    cmake = os.path.join(board, "mpconfigboard.cmake")
    with open(cmake, "a") as f:
        f.write("\n# midge (tools/firmware)\nset(MICROPY_FROZEN_MANIFEST ${MICROPY_BOARD_DIR}/manifest.py)\n")
        if target == "esp32":
            shutil.copyfile(os.path.join(ROOT, "boards", "esp32", "sdkconfig.midge"),
                            os.path.join(board, "sdkconfig.midge"))
            f.write("list(APPEND SDKCONFIG_DEFAULTS ${MICROPY_BOARD_DIR}/sdkconfig.midge)\n")
    if target == "pico_w":
        shutil.copyfile(os.path.join(ROOT, "boards", "pico_w", "lwipopts_midge.h"),
                        os.path.join(board, "lwipopts_midge.h"))
        with open(os.path.join(board, "mpconfigboard.h"), "a") as f:
            f.write('\n// midge (tools/firmware)\n#include "lwipopts_midge.h"\n')
    return board


def unix32_manifest(dry):
    path = os.path.join(BUILD, "unix32", "manifest.py")
    if not dry:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("# the unix port's standard frozen modules, then midge (tools/firmware unix32)\n"
                    'include("$(PORT_DIR)/variants/standard/manifest.py")\n'
                    'package("midge", base_path=%r)\n' % os.path.join(ROOT, "lib"))
    return path


def plan(target, src, dry):
    """[(argv, cwd)] to run, and the artefact it leaves."""
    src = os.path.abspath(src)
    if target == "unix32":
        manifest = unix32_manifest(dry)
        out = os.path.join(BUILD, "unix32", "micropython")
        build = "build-midge32"
        return [(["make", "-C", os.path.join(src, "mpy-cross"), "-j", JOBS], None),
                (["make", "-C", os.path.join(src, "ports", "unix"), "-j", JOBS, "BUILD=" + build,
                  "FROZEN_MANIFEST=" + manifest] + UNIX32_FLAGS, None),
                (["cp", os.path.join(src, "ports", "unix", build, "micropython"), out], None)], out
    board = assemble_board(src, target, dry)
    if target == "pico_w":
        out = os.path.join(BUILD, "pico_w", "firmware.uf2")
        build = os.path.join(BUILD, "pico_w", "build")
        return [(["make", "-C", os.path.join(src, "mpy-cross"), "-j", JOBS], None),
                (["make", "-C", os.path.join(src, "ports", "rp2"), "-j", JOBS, "BOARD_DIR=" + board,
                  "BUILD=" + build], None),
                (["cp", os.path.join(build, "firmware.uf2"), out], None)], out
    out = os.path.join(BUILD, "esp32", "firmware.bin")
    build = os.path.join(BUILD, "esp32", "build")
    return [(["make", "-C", os.path.join(src, "mpy-cross"), "-j", JOBS], None),
            (["make", "-C", os.path.join(src, "ports", "esp32"), "BOARD_DIR=" + board, "BUILD=" + build], None),
            (["cp", os.path.join(build, "firmware.bin"), out], None)], out


def run(argv, out=sys.stdout):
    args = parser().parse_args(argv)
    try:
        if not args.dry_run:
            check_src(args.src, args.target)
            if args.target == "esp32" and shutil.which("idf.py") is None:
                raise FirmwareError("ESP-IDF is not set up (no idf.py on PATH): install ESP-IDF 5.x and "
                                    "`. $IDF_PATH/export.sh`, or use --dry-run to see the steps")
        steps, artefact = plan(args.target, args.src, args.dry_run)
        env = dict(os.environ)
        if args.picotool:
            env["picotool_ROOT"] = os.path.abspath(args.picotool)
            out.write("$ export picotool_ROOT=%s\n" % shlex.quote(env["picotool_ROOT"]))
        if args.target in STOCK:
            port, stock = STOCK[args.target]
            out.write("(assemble %s from %s, with boards/%s's manifest and options)\n"
                      % (os.path.join(BUILD, args.target, "board"),
                         os.path.join(os.path.abspath(args.src), "ports", port, "boards", stock), args.target))
        for argv_, cwd in steps:
            out.write("$ %s\n" % " ".join(shlex.quote(a) for a in argv_))
            out.flush()
            if not args.dry_run:
                r = subprocess.run(argv_, cwd=cwd, env=env)
                if r.returncode != 0:
                    raise FirmwareError("step failed (exit %d): %s" % (r.returncode, " ".join(argv_)))
        if not args.dry_run:
            out.write("%s: %d bytes\n" % (artefact, os.path.getsize(artefact)))
        return 0
    except FirmwareError as e:
        sys.stderr.write("firmware: %s\n" % e)
        return 2


def main(argv):
    return run(argv)
