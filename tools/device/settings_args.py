"""The settings options tools/deploy and tools/image share."""
import getpass
import sys

from device.layout import LayoutError, settings_bytes


def add_settings_args(ap):
    g = ap.add_argument_group("settings (/midge.json on the board; never written into the repo)")
    g.add_argument("--settings", metavar="FILE", help="a settings file (firmware/midge.example.json shows the keys)")
    g.add_argument("--ssid", help="Wi-Fi network name")
    g.add_argument("--password", help="Wi-Fi password (asked for when --ssid is given without it; "
                                      "\"\" for an open network)")
    g.add_argument("--hostname", help="the board's network name (default midge)")


def settings_from_args(args, prompt=getpass.getpass, interactive=None):
    """The settings file's bytes, or None (leave the board's own)."""
    password = args.password
    if args.ssid is not None and password is None:
        if interactive is None:
            interactive = sys.stdin.isatty()
        if not interactive:
            raise LayoutError("--ssid without --password and no terminal to ask on "
                              "(give --password, \"\" for an open network)")
        password = prompt("Wi-Fi password for %r: " % args.ssid)
    return settings_bytes(args.settings, args.ssid, password, args.hostname)
