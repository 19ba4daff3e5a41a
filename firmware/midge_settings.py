# The checks of /midge.json, the board's settings: the board runs them at
# start (firmware/midge_hub.py) and tools/deploy and tools/image run them
# before writing a settings file, so both refuse the same things with the
# same words. Pure Python, no device modules.

SETTINGS_FILE = "/midge.json"
KEYS = ("wifi", "hostname", "watchdog", "config")
HOSTNAME_MAX = 32           # MicroPython's network.hostname() limit
DEFAULT_HOSTNAME = "midge"


def valid_hostname(name):
    """1 to 32 letters, digits or '-', not starting or ending with '-'."""
    if not isinstance(name, str) or not 0 < len(name) <= HOSTNAME_MAX:
        return False
    if name[0] == "-" or name[-1] == "-":
        return False
    for ch in name:
        if not (("a" <= ch <= "z") or ("A" <= ch <= "Z") or ("0" <= ch <= "9") or ch == "-"):
            return False
    return True


def settings_problem(settings):
    """What is wrong with the settings dict (a sentence naming the key),
    or None. The broker's own keys under "config" are checked by
    midge.config.load_config."""
    if not isinstance(settings, dict):
        return "%s must hold one JSON object" % SETTINGS_FILE
    for key in settings:
        if key not in KEYS:
            return "%s: unknown key %r (allowed: %s)" % (SETTINGS_FILE, key, ", ".join(KEYS))
    wifi = settings.get("wifi")
    if not isinstance(wifi, dict) or not isinstance(wifi.get("ssid"), str) or not wifi["ssid"]:
        return "%s: key 'wifi' must be {\"ssid\": \"...\", \"password\": \"...\"}" % SETTINGS_FILE
    for key in wifi:
        if key not in ("ssid", "password"):
            return "%s: unknown key 'wifi.%s' (allowed: ssid, password)" % (SETTINGS_FILE, key)
    if not isinstance(wifi.get("password", ""), str):
        return "%s: key 'wifi.password' must be a string" % SETTINGS_FILE
    if len(wifi["ssid"]) > 32:
        return "%s: key 'wifi.ssid' must be 1 to 32 characters" % SETTINGS_FILE
    name = settings.get("hostname", DEFAULT_HOSTNAME)
    if not valid_hostname(name):
        return ("%s: key 'hostname' must be 1 to %d letters, digits or '-' (not first or last), not %r"
                % (SETTINGS_FILE, HOSTNAME_MAX, name))
    if settings.get("watchdog", True) not in (True, False):
        return "%s: key 'watchdog' must be true or false" % SETTINGS_FILE
    if not isinstance(settings.get("config", {}), dict):
        return "%s: key 'config' must be an object of broker config keys" % SETTINGS_FILE
    return None
