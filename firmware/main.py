# Device entry point (ESP32, Pico W): Wi-Fi, watchdog, status LED, then the
# broker. Copy lib/midge/ and this file to the board (tools/ has the deploy
# commands) and put the Wi-Fi credentials and any config overrides in
# /midge.json on the board's filesystem:
#   {"wifi": {"ssid": "...", "password": "..."}, "board": "esp32",
#    "config": {"host": "0.0.0.0", "max_clients": 7}}
# Device-only modules (network, machine) are imported here and nowhere in
# lib/midge, which stays portable.
import time

import machine
import network

from midge import log, serve
from midge.config import ConfigError, load_config, read_json

_WDT_MS = 8000          # watchdog period; the broker tick feeds it
_WIFI_TIMEOUT_MS = 20000


def _led():
    try:
        return machine.Pin("LED", machine.Pin.OUT)  # Pico W
    except (TypeError, ValueError):
        try:
            return machine.Pin(2, machine.Pin.OUT)  # most ESP32 dev boards
        except ValueError:
            return None


def _wifi(ssid, password, led):
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(ssid, password)
        start = time.ticks_ms()
        while not wlan.isconnected():
            if time.ticks_diff(time.ticks_ms(), start) > _WIFI_TIMEOUT_MS:
                raise OSError("Wi-Fi: no connection to %r" % ssid)
            if led:
                led.toggle()
            time.sleep_ms(250)
    if led:
        led.on()
    return wlan.ifconfig()[0]


def main():
    settings = read_json("/midge.json")
    board_cfg = {}
    board = settings.get("board")
    if board:
        try:
            board_cfg = read_json("/boards/%s.json" % board).get("config", {})
        except ConfigError:
            pass  # the board file is optional on the device
    cfg = load_config({"host": "0.0.0.0"}, board_cfg, settings.get("config"))
    log.set_level(cfg["log_level"])
    led = _led()
    wifi = settings.get("wifi") or {}
    ip = _wifi(wifi.get("ssid", ""), wifi.get("password", ""), led)
    log.info("Wi-Fi up, address %s", ip)
    wdt = machine.WDT(timeout=_WDT_MS)
    serve(cfg, on_tick=wdt.feed)  # fed on every housekeeping tick (250 ms)


try:
    main()
except Exception as e:  # log, then reset: a hub must come back by itself
    import sys
    sys.print_exception(e)
    time.sleep(5)
    machine.reset()
