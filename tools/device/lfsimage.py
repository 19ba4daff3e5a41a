"""littlefs v2 images of a board's filesystem, and UF2 files of them.

An image is what MicroPython's VfsLfs2 mounts: 4096-byte blocks, the block
count equal to the filesystem region's size, on-disk version 2.0 (read and
kept as it is by every MicroPython from 1.23 to 1.28; 2.1 images are not
mountable by older littlefs). The Pico W mounts with progsize=256.
"""
import struct

import littlefs

from device.geometry import BLOCK_SIZE

DISK_VERSION = 0x00020000

UF2_MAGIC0 = 0x0A324655
UF2_MAGIC1 = 0x9E5D5157
UF2_MAGIC_END = 0x0AB16F30
UF2_FLAG_FAMILY = 0x00002000
UF2_PAYLOAD = 256


class ImageError(ValueError):
    pass


def build(files, size, prog_size=32):
    """files: [(device path, bytes)] -> the image (bytes of exactly size).
    Directories are made as needed."""
    if size % BLOCK_SIZE:
        raise ImageError("filesystem size %d is not a multiple of %d" % (size, BLOCK_SIZE))
    fs = littlefs.LittleFS(block_size=BLOCK_SIZE, block_count=size // BLOCK_SIZE,
                           prog_size=prog_size, read_size=prog_size, disk_version=DISK_VERSION,
                           mount=True)
    for path, data in files:
        parent = path.rsplit("/", 1)[0]
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(path, "wb") as f:
            f.write(data)
    used = fs.used_block_count
    fs.unmount()
    image = bytes(fs.context.buffer)
    if len(image) != size:
        raise ImageError("littlefs wrote %d bytes for a %d-byte filesystem" % (len(image), size))
    return image, used


def read(image, prog_size=32):
    """The files of an image: {device path: bytes}."""
    ctx = littlefs.UserContext(len(image))
    ctx.buffer[:] = image
    fs = littlefs.LittleFS(ctx, block_size=BLOCK_SIZE, block_count=len(image) // BLOCK_SIZE,
                           prog_size=prog_size, read_size=prog_size, mount=True)
    out = {}
    for root, _dirs, names in fs.walk("/"):
        for name in names:
            path = (root.rstrip("/") + "/" + name)
            with fs.open(path, "rb") as f:
                out[path] = f.read()
    fs.unmount()
    return out


def to_uf2(data, address, family_id):
    """data written at address (the XIP address on an RP2040) as UF2
    blocks of 256 bytes, each naming its family."""
    if address % UF2_PAYLOAD:
        raise ImageError("UF2 address 0x%x is not 256-byte aligned" % address)
    n = (len(data) + UF2_PAYLOAD - 1) // UF2_PAYLOAD
    out = bytearray()
    for i in range(n):
        chunk = data[i * UF2_PAYLOAD:(i + 1) * UF2_PAYLOAD]
        chunk = chunk + bytes(UF2_PAYLOAD - len(chunk))
        head = struct.pack("<8I", UF2_MAGIC0, UF2_MAGIC1, UF2_FLAG_FAMILY, address + i * UF2_PAYLOAD,
                           UF2_PAYLOAD, i, n, family_id)
        out += head + chunk + bytes(476 - UF2_PAYLOAD) + struct.pack("<I", UF2_MAGIC_END)
    return bytes(out)


def uf2_blocks(uf2):
    """[(address, payload, family id)] of a UF2 file; ImageError if it is not one."""
    if len(uf2) % 512 or not uf2:
        raise ImageError("not a UF2 file: its size is not a multiple of 512")
    blocks = []
    for off in range(0, len(uf2), 512):
        m0, m1, flags, addr, size, _no, _total, family = struct.unpack_from("<8I", uf2, off)
        (end,) = struct.unpack_from("<I", uf2, off + 508)
        if m0 != UF2_MAGIC0 or m1 != UF2_MAGIC1 or end != UF2_MAGIC_END:
            raise ImageError("not a UF2 file: bad magic in block %d" % (off // 512))
        blocks.append((addr, bytes(uf2[off + 32:off + 32 + size]), family if flags & UF2_FLAG_FAMILY else None))
    return blocks
