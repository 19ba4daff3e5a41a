"""An emulated board's serial port for mpremote: a TCP port on 127.0.0.1
where each connection gets a fresh MicroPython unix port REPL on a pty
(the board's filesystem an image mounted at "/", tools/device/repl_board.py).
mpremote reaches it as socket://127.0.0.1:PORT. Each mpremote command is a
new connection, hence a new REPL on the same image, as a board keeps its
flash across connections.

  .venv/bin/python tools/device/ptybridge.py IMAGE --platform esp32 [--progsize 32] [--port 0]
  (prints "listening on PORT", serves until killed)
"""
import argparse
import os
import pty
import select
import signal
import socket
import sys
import threading
import tty

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def serve_one(conn, argv):
    pid, master = pty.fork()
    if pid == 0:
        tty.setraw(0)  # no echo, no line discipline: a UART passes bytes as they are
        os.execv(argv[0], argv)
    tty.setraw(master)  # the pair's settings: raw before the first byte is forwarded
    try:
        conn.setblocking(True)
        # Nothing is forwarded to the REPL before its first prompt: entering
        # its raw terminal mode flushes what was typed ahead (a Ctrl-C and
        # Ctrl-A from mpremote would be lost), as a board's UART would not.
        seen = b""
        while not seen.endswith(b">>> "):
            r, _w, _x = select.select([master], [], [], 30)
            if not r:
                return
            data = os.read(master, 4096)
            if not data:
                return
            seen = (seen + data)[-16:]
            conn.sendall(data)
        while True:
            r, _w, _x = select.select([conn, master], [], [], 30)
            if not r:
                break
            if conn in r:
                data = conn.recv(4096)
                if not data:
                    break
                os.write(master, data)
            if master in r:
                try:
                    data = os.read(master, 4096)
                except OSError:
                    break
                if not data:
                    break
                conn.sendall(data)
    finally:
        conn.close()
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        os.waitpid(pid, 0)
        os.close(master)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image")
    ap.add_argument("--platform", required=True)
    ap.add_argument("--progsize", type=int, default=32)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--heapsize", default="2M")
    args = ap.parse_args()
    mp = os.path.join(ROOT, ".venv", "bin", "micropython")
    argv = [mp, "-X", "heapsize=" + args.heapsize, "-i", os.path.join(HERE, "repl_board.py"),
            os.path.abspath(args.image), args.platform, str(args.progsize)]
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", args.port))
    srv.listen(4)
    print("listening on %d" % srv.getsockname()[1], flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve_one, args=(conn, argv), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
