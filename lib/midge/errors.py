# ConfigError lives apart from config.py so that code which runs after
# start-up (server.py: a host or port that cannot be listened on) can raise
# it while config.py's code, needed only at start-up, is dropped from the
# heap (see __main__.py).


class ConfigError(ValueError):
    """A bad argument or config value; the message names the key and the
    allowed range. Start-up exits 2 on it."""
