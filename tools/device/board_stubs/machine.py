# machine for the emulated board (tools/device/emulate.py): what
# firmware/midge_hub.py uses, with the board-visible effects printed as
# "emu: ..." lines.
import sys
import time

import world

_led = [None]


class Pin:
    IN = 0
    OUT = 1
    PULL_UP = 2

    def __init__(self, ident, mode=None, pull=None):
        self.ident = ident
        self._v = 0

    def value(self, v=None):
        if v is None:
            if self.ident == 0:
                return 0 if world.get().get("boot_button") else 1
            return self._v
        self._v = 1 if v else 0

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def toggle(self):
        self.value(not self._v)


class WDT:
    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout
        self.last = time.ticks_ms()
        world.event("watchdog started (%d ms)" % timeout)

    def feed(self):
        now = time.ticks_ms()
        late = time.ticks_diff(now, self.last)
        if late > self.timeout:
            world.event("watchdog reset (not fed for %d ms)" % late)
            sys.exit(4)
        self.last = now


class Timer:
    def __init__(self, ident=-1):
        self.ident = ident

    def init(self, period=1000, mode=None, callback=None):
        world.event("timer every %d ms" % period)

    def deinit(self):
        pass


def reset():
    world.event("machine.reset()")
    sys.exit(3)


def reset_cause():
    return 0


def unique_id():
    return b"\x00\x01\x02\x03\x04\x05"
