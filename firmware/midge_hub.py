# The hub on a board (ESP32, Pico W): settings, Wi-Fi, status LED, watchdog,
# then the broker. main.py calls main(); tools/deploy and tools/image put
# this module, compiled, at /lib/midge_hub.mpy. Device-only modules
# (network, machine, rp2) are imported here and nowhere in lib/midge.
#
# The board's files (one layout, written by tools/deploy and tools/image):
#   /main.py              firmware/main.py: calls main() unless autostart is off
#   /lib/midge/*.mpy      the broker
#   /lib/midge_hub.mpy    this module
#   /lib/midge_settings.mpy  firmware/midge_settings.py: the settings' checks
#   /board.json           boards/<name>/board.json: the board's caps
#   /midge.json           settings: Wi-Fi, hostname, broker config overrides
#   /passwd               the password file the template's config names
#                         (tools/deploy --mqtt-user; the broker reads it)
#   /store/               retained messages and persistent sessions (store_dir)
#
# Contracts:
# - Nothing here resets the board in a loop. Missing or bad settings, a bad
#   config value, an unreadable store or a store too large for the heap at
#   start put the board in setup mode: the reason on the console, the LED
#   off, the REPL free. Only an unexpected
#   error while serving resets the board (after 5 s, with the traceback in
#   /crash.txt): a hub must come back by itself.
# - Autostart is off while /noautostart exists or the boot button (ESP32:
#   BOOT, GPIO0; Pico W: BOOTSEL) is held at reset: no broker, no watchdog.
# - The broker starts at once; Wi-Fi joins beside it and rejoins after a
#   drop with backoff (1 s doubling to 60 s) while the broker keeps its
#   state and serves whoever can reach it.
# - The console line "midge: hub ready at mqtt://ADDRESS:PORT (HOSTNAME)"
#   is printed whenever Wi-Fi comes up (tools/deploy waits for it).
# - The watchdog (8 s, fed every 250 ms by the broker's tick) starts with
#   the broker. After Ctrl-C it is fed by a timer, so maintenance through
#   the REPL is never cut short by a reset.
#
# LED: blinking fast (4 Hz) while joining Wi-Fi; on while serving with
# Wi-Fi up; blinking slowly (1 Hz) while Wi-Fi is lost and being rejoined;
# off when the broker is not running (setup mode, autostart off, stopped).
import sys
import time

import asyncio
import machine
import network

from midge_settings import DEFAULT_HOSTNAME, SETTINGS_FILE, settings_problem

BOARD_FILE = "/board.json"
NO_AUTOSTART_FILE = "/noautostart"
CRASH_FILE = "/crash.txt"

WDT_MS = 8000               # watchdog period
JOIN_TIMEOUT_MS = 15000     # one attempt to join Wi-Fi
CHECK_MS = 2000             # Wi-Fi link check while up
BACKOFF_MIN_MS = 1000
BACKOFF_MAX_MS = 60000

_STATUS_NAMES = {}
for _name in ("STAT_IDLE", "STAT_CONNECTING", "STAT_WRONG_PASSWORD", "STAT_NO_AP_FOUND",
              "STAT_CONNECT_FAIL", "STAT_GOT_IP", "STAT_BEACON_TIMEOUT", "STAT_ASSOC_FAIL",
              "STAT_HANDSHAKE_TIMEOUT"):
    if hasattr(network, _name):
        _STATUS_NAMES[getattr(network, _name)] = _name[5:].lower().replace("_", " ")


def say(msg):
    """A console line for the person (or tools/deploy) watching."""
    print("midge: " + msg)


class SetupNeeded(Exception):
    """The board cannot serve until a person changes something; the message
    says what."""


# --- autostart -----------------------------------------------------------------------

def boot_button_held():
    try:
        import rp2
        return bool(rp2.bootsel_button())
    except ImportError:
        pass
    try:
        return machine.Pin(0, machine.Pin.IN, machine.Pin.PULL_UP).value() == 0
    except (ValueError, AttributeError):
        return False


def autostart_off():
    """The reason autostart is off, or None."""
    try:
        open(NO_AUTOSTART_FILE).close()
        return NO_AUTOSTART_FILE + " exists (remove it and reset to start the hub)"
    except OSError:
        pass
    if boot_button_held():
        return "the boot button was held at reset"
    return None


# --- settings --------------------------------------------------------------------------

def read_settings():
    """The settings dict from /midge.json; SetupNeeded naming what is wrong."""
    from midge.config import read_json
    from midge.errors import ConfigError
    try:
        open(SETTINGS_FILE).close()
    except OSError:
        raise SetupNeeded("no %s (Wi-Fi settings): run tools/deploy with --ssid, or copy one "
                          "made from firmware/midge.example.json" % SETTINGS_FILE)
    try:
        settings = read_json(SETTINGS_FILE)
    except ConfigError as e:
        raise SetupNeeded(str(e))
    problem = settings_problem(settings)
    if problem:
        raise SetupNeeded(problem)
    settings.setdefault("hostname", DEFAULT_HOSTNAME)
    return settings


def broker_config(settings):
    """The validated broker config: listen on every interface, then the
    board file's caps, then the settings' overrides."""
    from midge.config import load_config, read_json
    from midge.errors import ConfigError
    board_cfg = {}
    try:
        open(BOARD_FILE).close()
        have_board = True
    except OSError:
        have_board = False  # said on the console: the generic caps apply
    try:
        if have_board:
            board_cfg = read_json(BOARD_FILE).get("config", {})
        return load_config({"host": "0.0.0.0"}, board_cfg, settings.get("config")), have_board
    except ConfigError as e:
        raise SetupNeeded(str(e))


# --- LED -------------------------------------------------------------------------------

class Led:
    OFF = 0
    JOINING = 1   # fast blink
    UP = 2        # on
    LOST = 3      # slow blink

    def __init__(self):
        self.pin = None
        for ident in ("LED", 2):  # Pico W ("LED", through the Wi-Fi chip); most ESP32 boards: GPIO2
            try:
                self.pin = machine.Pin(ident, machine.Pin.OUT)
                break
            except (TypeError, ValueError):
                pass
        self.state = Led.OFF

    def set(self, on):
        if self.pin is not None:
            self.pin.value(1 if on else 0)

    async def run(self):
        lit = False
        while True:
            state = self.state
            if state == Led.JOINING or state == Led.LOST:
                lit = not lit
                self.set(lit)
                await asyncio.sleep_ms(125 if state == Led.JOINING else 500)
            else:
                self.set(state == Led.UP)
                await asyncio.sleep_ms(250)


# --- Wi-Fi -----------------------------------------------------------------------------

def status_name(wlan):
    try:
        st = wlan.status()
    except Exception:
        return "unknown"
    return _STATUS_NAMES.get(st, "status %s" % (st,))


class WifiKeeper:
    """Joins the network, reports the address, rejoins with backoff."""

    def __init__(self, settings, port, led):
        wifi = settings["wifi"]
        self.ssid = wifi["ssid"]
        self.password = wifi.get("password", "")
        self.hostname = settings["hostname"]
        self.port = port
        self.led = led
        self.up = False
        self.address = None
        try:
            network.hostname(self.hostname)  # before the interface comes up
        except (AttributeError, ValueError, OSError) as e:
            say("cannot set hostname %r: %r" % (self.hostname, e))
        self.wlan = network.WLAN(network.STA_IF)
        self.wlan.active(True)

    async def join(self):
        """One attempt: True if the link is up within JOIN_TIMEOUT_MS."""
        wlan = self.wlan
        try:
            wlan.disconnect()
        except OSError:
            pass
        wlan.connect(self.ssid, self.password)
        start = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), start) < JOIN_TIMEOUT_MS:
            if wlan.isconnected():
                return True
            await asyncio.sleep_ms(250)
        return wlan.isconnected()

    async def run(self):
        backoff = BACKOFF_MIN_MS
        while True:
            if self.wlan.isconnected():
                if not self.up:
                    self.up = True
                    self.address = self.wlan.ifconfig()[0]
                    self.led.state = Led.UP
                    backoff = BACKOFF_MIN_MS
                    say("Wi-Fi %r up, address %s" % (self.ssid, self.address))
                    say("hub ready at mqtt://%s:%d (%s)" % (self.address, self.port, self.hostname))
                await asyncio.sleep_ms(CHECK_MS)
                continue
            if self.up:
                self.up = False
                say("Wi-Fi %r lost (%s); rejoining, the broker keeps serving" % (self.ssid, status_name(self.wlan)))
            self.led.state = Led.JOINING
            if await self.join():
                continue
            say("Wi-Fi %r: cannot join (%s); next try in %d s" % (self.ssid, status_name(self.wlan), backoff // 1000))
            self.led.state = Led.LOST
            await asyncio.sleep_ms(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_MS)


# --- the hub ---------------------------------------------------------------------------

class Watchdog:
    """machine.WDT once the broker runs; fed by the broker's tick, and by a
    timer after Ctrl-C (a WDT cannot be stopped once started)."""

    def __init__(self, enabled):
        self.enabled = enabled
        self.wdt = None
        self.serving = False    # the broker has ticked: start-up is over

    def feed(self):
        self.serving = True
        if self.wdt is None:
            if not self.enabled:
                return
            self.wdt = machine.WDT(timeout=WDT_MS)
        self.wdt.feed()

    def keep_fed(self):
        if self.wdt is None:
            return
        wdt = self.wdt
        try:
            machine.Timer(-1 if sys.platform == "rp2" else 0).init(
                period=WDT_MS // 4, callback=lambda t: wdt.feed())
            say("the watchdog is fed by a timer until the next reset")
        except Exception as e:
            say("cannot feed the watchdog from a timer (%r): the board resets in %d s" % (e, WDT_MS // 1000))


async def serve(cfg, settings, led, watchdog):
    from midge.server import Server
    keeper = WifiKeeper(settings, cfg["port"], led)
    led.state = Led.JOINING
    asyncio.create_task(led.run())
    asyncio.create_task(keeper.run())
    await Server(cfg, on_tick=watchdog.feed).run()


def main():
    led = Led()
    led.set(False)
    reason = autostart_off()
    if reason:
        say("autostart off: " + reason + "; the REPL is free")
        return
    from midge import log
    from midge.errors import ConfigError
    watchdog = None
    cfg = {}
    try:
        settings = read_settings()
        cfg, have_board = broker_config(settings)
        from midge.compat import unload
        unload("midge.config")  # start-up code: heap on a board running .mpy files
        log.set_level(cfg["log_level"])
        if not have_board:
            say("no %s: the generic caps apply (deploy puts the board's file there)" % BOARD_FILE)
        watchdog = Watchdog(settings.get("watchdog", True))
        asyncio.run(serve(cfg, settings, led, watchdog))
    except SetupNeeded as e:
        _setup_mode(led, str(e))
    except ConfigError as e:  # e.g. cannot listen on host:port
        _setup_mode(led, str(e))
    except MemoryError as e:
        if watchdog is not None and not watchdog.serving:
            # before the first tick: the store (or the caps) need more heap
            # than this firmware leaves; a reset would only do it again
            _setup_mode(led, "not enough heap to start (%s): the store at %s is larger than this "
                        "firmware's heap holds; remove it, lower the caps, or use the firmware with "
                        "midge frozen in (tools/firmware)" % (e, cfg.get("store_dir") or "(none)"))
            return
        _crash(led, e)
    except KeyboardInterrupt:
        led.set(False)
        say("stopped (Ctrl-C)")
        if watchdog is not None:
            watchdog.keep_fed()
    except Exception as e:
        from midge.store import StoreError
        if isinstance(e, StoreError):
            _setup_mode(led, "store: %s (fix or remove the store directory)" % e)
            return
        _crash(led, e)


def _crash(led, e):
    led.set(False)
    _record_crash(e)
    say("unexpected error, reset in 5 s (traceback in %s)" % CRASH_FILE)
    time.sleep(5)
    machine.reset()


def _setup_mode(led, reason):
    led.set(False)
    say("setup mode: " + reason)
    say("the broker is not running; the REPL is free (tools/deploy writes the settings)")


def _record_crash(e):
    sys.print_exception(e)
    try:
        with open(CRASH_FILE, "w") as f:
            sys.print_exception(e, f)
    except OSError:
        pass
