"""The settings options tools/deploy and tools/image share."""
import getpass
import sys

from device.layout import PASSWD_PATH, LayoutError, board_settings


def add_settings_args(ap):
    g = ap.add_argument_group("settings (/midge.json on the board; never written into the repo)")
    g.add_argument("--settings", metavar="FILE", help="a settings file (firmware/midge.example.json shows the keys)")
    g.add_argument("--ssid", help="Wi-Fi network name")
    g.add_argument("--password", help="Wi-Fi password (asked for when --ssid is given without it; "
                                      "\"\" for an open network)")
    g.add_argument("--hostname", help="the board's network name (default midge)")
    g.add_argument("--mqtt-user", metavar="NAME",
                   help="the hub's MQTT user: writes the password file %s (that one user, the password "
                        "hashed) and names it in the settings' config as password_file" % PASSWD_PATH)
    g.add_argument("--mqtt-password", metavar="PW",
                   help="that user's password (asked for twice when --mqtt-user is given without it; "
                        "written nowhere in plain)")


def _need_terminal(interactive, what, option, give):
    if interactive is None:
        interactive = sys.stdin.isatty()
    if not interactive:
        raise LayoutError("%s without %s and no terminal to ask on (give %s)" % (what, option, give))


def files_from_args(args, prompt=getpass.getpass, interactive=None):
    """[(device path, bytes)]: the settings file to write (none: leave the
    board's own) and, with --mqtt-user, the password file."""
    password = args.password
    if args.ssid is not None and password is None:
        _need_terminal(interactive, "--ssid", "--password", "--password, \"\" for an open network")
        password = prompt("Wi-Fi password for %r: " % args.ssid)
    user, user_password = args.mqtt_user, args.mqtt_password
    if user is not None and user_password is None:
        _need_terminal(interactive, "--mqtt-user", "--mqtt-password", "--mqtt-password")
        user_password = prompt("MQTT password for %r: " % user)
        if prompt("MQTT password for %r (again): " % user) != user_password:
            raise LayoutError("the two MQTT passwords for %r differ" % user)
    return board_settings(args.settings, args.ssid, password, args.hostname, user, user_password)

