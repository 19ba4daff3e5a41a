"""Statistics, targets and the printed table of the benchmark (no I/O
except the format_* helpers returning strings)."""
import math

# Brokers as named on the command line, in table order.
BROKER_LABELS = {
    "micropython": "midge/MicroPython",
    "cpython": "midge/CPython",
    "mosquitto": "mosquitto",
    "mosquitto_nodelay": "mosquitto nodelay",
    "null": "null relay",
}


def median(values):
    """Median of the numbers in `values` (None entries ignored); None if empty."""
    xs = sorted(v for v in values if v is not None)
    n = len(xs)
    if n == 0:
        return None
    mid = n // 2
    if n % 2:
        return xs[mid]
    return (xs[mid - 1] + xs[mid]) / 2


def percentile(values, p):
    """p-th percentile (0..100) with linear interpolation between closest
    ranks (numpy's default); None if empty."""
    if not 0 <= p <= 100:
        raise ValueError("percentile %r out of 0..100" % p)
    xs = sorted(values)
    if not xs:
        return None
    if len(xs) == 1:
        return xs[0]
    rank = (len(xs) - 1) * p / 100.0
    lo = int(math.floor(rank))
    hi = min(lo + 1, len(xs) - 1)
    frac = rank - lo
    return xs[lo] + (xs[hi] - xs[lo]) * frac


def ratio(a, b):
    """a / b, or None when either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b


# --- targets -----------------------------------------------------------------------

# Each target: id, text, and how it is evaluated from the medians:
#   kind "abs": medians[scenario][metric][broker] <op> value
#   kind "rel": medians[scenario][metric][broker] <op> factor * medians[...][ref]
TARGETS = [
    {"id": "fanin_abs", "text": "QoS 0 fan-in >= 50,000 msg/s", "kind": "abs",
     "scenario": "qos0_fanin", "metric": "delivered_per_s", "op": ">=", "value": 50000},
    {"id": "fanin_rel", "text": "QoS 0 fan-in >= 1/4 of mosquitto's", "kind": "rel",
     "scenario": "qos0_fanin", "metric": "delivered_per_s", "op": ">=", "factor": 0.25},
    {"id": "qos1_abs", "text": "QoS 1 window 10 >= 20,000 msg/s", "kind": "abs",
     "scenario": "qos1_window", "metric": "msgs_per_s", "op": ">=", "value": 20000},
    {"id": "pingpong_rel", "text": "ping-pong p50 <= 2x mosquitto's", "kind": "rel",
     "scenario": "pingpong", "metric": "p50_us", "op": "<=", "factor": 2.0},
    {"id": "idle_heap", "text": "<= 1,000 bytes heap per idle client with one subscription",
     "kind": "abs", "scenario": "conn_scaling", "metric": "heap_per_client_bytes", "op": "<=",
     "value": 1000},
    {"id": "retained_rel", "text": "1000 retained to a new # subscriber <= 3x mosquitto's time",
     "kind": "rel", "scenario": "retained", "metric": "all_arrived_ms", "op": "<=", "factor": 3.0},
]


def _cmp(op, a, b):
    if op == ">=":
        return a >= b
    if op == "<=":
        return a <= b
    raise ValueError("unknown operator %r" % op)


def evaluate_targets(medians, broker="micropython", ref="mosquitto", targets=None):
    """[{id, text, broker, value, threshold, met, margin}] for every target.

    `medians` is {scenario: {metric: {broker: median}}}. `met` is None when a
    figure is missing (scenario or broker not run). `margin` is value /
    threshold: above 1 is better for ">=", below 1 is better for "<="."""
    out = []
    for t in targets if targets is not None else TARGETS:
        by_broker = medians.get(t["scenario"], {}).get(t["metric"], {})
        value = by_broker.get(broker)
        if t["kind"] == "abs":
            threshold = t["value"]
        else:
            r = by_broker.get(ref)
            threshold = None if r is None else t["factor"] * r
        met = None
        if value is not None and threshold is not None:
            met = _cmp(t["op"], value, threshold)
        out.append({"id": t["id"], "text": t["text"], "broker": broker, "scenario": t["scenario"],
                    "metric": t["metric"], "op": t["op"], "value": value,
                    "threshold": threshold, "met": met, "margin": ratio(value, threshold)})
    return out


def medians_of(runs):
    """{scenario: {metric: {broker: median over reps}}} from run records
    [{scenario, broker, metrics: {name: number or None}}]."""
    vals = {}
    for r in runs:
        for name, v in (r.get("metrics") or {}).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            vals.setdefault(r["scenario"], {}).setdefault(name, {}).setdefault(
                r["broker"], []).append(v)
    out = {}
    for scen, metrics in vals.items():
        for name, by_broker in metrics.items():
            for broker, xs in by_broker.items():
                out.setdefault(scen, {}).setdefault(name, {})[broker] = median(xs)
    return out


# --- formatting -----------------------------------------------------------------------

def fmt_num(v):
    """Readable number: thousands separators, 3 significant digits below 100."""
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "-"
    av = abs(v)
    if av >= 100:
        return "{:,.0f}".format(v)
    if av >= 10:
        return "{:.1f}".format(v)
    return "{:.2f}".format(v)


def fmt_ratio(v):
    return "-" if v is None else "{:.2f}".format(v)


def format_table(header, rows, right=None):
    """Plain-text table; columns after the first are right-aligned."""
    cols = len(header)
    widths = [len(str(h)) for h in header]
    for row in rows:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(str(c)))
    lines = []

    def line(cells):
        parts = []
        for i, c in enumerate(cells):
            c = str(c)
            if i == 0 and not right:
                parts.append(c.ljust(widths[i]))
            else:
                parts.append(c.rjust(widths[i]))
        return "  ".join(parts).rstrip()

    lines.append(line(header))
    lines.append("  ".join("-" * w for w in widths[:cols]))
    for row in rows:
        lines.append(line(row))
    return "\n".join(lines)


def format_markdown(header, rows):
    out = ["| " + " | ".join(str(h) for h in header) + " |",
           "| --- |" + " ---: |" * (len(header) - 1)]
    for row in rows:
        out.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(out)
