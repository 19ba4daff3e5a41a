# The REPL of an emulated board, for mpremote (tools/device/ptybridge.py
# runs it as `micropython -i repl_board.py IMAGE PLATFORM PROGSIZE`): the
# image is mounted at "/" as on the board (the host stays at /host), and
# `import sys` answers the board's platform and has the board's sys.path, so
# tools/deploy's probe and copies, and mpremote mip, meet what they would
# meet on the board.
import sys
import vfs
import os

sys.path.insert(0, (__file__.rsplit("/", 1)[0] if "/" in __file__ else "."))
from emulate import FileBlockDevice, BLOCK  # noqa: E402


class _BoardSys:
    """sys as the board's: its platform, everything else the real one."""

    def __init__(self, real, platform):
        self._real = real
        self.platform = platform

    def __getattr__(self, name):
        return getattr(self._real, name)


def _mount(image, progsize):
    f = open(image, "r+b")
    size = f.seek(0, 2)
    fs = vfs.VfsLfs2(FileBlockDevice(f, size // BLOCK), progsize=progsize)
    vfs.mount(vfs.VfsPosix("/"), "/host")
    vfs.umount("/")
    vfs.mount(fs, "/")
    os.chdir("/")


_mount(sys.argv[1], int(sys.argv[3]))
sys.path[:] = ["", ".frozen", "/lib"]   # a board's (mpremote mip installs into the "/lib" entry)
sys.modules["sys"] = _BoardSys(sys, sys.argv[2])
