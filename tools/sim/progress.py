# The live progress line: one line refreshed in place on a terminal, a new
# line every few seconds when stdout is not a tty (CI logs).
import asyncio
import sys


def fmt_bytes(n):
    if n is None or n < 0:
        return "n/a"
    return "%.1fk" % (n / 1024.0)


def line(elapsed, total, rate_in, rate_out, heap_alloc, budget, clients, caps_hit, phase=""):
    """One progress line (pure, for the tests)."""
    heap = fmt_bytes(heap_alloc)
    if budget and heap_alloc is not None and heap_alloc >= 0:
        heap += "/%s (%d%%)" % (fmt_bytes(budget), round(100.0 * heap_alloc / budget))
    return "[%5.1f/%ds%s] in %6.1f msg/s  out %6.1f msg/s  heap %s  clients %s  caps %s" % (
        elapsed, total, phase, rate_in, rate_out, heap, "-" if clients is None else clients,
        ", ".join(caps_hit) if caps_hit else "-")


async def show(run, out=None):
    out = out or sys.stdout
    tty = out.isatty()
    period = 0.5 if tty else 5.0
    rec = run.rec
    last = (rec.now(), rec.n_sent, rec.n_recv)
    width = 0
    try:
        while True:
            await asyncio.sleep(period)
            now = rec.now()
            dt = max(now - last[0], 1e-6)
            rin, rout = (rec.n_sent - last[1]) / dt, (rec.n_recv - last[2]) / dt
            last = (now, rec.n_sent, rec.n_recv)
            s = run.monitor.latest() or {}
            caps = sorted(k for k, v in run.monitor.counters().items() if v and k in run.cap_names)
            phase = " drain" if now > run.sc["duration_s"] else ""
            if run.broker_down:
                phase = " broker down"
            text = line(now, int(run.sc["duration_s"]), rin, rout, s.get("heap_alloc"), run.budget,
                        s.get("clients"), caps, phase)
            if tty:
                out.write("\r" + text.ljust(width))
                width = len(text)
            else:
                out.write(text + "\n")
            out.flush()
    finally:
        if tty and width:
            out.write("\n")
            out.flush()
