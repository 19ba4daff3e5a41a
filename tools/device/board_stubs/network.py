# network for the emulated board (tools/device/emulate.py): a station
# interface that joins the networks of world.json after join_ms, drops
# when "wifi_up" turns false, and reports why it could not join.
import time

import world

STA_IF = 0
AP_IF = 1
STAT_IDLE = 0
STAT_CONNECTING = 1
STAT_WRONG_PASSWORD = -3
STAT_NO_AP_FOUND = -2
STAT_CONNECT_FAIL = -1
STAT_GOT_IP = 3

_hostname = ["mpy"]


def hostname(name=None):
    if name is None:
        return _hostname[0]
    _hostname[0] = name
    world.event("hostname %s" % name)


class WLAN:
    def __init__(self, iface=STA_IF):
        self._active = False
        self._want = None
        self._since = 0
        self._linked = False

    def active(self, on=None):
        if on is None:
            return self._active
        self._active = bool(on)

    def connect(self, ssid, key=None):
        self._want = (ssid, key or "")
        self._since = time.ticks_ms()
        self._linked = False
        world.event("wifi connect %r" % ssid)

    def disconnect(self):
        self._want = None
        self._linked = False

    def status(self):
        if self._want is None:
            return STAT_IDLE
        w = world.get()
        if self.isconnected():
            return STAT_GOT_IP
        if time.ticks_diff(time.ticks_ms(), self._since) < w.get("join_ms", 300):
            return STAT_CONNECTING
        aps = w.get("aps", {})
        if not w.get("wifi_up", True) or self._want[0] not in aps:
            return STAT_NO_AP_FOUND
        if aps[self._want[0]] != self._want[1]:
            return STAT_WRONG_PASSWORD
        return STAT_CONNECT_FAIL

    def isconnected(self):
        if not self._active or self._want is None:
            return False
        w = world.get()
        ok = (w.get("wifi_up", True) and w.get("aps", {}).get(self._want[0]) == self._want[1])
        if not ok:
            self._linked = False
            return False
        if not self._linked and time.ticks_diff(time.ticks_ms(), self._since) >= w.get("join_ms", 300):
            self._linked = True
        return self._linked

    def ifconfig(self):
        return (world.get().get("address", "127.0.0.1"), "255.255.255.0", "127.0.0.1", "127.0.0.1")
