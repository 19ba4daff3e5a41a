# A littlefs image in RAM, with the small filesystem interface midge's store
# writes through (lib/midge/compat.py: OSFS), and a block device that counts
# what the flash would see: erases (per block and in all), bytes programmed
# and bytes read. tools/wear.py measures flash wear with it; tests use it to
# build an image, save it, mount it again and look at the files.
#
#   fs = new_fs()                  format + mount a fresh ESP32-like image
#   f = fs.open("/d/x", "wb"); f.write(b"..."); fs.sync(f); f.close()
#   snap = fs.dev.snapshot(); ...; fs.dev.delta(snap)   counters of a stretch
#   save_image(fs, "flash.img"); fs2 = mount_image("flash.img")
#
# CPython only (littlefs-python, pinned in requirements.txt).
from littlefs import FileHandle, LittleFS, LittleFSError, UserContext
from littlefs import lfs as lfs_api

# Geometry of MicroPython's littlefs v2 on an ESP32: the flash erases 4 KB
# sectors; vfs.VfsLfs2(bdev) defaults to readsize=32, progsize=32,
# lookahead=32 (extmod/vfs_lfs.c), and extmod/vfs_lfsx.c sets
# block_cycles=100 and cache_size = 4 * max(readsize, progsize). 512 blocks
# is the 2 MB vfs partition of a 4 MB board.
ESP32 = {
    "block_size": 4096,
    "block_count": 512,
    "read_size": 32,
    "prog_size": 32,
    "lookahead_size": 32,
    "cache_size": 128,
    "block_cycles": 100,
}


class CountingDevice(UserContext):
    """A RAM block device (a bytearray, erased = 0xFF) that counts every
    erase, program and read littlefs asks of it."""

    def __init__(self, block_size, block_count, buffer=None):
        if buffer is None:
            buffer = bytearray(b"\xff" * (block_size * block_count))
        if len(buffer) != block_size * block_count:
            raise ValueError("image is %d bytes, geometry wants %d x %d"
                             % (len(buffer), block_count, block_size))
        super().__init__(buffer=buffer)
        self.block_size = block_size
        self.block_count = block_count
        self.erases = 0                          # block erases in all
        self.prog_bytes = 0                      # bytes programmed in all
        self.read_bytes = 0                      # bytes read in all
        self.block_erases = [0] * block_count    # erases per block
        self.block_progs = [0] * block_count     # bytes programmed per block

    # --- littlefs callbacks (no logging: they run hundreds of thousands
    # of times in a wear run) ------------------------------------------------

    def read(self, cfg, block, off, size):
        self.read_bytes += size
        start = block * self.block_size + off
        return self.buffer[start:start + size]

    def prog(self, cfg, block, off, data):
        n = len(data)
        self.prog_bytes += n
        self.block_progs[block] += n
        start = block * self.block_size + off
        self.buffer[start:start + n] = data
        return 0

    def erase(self, cfg, block):
        self.erases += 1
        self.block_erases[block] += 1
        start = block * self.block_size
        self.buffer[start:start + self.block_size] = b"\xff" * self.block_size
        return 0

    def sync(self, cfg):
        return 0

    # --- counters ------------------------------------------------------------

    def snapshot(self):
        """The counters now, for delta() later."""
        return {
            "erases": self.erases,
            "prog_bytes": self.prog_bytes,
            "read_bytes": self.read_bytes,
            "block_erases": list(self.block_erases),
            "block_progs": list(self.block_progs),
        }

    def delta(self, snap):
        """What happened since snapshot `snap`: erases, bytes programmed and
        read, distinct blocks erased or programmed (blocks_touched), distinct
        blocks erased, and the most erases any one block took."""
        erased = [a - b for a, b in zip(self.block_erases, snap["block_erases"])]
        progged = [a - b for a, b in zip(self.block_progs, snap["block_progs"])]
        touched = sum(1 for e, p in zip(erased, progged) if e or p)
        return {
            "erases": self.erases - snap["erases"],
            "prog_bytes": self.prog_bytes - snap["prog_bytes"],
            "read_bytes": self.read_bytes - snap["read_bytes"],
            "blocks_touched": touched,
            "blocks_erased": sum(1 for e in erased if e),
            "max_block_erases": max(erased) if erased else 0,
        }


def _oserror(e, what):
    """littlefs-python raises LittleFSError (not an OSError); MicroPython's
    vfs raises OSError, which is what midge's store catches."""
    return OSError(-e.code, "littlefs error %d: %s" % (e.code, what))


_F = lfs_api.LFSFileFlag
_LFS_TYPE_DIR = 2  # lfs.h: LFS_TYPE_DIR, the type in lfs_info (LFSStat.type)
_MODE_FLAGS = {
    "r": _F.rdonly,
    "w": _F.wronly | _F.creat | _F.trunc,
    "x": _F.wronly | _F.creat | _F.excl,
    "a": _F.wronly | _F.creat | _F.append,
}


def _mode_flags(mode):
    """littlefs open flags for a mode string, as MicroPython maps them."""
    kinds = [ch for ch in mode if ch in _MODE_FLAGS]
    if len(kinds) > 1 or any(ch not in "rwxa+bt" for ch in mode):
        raise ValueError("bad mode %r" % mode)
    flags = _MODE_FLAGS[kinds[0]] if kinds else _F.rdonly
    if "+" in mode:
        flags |= _F.rdonly | _F.wronly  # LFS_O_RDWR
    return int(flags)


class _File:
    """A littlefs file as MicroPython's vfs hands it out: write, read,
    readinto, flush (lfs_file_sync), close, seek, tell; littlefs errors
    come out as OSError."""

    def __init__(self, raw, path):
        self._raw = raw   # littlefs.FileHandle, unbuffered: littlefs caches itself
        self._path = path

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except LittleFSError as e:
            raise _oserror(e, self._path) from e

    def write(self, data):
        return self._call(self._raw.write, data)

    def read(self, n=-1):
        return self._call(self._raw.read, n)

    def readinto(self, buf):
        return self._call(self._raw.readinto, buf)

    def flush(self):
        self._call(self._raw.flush)

    def seek(self, offset, whence=0):
        return self._call(self._raw.seek, offset, whence)

    def tell(self):
        return self._call(self._raw.tell)

    def close(self):
        self._call(self._raw.close)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LfsFS:
    """midge's store filesystem interface (see OSFS in lib/midge/compat.py)
    over a mounted littlefs-python LittleFS. `dev` is its CountingDevice."""

    def __init__(self, lfs, geometry):
        self.lfs = lfs
        self.dev = lfs.context
        self.geometry = geometry  # the LittleFS configuration it was mounted with

    def open(self, path, mode):
        """Binary modes only ("rb", "wb", "ab", "r+b", "xb"), opened with
        the flags MicroPython's vfs uses (extmod/vfs_lfsx_file.c: "a"
        creates a missing file, which littlefs-python's own open() does
        not). Writes go straight to lfs_file_write, as on MicroPython;
        littlefs caches cache_size bytes itself. A missing file for "rb":
        OSError ENOENT."""
        if "b" not in mode:
            raise ValueError("LfsFS.open: binary modes only, got %r" % mode)
        try:
            fh = lfs_api.file_open(self.lfs.fs, path, _mode_flags(mode), self.lfs.filename_encoding)
        except LittleFSError as e:
            raise _oserror(e, "open %r (%s)" % (path, mode)) from e
        return _File(FileHandle(self.lfs.fs, fh), path)

    def rename(self, src, dst):
        """Atomic: littlefs replaces an existing dst in one metadata commit."""
        try:
            self.lfs.rename(src, dst)
        except LittleFSError as e:
            raise _oserror(e, "rename %r -> %r" % (src, dst)) from e

    def remove(self, path):
        """Remove a file; a missing one is not an error (as OSFS)."""
        try:
            self.lfs.remove(path)
        except (FileNotFoundError, LittleFSError):
            pass

    def size(self, path):
        """Bytes in the file, -1 if it does not exist."""
        try:
            return self.lfs.stat(path).size
        except LittleFSError:
            return -1

    def mkdir(self, path):
        """Create a directory; no error if it exists."""
        try:
            self.lfs.mkdir(path)
        except FileExistsError:
            pass
        except LittleFSError as e:
            raise _oserror(e, "mkdir %r" % path) from e

    def sync(self, f):
        """Make written bytes durable: for littlefs, lfs_file_sync (what
        flush() does here, and what MicroPython's flush() does on a board)."""
        f.flush()

    def scan(self, path):
        """Yield the names in directory `path` one at a time (as OSFS.scan:
        MicroPython's os.ilistdir on a board); the directory must not be
        changed until the iteration ends."""
        try:
            for st in self.lfs.scandir(path):
                yield st.name
        except LittleFSError as e:
            raise _oserror(e, "scan %r" % path) from e

    def isdir(self, path):
        """True if path is a directory."""
        try:
            return self.lfs.stat(path).type == _LFS_TYPE_DIR
        except LittleFSError:
            return False

    def listdir(self, path):
        """Every name at once (for tests and checks; the store uses scan)."""
        return self.lfs.listdir(path)

    def read_file(self, path):
        """Whole file as bytes (for tests and checks)."""
        with self.lfs.open(path, "rb") as f:
            return f.read()

    def stats(self):
        """Blocks in use by the filesystem (lfs_fs_size) and in all."""
        return {"used_blocks": self.lfs.used_block_count, "block_count": self.dev.block_count}


def _lfs(dev, geometry):
    """A LittleFS over `dev`, not mounted (LittleFS(mount=True) would format
    an image it cannot mount, hiding a broken one)."""
    cfg = dict(geometry)
    return LittleFS(context=dev, mount=False, **cfg)


def new_fs(**overrides):
    """A freshly formatted and mounted image; ESP32 geometry unless
    overridden (block_count=64, ...)."""
    geometry = dict(ESP32, **overrides)
    dev = CountingDevice(geometry["block_size"], geometry["block_count"])
    lfs = _lfs(dev, geometry)
    lfs.format()
    lfs.mount()
    return LfsFS(lfs, geometry)


def save_image(fs, path):
    """Write the raw image (every block) to `path`. Files are on flash once
    synced or closed; littlefs needs no unmount for the image to mount."""
    with open(path, "wb") as f:
        f.write(fs.dev.buffer)


def mount_image(path, **overrides):
    """Mount an image file written by save_image. Raises LittleFSError if
    it is not a valid littlefs image. The counters start at zero."""
    with open(path, "rb") as f:
        return mount_bytes(f.read(), **overrides)


def mount_bytes(data, **overrides):
    """Mount a copy of the raw image `data` (block_count follows from its
    size; the other geometry must match the one it was made with)."""
    geometry = dict(ESP32, **overrides)
    bs = geometry["block_size"]
    geometry["block_count"] = len(data) // bs
    dev = CountingDevice(bs, geometry["block_count"], bytearray(data))
    lfs = _lfs(dev, geometry)
    lfs.mount()
    return LfsFS(lfs, geometry)


if __name__ == "__main__":
    # Smoke check: a 10 KB file, saved and mounted back.
    import os
    import tempfile

    fs = new_fs()
    snap = fs.dev.snapshot()
    fs.mkdir("/t")
    with fs.open("/t/ten_kb", "wb") as f:
        f.write(bytes(10240))
    print("10 KB file:", fs.dev.delta(snap))
    with tempfile.TemporaryDirectory() as d:
        img = os.path.join(d, "flash.img")
        save_image(fs, img)
        fs2 = mount_image(img)
        print("remounted:", fs2.listdir("/t"), fs2.size("/t/ten_kb"), "bytes")
