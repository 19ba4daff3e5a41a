# Command line, the same on both interpreters:
#   micropython -m midge [--host H] [--port P] [--config FILE] [--board NAME] [--log-level L]
#   python3 -m midge ...
# Exit status 2 for a bad argument or config value (the message names it),
# 1 for a store this midge cannot read. Start-up's code (cli.py, config.py)
# is dropped before the broker runs: on a board it is heap.
import sys

from .compat import unload
from .errors import ConfigError


def main(argv):
    from . import cli
    cfg = cli.configure(argv)  # exits 2 on a bad argument, value or path
    cli = None
    unload("midge.cli")
    unload("midge.config")
    from . import log, serve
    try:
        serve(cfg)
    except KeyboardInterrupt:
        log.info("stopped")
    except ConfigError as e:  # e.g. Server.run: cannot listen on host:port
        sys.stderr.write("midge: %s\n" % e)
        sys.exit(2)
    except Exception as e:  # e.g. StoreError: a store this midge cannot read
        from .store import StoreError
        if not isinstance(e, StoreError):
            from .compat import print_exception
            print_exception(e)
        sys.stderr.write("midge: %s\n" % e)
        sys.exit(1)


main(sys.argv[1:])
