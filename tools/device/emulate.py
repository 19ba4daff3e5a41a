# A board under the MicroPython unix port: mounts a littlefs image of the
# board's filesystem (a file-backed block device under vfs.VfsLfs2, as the
# board's own flash) at "/", puts stub machine and network modules in
# place (tools/device/board_stubs), and runs /main.py from the image the
# way the board's firmware does after boot.
#
#   micropython -X heapsize=200k tools/device/emulate.py IMAGE WORLD.json [PROGSIZE]
#
# IMAGE: the raw filesystem (tools/image's .bin; a .uf2 is unpacked by the
# test first). WORLD.json: board_stubs/world.py. PROGSIZE: littlefs program
# size (ESP32 32, Pico W 256). The host's filesystem stays reachable at
# /host (the stubs read WORLD.json there). Prints "emu: ..." lines for what
# the board would do (reset, watchdog); exits 0 when main.py returns.
import sys
import vfs
import os

BLOCK = 4096


class FileBlockDevice:
    """The image file as a block device with littlefs' extended interface."""

    def __init__(self, f, nblocks):
        self.f = f
        self.nblocks = nblocks

    def readblocks(self, n, buf, off=0):
        self.f.seek(n * BLOCK + off)
        self.f.readinto(buf)

    def writeblocks(self, n, buf, off=None):
        if off is None:  # a whole-block write erases first
            off = 0
        self.f.seek(n * BLOCK + off)
        self.f.write(buf)
        self.f.flush()

    def ioctl(self, op, arg):
        if op == 4:   # block count
            return self.nblocks
        if op == 5:   # block size
            return BLOCK
        if op == 6:   # erase
            self.f.seek(arg * BLOCK)
            self.f.write(b"\xff" * BLOCK)
            return 0
        return 0


def main():
    image, world_path = sys.argv[1], sys.argv[2]
    progsize = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
    sys.path.insert(0, here + "/board_stubs")
    import world
    import machine
    import network
    sys.modules["machine"] = machine
    sys.modules["network"] = network
    world.PATH = "/host" + world_path if world_path.startswith("/") else world_path
    f = open(image, "r+b")
    size = f.seek(0, 2)
    bdev = FileBlockDevice(f, size // BLOCK)
    fs = vfs.VfsLfs2(bdev, progsize=progsize)   # OSError if the image does not mount
    vfs.mount(vfs.VfsPosix("/"), "/host")
    vfs.umount("/")
    vfs.mount(fs, "/")
    os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib"]
    world.event("booting /main.py from %s (%d blocks)" % (image, size // BLOCK))
    with open("/main.py") as src:
        code = src.read()
    exec(code, {"__name__": "__main__"})
    world.event("main.py returned: the REPL")


if __name__ == "__main__":
    main()
