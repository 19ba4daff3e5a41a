#!/usr/bin/env python3
"""Trivial peers that show the load generator's own ceiling (run as a
separate process, so on the other core, like a broker).

  --mode discard   accept connections and throw away every byte read
                   (recv_into one 1 MB buffer: C speed); the generator's
                   publisher side writes into it
  --mode relay     a "null broker": CONNECT -> CONNACK, SUBSCRIBE -> SUBACK
                   (granted as asked), PINGREQ -> PINGRESP, and every complete
                   PUBLISH forwarded verbatim to each connection whose filter
                   matches (exact, or a prefix ending in '#'). A run of packets
                   with identical fixed headers (bench_mqtt.count_packets)
                   is routed as one block by the topic of its first packet,
                   which holds for the generator's streams (one topic per
                   publisher connection). QoS 1/2 PUBLISHes are
                   acknowledged at once and forwarded as they came (the
                   publisher's packet id); the subscriber's acknowledgements
                   are answered (PUBREC -> PUBREL) or dropped. No retained,
                   no sessions: it is a ceiling, not a broker.

Usage: python tools/benchmarks/null.py --port P [--mode relay|discard]
Prints "listening" on stdout once ready.
"""
import argparse
import selectors
import socket

from benchmarks import mqtt as m


def _match(filt, topic):
    if filt == topic:
        return True
    if filt == b"#":
        return not topic.startswith(b"$")
    return filt.endswith(b"/#") and (topic.startswith(filt[:-1]) or topic == filt[:-2])


class Peer:
    __slots__ = ("sock", "tail", "filters")

    def __init__(self, sock):
        self.sock = sock
        self.tail = b""
        self.filters = []


def serve_discard(lsock):
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ)
    buf = bytearray(1 << 20)
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if s is lsock:
                c, _ = lsock.accept()
                sel.register(c, selectors.EVENT_READ)
                continue
            try:
                n = s.recv_into(buf)
            except OSError:
                n = 0
            if not n:
                sel.unregister(s)
                s.close()


def serve_relay(lsock):
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ)
    peers = {}
    subs = []  # peers with at least one filter

    def drop(p):
        sel.unregister(p.sock)
        p.sock.close()
        peers.pop(p.sock, None)
        if p in subs:
            subs.remove(p)

    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if s is lsock:
                c, _ = lsock.accept()
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                peers[c] = Peer(c)
                sel.register(c, selectors.EVENT_READ)
                continue
            p = peers[s]
            try:
                data = s.recv(262144)
            except OSError:
                data = b""
            if not data:
                drop(p)
                continue
            if p.tail:
                data = p.tail + data
            reply = []   # to this peer, one write per chunk
            fwd = {}     # subscriber -> [blocks], one write each per chunk
            pos = 0
            end = len(data)
            while pos < end:
                h = m.header(data, pos, end)
                if h is None:
                    break
                b0, hlen, rl = h
                plen = hlen + rl
                if pos + plen > end:
                    break
                kind = b0 >> 4
                if kind == m.PUBLISH:
                    qos = (b0 >> 1) & 3
                    n = 1
                    if qos == 0:
                        left = (end - pos) // plen
                        n = max(1, m._run_length(data, pos, hlen, plen, left) if left > 1 else 1)
                    else:  # acknowledge at once: PUBACK, or PUBREC (then PUBREL -> PUBCOMP)
                        pid = m.publish_pid(data, pos + hlen)
                        reply.append(bytes([0x40 if qos == 1 else 0x50, 2]) + pid.to_bytes(2, "big"))
                    topic = m.publish_topic(data, pos + hlen)
                    block = data[pos:pos + n * plen]
                    for q in subs:
                        for f in q.filters:
                            if _match(f, topic):
                                fwd.setdefault(q, []).append(block)
                                break
                    pos += n * plen
                    continue
                if kind == 1:       # CONNECT
                    reply.append(b"\x20\x02\x00\x00")
                elif kind == 8:     # SUBSCRIBE
                    pid = data[pos + hlen:pos + hlen + 2]
                    i = pos + hlen + 2
                    codes = bytearray()
                    while i < pos + plen:
                        fl = (data[i] << 8) | data[i + 1]
                        p.filters.append(bytes(data[i + 2:i + 2 + fl]))
                        codes.append(data[i + 2 + fl] & 3)
                        i += 3 + fl
                    if p not in subs:
                        subs.append(p)
                    reply.append(bytes([0x90, 2 + len(codes)]) + pid + bytes(codes))
                elif kind == m.PUBREL:   # from a QoS 2 publisher
                    reply.append(b"\x70\x02" + data[pos + hlen:pos + hlen + 2])
                elif kind == m.PUBREC:   # from a QoS 2 subscriber
                    reply.append(b"\x62\x02" + data[pos + hlen:pos + hlen + 2])
                elif kind == 12:    # PINGREQ
                    reply.append(b"\xd0\x00")
                # PUBACK / PUBCOMP from a subscriber, DISCONNECT: nothing to do
                pos += plen
            p.tail = data[pos:] if pos < end else b""
            try:
                if reply:
                    s.sendall(b"".join(reply))
                for q, blocks in fwd.items():
                    q.sock.sendall(b"".join(blocks))
            except OSError:
                pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=("relay", "discard"), default="relay")
    args = ap.parse_args()
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", args.port))
    lsock.listen(1024)
    print("listening", flush=True)
    try:
        (serve_discard if args.mode == "discard" else serve_relay)(lsock)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
