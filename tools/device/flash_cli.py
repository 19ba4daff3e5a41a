"""tools/flash: write stock MicroPython firmware (downloaded by the user
from micropython.org/download) to a board, and midge's filesystem image
with it.

  tools/flash --chip esp32 --port /dev/ttyUSB0 --firmware ESP32_GENERIC-v1.28.0.bin
              [--image build/image/midge-esp32-fs.bin --micropython 1.28 --flash-size 4MB]
              [--no-erase] [--baud 460800] [--merged FILE] [--dry-run]
      esptool: erase the flash, then write the firmware at the chip's offset
      (ESP32 0x1000; S2, S3, C3, C6 0x0) and the image at the filesystem
      partition. --merged FILE also writes one file of both (esptool
      merge-bin) for web flashers.
  tools/flash --chip rp2040 --firmware RPI_PICO_W-v1.28.0.uf2
              [--image build/image/midge-pico_w-fs.uf2] [--drive /media/$USER/RPI-RP2] [--dry-run]
      one UF2 of the firmware and the image (build/flash/pico_w-midge.uf2),
      copied to the BOOTSEL drive if --drive is given; else the steps.

Bad input (a missing file, an unknown chip, firmware for another chip, an
image of the wrong size) fails with a message and exit status 2.
"""
import argparse
import os
import shlex
import shutil
import struct
import subprocess
import sys

from device import geometry, lfsimage

ESP_MAGIC = 0xE9


class FlashError(Exception):
    pass


def parser():
    ap = argparse.ArgumentParser(prog="tools/flash", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--chip", required=True, help="one of: %s" % ", ".join(geometry.CHIPS))
    ap.add_argument("--firmware", help="stock MicroPython firmware for the chip (.bin for ESP32s, .uf2 for rp2040)")
    ap.add_argument("--image", help="midge's filesystem image (tools/image)")
    ap.add_argument("--port", help="serial port (ESP32 family)")
    ap.add_argument("--baud", type=int, default=460800)
    ap.add_argument("--no-erase", action="store_true", help="ESP32: keep the flash (no erase-flash)")
    ap.add_argument("--micropython", default="1.28", help="version of the firmware (ESP32: the image's partition)")
    ap.add_argument("--flash-size", default="4MB")
    ap.add_argument("--merged", metavar="FILE", help="ESP32: also write firmware + image as one file")
    ap.add_argument("--drive", help="rp2040: the mounted RPI-RP2 BOOTSEL drive")
    ap.add_argument("--out", help="rp2040: where the combined UF2 goes")
    ap.add_argument("--dry-run", action="store_true", help="print the commands; write nothing to a board")
    return ap


def esptool():
    exe = os.path.join(os.path.dirname(sys.executable), "esptool")
    return exe if os.path.exists(exe) else "esptool"


def read_file(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise FlashError("%s %s: %s" % (what, path, e.strerror or e))


def check_esp_firmware(data, chip, path):
    """An ESP image for this chip: magic 0xE9, and the chip id of its
    extended header (offset 12) that of the chip."""
    if data[:4] == b"UF2\n":
        raise FlashError("%s is a UF2 file (Raspberry Pi Pico firmware), not firmware for %s" % (path, chip))
    if len(data) < 24 or data[0] != ESP_MAGIC:
        raise FlashError("%s is not an ESP firmware image (first byte 0x%02x, not 0xE9)"
                         % (path, data[0] if data else 0))
    (chip_id,) = struct.unpack_from("<H", data, 12)
    want = geometry.ESP_CHIPS[chip][2]
    if chip_id != want:
        names = {v[2]: k for k, v in geometry.ESP_CHIPS.items()}
        raise FlashError("%s is firmware for %s, not %s" % (path, names.get(chip_id, "chip id %d" % chip_id), chip))


def check_uf2(data, chip, path, lo, hi):
    try:
        blocks = lfsimage.uf2_blocks(data)
    except lfsimage.ImageError as e:
        raise FlashError("%s: %s" % (path, e))
    family = geometry.RP_CHIPS[chip]
    for addr, payload, fam in blocks:
        if fam != family:
            raise FlashError("%s is UF2 for family 0x%08x, not %s (0x%08x)" % (path, fam or 0, chip, family))
        if not (lo <= addr and addr + len(payload) <= hi):
            raise FlashError("%s writes 0x%08x, outside 0x%08x..0x%08x" % (path, addr, lo, hi))
    return blocks


def combine_uf2(parts):
    """UF2 blocks of several files as one file, renumbered."""
    blocks = [b for part in parts for b in part]
    out = b"".join(lfsimage.to_uf2(payload, addr, fam) for addr, payload, fam in blocks)
    # renumber: to_uf2 numbered each block 0 of 1
    fixed = bytearray(out)
    for i in range(len(blocks)):
        struct.pack_into("<II", fixed, i * 512 + 20, i, len(blocks))
    return bytes(fixed)


def plan_esp(args):
    if not args.firmware and not args.image:
        raise FlashError("give --firmware, --image or both")
    if not args.port and not args.merged and not args.dry_run:
        raise FlashError("give --port (the board's serial port)")
    name, fw_offset, _id = geometry.ESP_CHIPS[args.chip]
    pairs = []
    if args.firmware:
        check_esp_firmware(read_file(args.firmware, "firmware"), args.chip, args.firmware)
        pairs += ["0x%x" % fw_offset, args.firmware]
    if args.image:
        img = read_file(args.image, "image")
        fs_offset, fs_size = geometry.filesystem(args.chip, geometry.parse_version(args.micropython),
                                                 geometry.parse_size(args.flash_size))
        if len(img) != fs_size:
            raise FlashError("%s holds %d bytes; the filesystem of MicroPython %s on %s flash is %d bytes "
                             "(make it with tools/image --micropython %s --flash-size %s)"
                             % (args.image, len(img), args.micropython, args.flash_size, fs_size,
                                args.micropython, args.flash_size))
        pairs += ["0x%x" % fs_offset, args.image]
    cmds = []
    port = args.port or "PORT"
    if args.firmware and not args.no_erase:
        cmds.append([esptool(), "--chip", name, "--port", port, "erase-flash"])
    cmds.append([esptool(), "--chip", name, "--port", port, "--baud", str(args.baud), "write-flash"] + pairs)
    merged = None
    if args.merged:
        merged = [esptool(), "--chip", name, "merge-bin", "-o", args.merged] + pairs
    return cmds, merged


def shown(argv):
    return " ".join(shlex.quote("esptool" if a.endswith("/esptool") else a) for a in argv)


def run_rp2(args, say):
    if not args.firmware and not args.image:
        raise FlashError("give --firmware, --image or both")
    parts = []
    base = geometry.RP2040_XIP_BASE
    if args.firmware:
        parts.append(check_uf2(read_file(args.firmware, "firmware"), args.chip, args.firmware,
                               base, base + geometry.PICO_W_FS_OFFSET))
    if args.image:
        fs_lo = base + geometry.PICO_W_FS_OFFSET
        blocks = check_uf2(read_file(args.image, "image"), args.chip, args.image, fs_lo, base + geometry.PICO_W_FLASH_SIZE)
        if sum(len(p) for _a, p, _f in blocks) != geometry.PICO_W_FS_SIZE or blocks[0][0] != fs_lo:
            raise FlashError("%s is not a whole Pico W filesystem (848 KiB at 0x%08x): make it with tools/image"
                             % (args.image, fs_lo))
        parts.append(blocks)
    data = combine_uf2(parts)
    out = args.out or os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                   "build", "flash", "pico_w-midge.uf2")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "wb") as f:
        f.write(data)
    say("%s: %d UF2 blocks (%s)" % (out, len(data) // 512, " + ".join(
        what for what, given in (("firmware", args.firmware), ("midge filesystem", args.image)) if given)))
    if args.drive:
        if not os.path.exists(os.path.join(args.drive, "INFO_UF2.TXT")):
            raise FlashError("%s is not a BOOTSEL drive (no INFO_UF2.TXT): hold BOOTSEL while plugging the "
                             "board in" % args.drive)
        say("$ cp %s %s/" % (shlex.quote(out), shlex.quote(args.drive)))
        if not args.dry_run:
            shutil.copyfile(out, os.path.join(args.drive, os.path.basename(out)))
            say("copied: the board writes it and restarts into MicroPython with midge")
    else:
        say("1. hold BOOTSEL while plugging the Pico W in: a drive RPI-RP2 appears")
        say("2. copy %s to it (cp %s /media/$USER/RPI-RP2/): the board writes it and restarts"
            % (out, shlex.quote(out)))


def run(argv, runner=subprocess.run, out=sys.stdout):
    args = parser().parse_args(argv)

    def say(msg):
        out.write(msg + "\n")
        out.flush()

    try:
        if args.chip in geometry.RP_CHIPS:
            run_rp2(args, say)
            return 0
        if args.chip not in geometry.ESP_CHIPS:
            raise FlashError("unknown chip %r (known: %s)" % (args.chip, ", ".join(geometry.CHIPS)))
        cmds, merged = plan_esp(args)
        if merged is not None:
            say("$ " + shown(merged))
            r = runner(merged, capture_output=True, text=True)  # offline: runs in a dry run too
            if r.returncode != 0:
                raise FlashError("esptool merge-bin failed: %s" % (r.stderr or r.stdout).strip())
        if not args.port and not args.dry_run:
            return 0
        for cmd in cmds:
            say("$ " + shown(cmd))
            if not args.dry_run:
                r = runner(cmd)
                if r.returncode != 0:
                    raise FlashError("esptool exit %d" % r.returncode)
        if not args.dry_run and args.firmware and not args.image:
            say("next: tools/deploy --board <name> --port %s --ssid <network>" % args.port)
        return 0
    except (FlashError, geometry.GeometryError) as e:
        sys.stderr.write("flash: %s\n" % e)
        return 2


def main(argv):
    return run(argv)
