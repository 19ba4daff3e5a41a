# The emulated board's surroundings, read from a JSON file on the host
# that a test may rewrite while the board runs (tools/device/emulate.py).
#   {"aps": {"SSID": "PASSWORD", ...},   networks in range
#    "wifi_up": true,                     false: every link drops
#    "address": "127.0.0.1",              the address DHCP hands out
#    "boot_button": false,                held at reset
#    "join_ms": 300}                      time to join
import json

PATH = None
_last = {}


def get():
    global _last
    try:
        with open(PATH) as f:
            _last = json.loads(f.read())
    except (OSError, ValueError):
        pass  # a test rewriting the file: keep the last good state
    return _last


def event(msg):
    print("emu: " + msg)
