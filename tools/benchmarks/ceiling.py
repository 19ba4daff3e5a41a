"""The load generator's own ceilings, measured without a broker in the way:

- parse_fast: PUBLISH packets/s the subscriber side counts on a pre-built
  stream of identical deliveries fed in 64 KB chunks (the usual case);
- parse_mixed: the same with two alternating topic lengths, so every packet
  is walked in Python (the worst case);
- qos_ack_path: QoS 1 PUBLISHes/s the subscriber side acknowledges on a
  pre-built stream (split + build the PUBACKs);
- write: QoS 0 messages/s that 8 publisher connections write into a peer
  that discards (tools/benchmarks/null.py --mode discard, another process);
- null_*: the QoS 0/1/2 scenarios and ping-pong run against the null relay (tools/benchmarks/null.py, a
  trivial forwarder in another process): what the generator achieves end
  to end when the "broker" costs almost nothing.
"""
import time

from benchmarks import load as bl
from benchmarks import mqtt as m
from benchmarks.stats import percentile


def _feed_rate(stream, chunk=65536):
    c = m.Counter()
    t = time.perf_counter()
    for i in range(0, len(stream), chunk):
        c.feed(stream[i:i + chunk])
    dt = time.perf_counter() - t
    return c.publishes / dt, c.publishes


def parse_fast(mb):
    pkt = m.publish("bench/00", bl.PAYLOAD)
    stream = pkt * (mb * 1024 * 1024 // len(pkt))
    rate, n = _feed_rate(stream)
    assert n == len(stream) // len(pkt)
    return rate


def parse_mixed(mb):
    pair = m.publish("bench/00", bl.PAYLOAD) + m.publish("bench/000", bl.PAYLOAD)
    stream = pair * (mb * 1024 * 1024 // len(pair) // 8)  # slow path: an eighth is plenty
    rate, n = _feed_rate(stream)
    assert n == 2 * (len(stream) // len(pair))
    return rate


def qos_ack_path(mb):
    """QoS 1 PUBLISHes/s the subscriber side acknowledges (bench_mqtt.ack_publishes)
    on a pre-built stream fed in 64 KB chunks."""
    count = max(5000, mb * 2000)
    table = m.publish_table("bench/w", bl.PAYLOAD, 1, count)
    stream = b"".join(table[1:])
    t = time.perf_counter()
    n = 0
    tail = b""
    for i in range(0, len(stream), 65536):
        data = tail + stream[i:i + 65536]
        got, _, acks, used = m.ack_publishes(data, 0x40)
        tail = data[used:]
        n += got
    assert n == count
    return n / (time.perf_counter() - t)


def measure(params, make_peer, log=print):
    """All ceilings; make_peer(mode) starts a benchmarks/null.py peer ("relay" or
    "discard") and returns it started (with .port and .stop())."""
    out = {}
    mb = params["ceiling_mb"]
    out["parse_fast_per_s"] = parse_fast(mb)
    out["parse_mixed_per_s"] = parse_mixed(mb)
    out["qos_ack_path_per_s"] = qos_ack_path(mb)
    peer = make_peer("discard")
    try:
        out["write_per_s"] = bl.write_ceiling(peer.port, params["fanin_pubs"], params["ceiling_s"])
    finally:
        peer.stop()
    peer = make_peer("relay")
    try:
        dur = max(params["ceiling_s"], params["warmup"] + 0.3)
        r = bl.qos0_load(peer.port, params["fanin_pubs"], 1, dur, params["warmup"], tag="nfi")
        out["null_fanin_per_s"] = r["delivered_per_s"]
        r = bl.qos0_load(peer.port, 1, params["fanout_subs"], dur, params["warmup"], tag="nfo")
        out["null_fanout_per_s"] = r["delivered_per_s"]
        for qos in (1, 2):
            r = bl.windowed_load(peer.port, qos, params["window"], dur, tag="nq%d" % qos)
            out["null_qos%d_per_s" % qos] = r["msgs_per_s"]
        lat = bl.pingpong(peer.port, min(params["pp_rounds"], 2000), params["pp_warmup"])
        out["null_pingpong_p50_us"] = percentile(lat, 50)
        out["null_pingpong_p99_us"] = percentile(lat, 99)
    finally:
        peer.stop()
    return out
