# Board entry point (ESP32, Pico W), run by MicroPython after boot.py.
# Starts the midge hub (/lib/midge_hub.mpy, firmware/midge_hub.py in the
# repo) unless autostart is off: while /noautostart exists or the boot
# button is held at reset, the board stays at the REPL for maintenance.
# Settings: /midge.json (firmware/midge.example.json); the README's "From a
# new board to a running hub" shows tools/deploy and tools/image.
import midge_hub

midge_hub.main()
