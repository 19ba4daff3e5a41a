# midge: a small MQTT broker for MicroPython boards and CPython hosts.
# `midge.serve(cfg)` runs it; `python -m midge` / `micropython -m midge`
# is the command line (see __main__.py).
from .broker import VERSION


def serve(cfg):
    """Run the broker with a validated config dict (config.load_config)
    until cancelled. The device entry point and __main__ call this."""
    import asyncio
    from .server import Server
    return asyncio.run(Server(cfg).run())
