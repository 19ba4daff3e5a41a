# TLS listeners (README, "Users, ACLs and TLS"): the server context from the
# certificate files, and on MicroPython the stream that carries one TLS
# connection. Imported by the server only when a TLS listener is configured:
# its code is heap on a board, and a hub without TLS keeps it free.
#
# A TLS listener's sockets are plain accepted sockets wrapped once, at accept
# (compat.accept_forever(..., tls=context(...))); every plain connection keeps the plain path
# (one `tls is None` test per accepted socket, nothing per packet). The
# connection code is the same for both: reader.readinto, write_some,
# writable, close_stream, set_nodelay and peer_text take a TLS stream.
#
# MicroPython (measured on the unix port, 1.29-preview, Mbed TLS 3.6.6;
# tests/host/test_tls_compat.py):
# - ssl.SSLContext.load_cert_chain takes file paths or bytes, but this
#   build's mbedTLS parses DER only (PEM: "invalid key"/"invalid cert"):
#   context() converts PEM to DER itself, so tools/mkcert's PEM files
#   work on both interpreters. A DER cert file holds ONE certificate: the
#   server's, signed by the CA the clients trust; no intermediates.
# - the handshake (TLS 1.2 only) runs inside the first reads of a
#   non-blocking socket; until it is over, a read returns None (asyncio's
#   Stream.readinto hands that None on, which the connection would take
#   for EOF: TLSStream.readinto waits again instead).
# - the SSL object has no fd: polling it makes the unix port's poll() wake
#   every millisecond while it is registered (1.8% CPU for one idle TLS
#   connection, 3.6% for 20), and with sockets registered and unregistered
#   around it the unix port crashes (SIGSEGV in modselect.c). So nothing
#   ever waits on it: the handshake and an established connection wait on
#   the raw socket (0% CPU while idle).
# - closing the SSL object frees its mbedTLS context and closes the raw
#   socket too, except after a failed handshake (an alert, garbage, an
#   unknown cipher): mbedTLS then frees the context and drops the raw
#   socket WITHOUT closing it (the fd leaked for good: sockets have no
#   finaliser). TLSSocket.close closes both, whatever happened.
# - writes: a record mbedTLS could not send whole must be offered again
#   with the same length (TLSSocket.write keeps that rule; without it a
#   1 MB echo through a full socket lost 98 KB).
# - heap: mbedTLS allocates with libc malloc on the unix port (outside
#   gc.mem_alloc(); checked: the binary calls calloc, not
#   m_tracked_calloc); on bare-metal ports (rp2) on the MicroPython heap
#   (m_tracked_calloc), on ESP32 in the IDF heap. Measured, 64-bit unix
#   port, per connection, handshaking or established: ~23 KB of mbedTLS
#   (16 KB in and 4 KB out record buffers, ciphers, session), all of it
#   freed at close_stream; ~640 B of Python heap more than a plain one
#   (the SSL object holding the mbedtls_ssl_context, TLSSocket, the
#   subclassed stream). Handshake (ECDHE-ECDSA P-256, TLS 1.2, CPython
#   client on 127.0.0.1, TCP connect included): median 18 ms.

from .compat import MICROPYTHON


def _read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        code = e.args[0] if e.args else "?"
        raise OSError("cannot read %s (errno %s)" % (path, code))


def _der(data, path, what):
    """The DER bytes of the first PEM block of kind `what` ("CERTIFICATE"
    or "PRIVATE KEY": any "... PRIVATE KEY") in data, or data itself when
    it is DER already. ValueError (naming path) when there is none, or the
    key is encrypted (the hub cannot ask for a passphrase)."""
    import binascii
    if data[:1] == b"\x30":
        return data  # DER: a SEQUENCE
    pos = 0
    while True:
        i = data.find(b"-----BEGIN ", pos)
        if i < 0:
            raise ValueError("%s holds no %s (PEM or DER)" % (path, what.lower()))
        j = data.find(b"-----", i + 11)
        k = data.find(b"-----END ", j + 5) if j > 0 else -1
        if k < 0:
            raise ValueError("%s: a PEM block is not closed" % path)
        label = data[i + 11:j]
        body = data[j + 5:k]
        pos = k + 9
        if what == "CERTIFICATE" and label != b"CERTIFICATE":
            continue
        if what != "CERTIFICATE" and not label.endswith(b"PRIVATE KEY"):
            continue
        if label.startswith(b"ENCRYPTED") or b"ENCRYPTED" in body:
            raise ValueError("%s: the key is encrypted; the hub needs it unencrypted" % path)
        try:
            return binascii.a2b_base64(body)
        except ValueError:
            raise ValueError("%s: a PEM block is not base64" % path)


def _ec_point(der, last):
    """The uncompressed P-256 public point (65 bytes) a DER key or
    certificate holds, or None (another key type)."""
    tag = b"\x03\x42\x00\x04"  # BIT STRING, 66 bytes, no unused bits, 0x04 point
    i = der.rfind(tag) if last else der.find(tag)
    return bytes(der[i + 3:i + 68]) if i >= 0 and len(der) >= i + 68 else None


def context(cert_file, key_file):
    """A server TLS context for compat.accept_forever(..., tls=...), from the
    server certificate and its unencrypted private key (tools/mkcert's
    server.crt and server.key; PEM on both interpreters, DER too on
    MicroPython). Raises OSError (a file cannot be read) or ValueError (a
    file holds no certificate or key, the key is encrypted or does not
    belong to the certificate), each message naming the file: the caller
    reports it as a configuration error. On MicroPython a P-256 key (what
    tools/mkcert makes) is checked against the certificate here, since
    mbedTLS would only fail every handshake; CPython's OpenSSL checks any."""
    import ssl
    cert_raw = _read_bytes(cert_file)
    key_raw = _read_bytes(key_file)
    cert = _der(cert_raw, cert_file, "CERTIFICATE")
    key = _der(key_raw, key_file, "PRIVATE KEY")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if MICROPYTHON:
        point = _ec_point(key, True)
        if point is not None and point not in cert:
            raise ValueError("%s is not the key of the certificate in %s" % (key_file, cert_file))
        try:
            ctx.load_cert_chain(cert, key)  # the DER bytes
        except ValueError as e:  # "invalid cert" / "invalid key"
            raise ValueError("%s / %s: %s" % (cert_file, key_file, e))
        return ServerTLS(ctx)
    for path, raw in ((cert_file, cert_raw), (key_file, key_raw)):
        if raw is cert or raw is key:  # _der found DER, not PEM
            raise ValueError("%s is DER: CPython reads PEM (tools/mkcert's server.crt and server.key)" % path)
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise ValueError("%s is not the key of the certificate in %s" % (key_file, cert_file))
        raise ValueError("%s / %s: %s" % (cert_file, key_file, e.reason or e))
    return ctx


if MICROPYTHON:
    import asyncio as _asyncio
    from asyncio import core as _core

    class TLSSocket:
        """A TLS stream's `s`: the SSL object (`tls`) and the raw
        socket under it (`raw`, which only this closes for sure).
        write, close and setsockopt are what compat calls on a
        stream's `s`."""

        def __init__(self, tls, raw):
            self.tls = tls
            self.raw = raw
            self.hs = True   # no read has returned yet: the handshake may be running
            self.unsent = 0  # bytes the last write was offered and did not report taken

        def write(self, buf, off, n):
            """As a socket's write(buf, off, n), keeping mbedTLS's
            rule: a record it could not send whole (the socket was
            full) holds the first unreported bytes already, and it
            reports them only when the next write offers the SAME
            length again (offering more reports more bytes than went
            out: a stream that loses data; fewer, one that repeats
            it). So a write that fell short by m bytes makes the next
            one offer exactly m. The caller offers the bytes from
            where the last write stopped, at least m of them
            (Connection._write_some does: its queue only grows at the
            tail); fewer is refused (OSError), never corrupted."""
            m = self.unsent
            if m:
                if n < m:
                    raise OSError(5)  # EIO
                n = m
            k = self.tls.write(buf, off, n)  # None: nothing reported
            if k is None:
                k = 0
            self.unsent = n - k
            return k

        def setsockopt(self, level, opt, value):
            self.raw.setsockopt(level, opt, value)  # TCP_NODELAY is the raw socket's

        def close(self):
            """Free the mbedTLS context and close the raw socket, in
            every state (after a failed handshake the SSL object no
            longer closes it). Idempotent: a closed socket's close
            does nothing, and mbedTLS does not close a socket twice."""
            try:
                self.tls.close()
            finally:
                self.raw.close()

    def not_on_tls(self, *args):
        raise OSError(95)  # EOPNOTSUPP

    class TLSStream(_asyncio.StreamWriter):
        """asyncio's Stream over a TLSSocket. readinto waits for a
        whole read: None from the SSL object (the handshake wants
        more, a record is incomplete) is not EOF. Only readinto,
        get_extra_info and compat's functions work on it: Stream's
        read, write and drain would register the TLSSocket with the
        poller, which refuses it half-way and then crashes the unix
        port at its next poll (SIGSEGV in modselect.c, seen on
        1.29-preview); they raise instead."""

        read = readexactly = readline = write = drain = not_on_tls

        def readinto(self, buf):  # a generator, like Stream.readinto
            # Every read returns at once, never across a yield: midge's
            # connections share ONE read buffer and take the data out
            # before their next await (a yield between this read and
            # the return let another connection's read overwrite it:
            # seen as corrupted payloads).
            s = self.s
            tls = s.tls
            if s.hs:
                # The handshake: the client speaks first, and mbedTLS
                # then waits for its next flight. Wait on the raw socket
                # only, never on the SSL object: the unix port's poller
                # keeps a stale pointer for an object without an fd once
                # sockets come and go around it (SIGSEGV in modselect.c,
                # poll_obj_get_revents: a ClientHello cut short, two
                # silent sockets, one more connection), and polling it
                # wakes every millisecond. The server's own flight (about
                # 1 KB with a P-256 certificate) fits any socket's send
                # buffer; a client that will not take it stalls its own
                # handshake until tls_handshake_timeout_ms.
                while True:
                    yield _core._io_queue.queue_read(s.raw)
                    n = tls.readinto(buf)
                    if n is not None:
                        s.hs = False
                        return n
            # Established. mbedTLS may hold the rest of a record already
            # (a read smaller than the record), which no poll of the raw
            # socket shows: so yield once (as a plain read does: a busy
            # client cannot starve the others), read, and wait on the
            # raw socket only when that found nothing.
            yield from _core.sleep_ms(0)
            n = tls.readinto(buf)
            while n is None:
                yield _core._io_queue.queue_read(s.raw)
                n = tls.readinto(buf)
            return n

    class ServerTLS:
        """What compat.accept_forever takes as `tls` on MicroPython: the
        SSLContext, and wrap(), which makes an accepted socket a TLS stream
        (no handshake yet: it runs inside the first reads). If wrapping
        fails, what was made is closed here; the caller closes the raw
        socket."""

        def __init__(self, ctx):
            self.ctx = ctx

        def wrap(self, sock, addr):
            wrapped = self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            try:
                return TLSStream(TLSSocket(wrapped, sock), {"peername": addr})
            except BaseException:
                wrapped.close()  # its mbedTLS context now, not at a GC
                raise
