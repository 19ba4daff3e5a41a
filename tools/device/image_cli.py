"""tools/image: a littlefs image of a board's filesystem with midge on it
(the .mpy bundle, the firmware files, the board file and, if given, the
settings and the password file), ready to write in one command after the stock MicroPython
firmware.

  tools/image --board esp32 [--micropython 1.28] [--flash-size 4MB] [settings] [--out FILE]
      (settings: --ssid NAME [--password P] [--hostname H] [--mqtt-user NAME [--mqtt-password PW]]
       or --settings FILE)
      -> a .bin of the vfs partition; write it with the printed esptool command
  tools/image --board pico_w [settings] [--out FILE]
      -> a .uf2 of the filesystem region; copy it to the RPI-RP2 drive

Exit status 2 with a message for a bad argument.
"""
import argparse
import os
import sys

from device import geometry, layout, lfsimage
from device.settings_args import add_settings_args, files_from_args


def parser():
    ap = argparse.ArgumentParser(prog="tools/image", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--board", required=True, help="boards/<name> (%s)" % ", ".join(layout.boards()))
    ap.add_argument("--micropython", default="1.28", metavar="VERSION",
                    help="the MicroPython version of the firmware on the board (ESP32: decides the "
                         "filesystem partition; default 1.28)")
    ap.add_argument("--flash-size", default="4MB", help="the board's flash size (ESP32; default 4MB)")
    ap.add_argument("--out", help="output file (default build/image/midge-<board>-fs.bin or .uf2)")
    add_settings_args(ap)
    return ap


def plan(args):
    """(files, image bytes, out path, what to print after) for the args."""
    info = layout.board_info(args.board)
    chip = info["chip"]
    version = geometry.parse_version(args.micropython)
    flash_size = geometry.parse_size(args.flash_size)
    offset, size = geometry.filesystem(chip, version, flash_size)
    files = [(dev, open(host, "rb").read()) for dev, host in layout.device_files(args.board)]
    extra = files_from_args(args)
    settings = dict(extra).get(layout.SETTINGS_PATH)
    files += extra
    rp = chip in geometry.RP_CHIPS
    image, used = lfsimage.build(files, size, prog_size=256 if rp else 32)
    out = args.out or os.path.join(layout.ROOT, "build", "image",
                                   "midge-%s-fs.%s" % (args.board, "uf2" if rp else "bin"))
    if rp:
        data = lfsimage.to_uf2(image, geometry.RP2040_XIP_BASE + offset, geometry.RP_CHIPS[chip])
        how = ["hold BOOTSEL while plugging the Pico W in; a drive RPI-RP2 appears",
               "copy the stock MicroPython firmware (.uf2) to it first if the board has none; it restarts",
               "hold BOOTSEL and plug in again, then copy %s to the drive" % out,
               "(or: tools/flash --chip %s --image %s --drive /media/$USER/RPI-RP2)" % (chip, out)]
    else:
        data = image
        how = ["esptool --chip %s --port PORT write-flash 0x%x %s" % (chip, offset, out),
               "(or: tools/flash --chip %s --port PORT --image %s --micropython %d.%d --flash-size %s)"
               % (chip, out, version[0], version[1], args.flash_size)]
    summary = ("%s: %d files, littlefs %d KiB at flash offset 0x%x (%d of %d blocks used)%s"
               % (out, len(files), size // 1024, offset, used, size // geometry.BLOCK_SIZE,
                  ", settings included" if settings is not None else ", no settings (the board "
                  "waits in setup mode until tools/deploy writes them)"))
    return files, data, out, [summary] + layout.access_notes(extra, "image") + how


def main(argv):
    args = parser().parse_args(argv)
    try:
        _files, data, out, lines = plan(args)
    except (layout.LayoutError, geometry.GeometryError, lfsimage.ImageError) as e:
        sys.stderr.write("image: %s\n" % e)
        return 2
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold a Wi-Fi password
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    print("\n".join(lines))
    return 0
