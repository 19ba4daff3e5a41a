# midge: a small MQTT broker for MicroPython boards and CPython hosts.
# `midge.serve(cfg)` runs it; `python -m midge` / `micropython -m midge`
# is the command line (see __main__.py).
from .broker import VERSION


def serve(cfg, on_tick=None):
    """Run the broker with a validated config dict (config.load_config)
    until cancelled. The device entry point and __main__ call this;
    on_tick() (e.g. a watchdog feed) is called on every housekeeping tick."""
    import asyncio
    from .server import Server
    return asyncio.run(Server(cfg, on_tick=on_tick).run())
