# The command line's start-up work (__main__.py runs it): arguments, board
# file, config file, validation, the store directory check. configure()
# returns the validated config or exits 2 with a message naming the bad
# argument, key or path. Nothing here is needed once the broker runs:
# __main__ drops this module and midge.config afterwards (their code is
# heap on a board running .mpy files).
import sys

from . import log
from .config import load_config, read_json
from .errors import ConfigError

USAGE = """usage: midge [--host HOST] [--port PORT] [--config FILE.json] [--board NAME] [--store DIR] [--log-level LEVEL]
  --host HOST        address to listen on (default 127.0.0.1)
  --port PORT        TCP port (default 1883)
  --config FILE      JSON object of config keys (see README, configuration reference)
  --board NAME       apply boards/NAME/board.json budgets before --config
                     (default: host, the caps of a PC)
  --store DIR        keep retained messages and persistent sessions in DIR (store_dir)
  --log-level LEVEL  debug, info, warning, error or off"""


def _boards_dirs():
    """Where --board looks: ./boards, then a boards/ folder next to the
    package's parent folders (lib/ in the repo, build/mpy/ for the bundle)."""
    dirs = ["boards"]
    parts = __file__.replace("\\", "/").split("/")[:-2]  # drop midge/__main__.py
    for up in range(3):
        if len(parts) > up:
            dirs.append("/".join(parts[:len(parts) - up] + ["boards"]) or "/boards")
    return dirs


def load_board(name):
    for d in _boards_dirs():
        path = d + "/" + name + "/board.json"
        try:
            open(path).close()
        except OSError:
            continue
        data = read_json(path)
        cfg = data.get("config", {})
        if not isinstance(cfg, dict):
            raise ConfigError("board %s: 'config' must be an object" % name)
        return cfg
    raise ConfigError("unknown board '%s' (looked in %s)" % (name, ", ".join(_boards_dirs())))


HOST_PROFILE = "host"  # boards/host/board.json: the caps of a PC, used without --board


def _profile(board):
    """(board config or None, the profile as the start-up line names it).
    Without --board the command line runs on a PC (a board starts through
    firmware/midge_hub.py, not here), so the host profile applies; if its
    file is not found, the built-in defaults (device-sized) do."""
    if board:
        return load_board(board), "%s (--board %s)" % (board, board)
    try:
        return load_board(HOST_PROFILE), "%s (no --board: a PC's caps; --board NAME for a device's)" % HOST_PROFILE
    except ConfigError:
        return None, "generic (no --board and no boards/host/board.json: the built-in, device-sized defaults)"


def parse_args(argv):
    """argv -> (cli overrides dict, board name or None, config path or None)."""
    cli = {}
    board = None
    config_path = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            print(USAGE)
            sys.exit(0)
        if i + 1 >= len(argv):
            raise ConfigError("option %s needs a value" % a)
        v = argv[i + 1]
        if a == "--host":
            cli["host"] = v
        elif a == "--port":
            try:
                cli["port"] = int(v)
            except ValueError:
                raise ConfigError("--port: %r is not an integer (allowed 0..65535)" % v)
        elif a == "--config":
            config_path = v
        elif a == "--board":
            board = v
        elif a == "--store":
            cli["store_dir"] = v
        elif a == "--log-level":
            cli["log_level"] = v
        else:
            raise ConfigError("unknown option %s" % a)
        i += 2
    return cli, board, config_path


def check_host(cfg):
    """Raise ConfigError naming 'host' unless it resolves (getaddrinfo, as
    the listener will). Whether this machine can bind it is the server's
    check: Server.run raises ConfigError for that."""
    import socket
    try:
        socket.getaddrinfo(cfg["host"], cfg["port"])
    except (OSError, ValueError) as e:  # gaierror; CPython's idna codec: UnicodeError
        raise ConfigError("config key 'host': %r is not an address to listen on (%s)"
                          % (cfg["host"], e))


def _check_store_dir(path):
    """Exit 2 naming the path if the store directory cannot be used. The
    check's module is dropped again (no reference to it outlives this
    call, so its code is collected: it is heap on a board)."""
    from .store import StoreError
    from . import storeload
    from .compat import unload
    try:
        storeload.check_dir(path)
    except StoreError as e:
        sys.stderr.write("midge: config key 'store_dir': %s\n" % e)
        sys.exit(2)
    finally:
        storeload = None
        unload("midge.storeload")


def configure(argv):
    """argv -> the validated config dict; logs the board, caps and store.
    Exits 2 (message on stderr) for a bad argument, config value, host or
    store directory."""
    try:
        cli, board, config_path = parse_args(argv)
        board_cfg, profile = _profile(board)
        file_cfg = read_json(config_path) if config_path else None
        cfg = load_config(board_cfg, file_cfg, cli)
        check_host(cfg)
    except ConfigError as e:
        sys.stderr.write("midge: %s\n" % e)
        sys.exit(2)
    if cfg["store_dir"]:  # a missing parent, a file, a read-only directory: exit 2 naming it
        _check_store_dir(cfg["store_dir"])
    log.set_level(cfg["log_level"])
    log.info("profile %s", profile)
    log.info("caps: " + ", ".join("%s=%s" % (k, cfg[k]) for k in sorted(cfg) if k.startswith("max_")))
    if cfg["store_dir"]:
        log.info("store: %s (max %d bytes, sync within %d ms)", cfg["store_dir"],
                 cfg["store_max_bytes"], cfg["store_sync_ms"])
    else:
        log.info("state is kept in memory only (no store configured)")
    return cfg
