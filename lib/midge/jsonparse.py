# Strict JSON (RFC 8259) for config files, the same on CPython and
# MicroPython. Their json modules differ (MicroPython's takes trailing
# commas, lone surrogates and overlong UTF-8), so config.read_json uses this
# parser on both.
#
# Contract: loads(data) takes a whole document as UTF-8 bytes (a str is
# encoded first) and returns its value: dict, list, str, int (a number with
# no fraction and no exponent), float, True, False or None. Duplicate keys:
# the last wins. Anything else raises ValueError("line L column C: what"),
# L and C counted from 1, C in characters. Refused: trailing commas,
# comments, single quotes, leading zeros or '+', NaN/Infinity, control
# characters or malformed UTF-8 in strings, lone surrogates (raw or
# \u-escaped), whitespace other than space, tab, CR and LF, anything after
# the value. Limits (RFC 8259 section 9 allows them): more than _MAX_DEPTH
# nested arrays/objects, and number literals longer than _MAX_NUMBER
# characters (CPython would refuse ints past 4300 digits, MicroPython not).
# Only _value recurses, one frame per nesting level, so _MAX_DEPTH bounds
# the C stack: 320 bytes a level on the 64-bit unix port (measured), so 16
# levels take about 5 KB there, less on a 32-bit board (not measured), whose
# task stack is only some KB; a config nests 2 deep. No regex; the caller
# caps the size of data.
from .compat import const

_MAX_DEPTH = const(16)
_MAX_NUMBER = const(64)


def loads(data):
    s = data.encode() if isinstance(data, str) else data
    value, i = _value(s, _ws(s, 0), 0)
    i = _ws(s, i)
    if i < len(s):
        raise _error(s, i, "unexpected data after the value")
    return value


def _error(s, i, what):
    """ValueError for byte offset i of s; at the end of s it says so."""
    if i >= len(s):
        what = "unexpected end of input"
    start = s.rfind(b"\n", 0, i) + 1
    col = 1
    for b in s[start:i]:
        if b & 0xC0 != 0x80:  # count characters, not UTF-8 continuation bytes
            col += 1
    return ValueError("line %d column %d: %s" % (s.count(b"\n", 0, i) + 1, col, what))


def _unexpected(s, i):
    c = s[i]
    n = _utf8_len(s, i) if c > 0x7F else 1
    if not n:
        what = "byte 0x%02x" % c
    elif 0x20 < c < 0x7F:
        what = "character '%s'" % chr(c)
    else:  # U+ form: the same text on both interpreters, visible if blank
        what = "character U+%04X" % ord(s[i:i + n].decode())
    return _error(s, i, "unexpected " + what)


def _ws(s, i):
    """Index of the first byte at or after i that is not JSON whitespace."""
    while i < len(s) and s[i] in b" \t\n\r":
        i += 1
    return i


def _value(s, i, depth):
    """Parse the value at s[i] (not whitespace); depth = containers open
    around it. Returns (value, index just after it)."""
    if i >= len(s):
        raise _error(s, i, "")
    c = s[i]
    if c == 0x22:  # "
        return _string(s, i)
    if c == 0x2D or 0x30 <= c <= 0x39:  # - 0-9
        return _number(s, i)
    for word, value in ((b"true", True), (b"false", False), (b"null", None)):
        if s.startswith(word, i):
            return value, i + len(word)
    if c != 0x7B and c != 0x5B:  # { [
        raise _unexpected(s, i)
    if depth >= _MAX_DEPTH:
        raise _error(s, i, "nesting deeper than %d levels" % _MAX_DEPTH)
    obj = c == 0x7B
    out = {} if obj else []
    end = c + 2  # } or ]
    i = _ws(s, i + 1)
    if i < len(s) and s[i] == end:
        return out, i + 1
    while True:
        if obj:
            if s[i:i + 1] != b'"':
                raise _error(s, i, "expected a string key")
            key, i = _string(s, i)
            i = _ws(s, i)
            if s[i:i + 1] != b":":
                raise _error(s, i, "expected ':'")
            value, i = _value(s, _ws(s, i + 1), depth + 1)
            out[key] = value
        else:
            value, i = _value(s, i, depth + 1)
            out.append(value)
        i = _ws(s, i)
        c = s[i] if i < len(s) else -1
        if c == end:
            return out, i + 1
        if c != 0x2C:  # ,
            raise _error(s, i, "expected ',' or '%s'" % chr(end))
        comma = i
        i = _ws(s, i + 1)
        if i < len(s) and s[i] == end:
            raise _error(s, comma, "trailing comma")


def _string(s, i):
    """s[i] is '"': return (the string, index after its closing quote)."""
    quote = i
    parts = []
    i += 1
    start = i
    while True:
        if i >= len(s):
            raise _error(s, quote, "unterminated string")
        c = s[i]
        if c == 0x22 or c == 0x5C:  # " or backslash
            parts.append(s[start:i].decode())
            if c == 0x22:
                return "".join(parts), i + 1
            c, i = _escape(s, i)
            parts.append(c)
            start = i
        elif c < 0x20:
            raise _error(s, i, "control character in string (write it as an escape)")
        elif c < 0x80:
            i += 1
        else:
            n = _utf8_len(s, i)
            if not n:
                raise _error(s, i, "invalid UTF-8 (byte 0x%02x)" % c)
            i += n


def _escape(s, i):
    """s[i] is a backslash: return (the character it stands for, index after
    the escape). A \\u high surrogate must be followed by a \\u low one."""
    e = s[i + 1:i + 2]
    if e == b"u":
        cp = _hex4(s, i + 2)
        if 0xD800 <= cp < 0xDC00 and s[i + 6:i + 8] == b"\\u":
            low = _hex4(s, i + 8)
            if 0xDC00 <= low < 0xE000:
                return chr(0x10000 + ((cp - 0xD800) << 10) + low - 0xDC00), i + 12
        if 0xD800 <= cp < 0xE000:
            raise _error(s, i, "lone surrogate \\u%04x" % cp)
        return chr(cp), i + 6
    k = b'"\\/bfnrt'.find(e) if e else -1
    if k < 0:
        raise _error(s, i, "invalid escape")
    return '"\\/\b\f\n\r\t'[k], i + 2


def _hex4(s, i):
    """The value of the four hex digits at s[i] (after a \\u)."""
    h = s[i:i + 4]
    for c in h:
        if c not in b"0123456789abcdefABCDEF":
            h = b""
    if len(h) != 4:
        raise _error(s, i - 2, "invalid \\u escape")
    return int(h, 16)


def _number(s, i):
    """s[i] is '-' or a digit: return (int or float, index after it)."""
    start = i
    if s[i] == 0x2D:
        i += 1
    if s[i:i + 1] == b"0":
        i += 1
        if s[i:i + 1].isdigit():
            raise _error(s, start, "leading zero in a number")
    else:
        i = _digits(s, i)
    frac = s[i:i + 1] == b"."
    if frac:
        i = _digits(s, i + 1)
    if s[i:i + 1] in (b"e", b"E"):
        frac = True
        i += 1
        if s[i:i + 1] in (b"+", b"-"):
            i += 1
        i = _digits(s, i)
    if i - start > _MAX_NUMBER:
        raise _error(s, start, "number longer than %d characters" % _MAX_NUMBER)
    return (float(s[start:i]) if frac else int(s[start:i])), i


def _digits(s, i):
    """Index after the run of ASCII digits at s[i]; at least one required."""
    start = i
    while i < len(s) and 0x30 <= s[i] <= 0x39:
        i += 1
    if i == start:
        raise _error(s, i, "expected a digit")
    return i


def _utf8_len(s, i):
    """Length of the well-formed UTF-8 sequence at s[i] (s[i] >= 0x80), or 0:
    no overlong forms, no surrogates, nothing past U+10FFFF (Unicode table
    3-7). MicroPython's decode() accepts the first two, so check here."""
    b = s[i]
    lo = 0x80
    hi = 0xBF
    if b < 0xC2 or b > 0xF4:
        return 0
    if b < 0xE0:
        n = 2
    elif b < 0xF0:
        n = 3
        if b == 0xE0:
            lo = 0xA0
        if b == 0xED:
            hi = 0x9F
    else:
        n = 4
        if b == 0xF0:
            lo = 0x90
        if b == 0xF4:
            hi = 0x8F
    for k in range(i + 1, i + n):
        if k >= len(s) or not lo <= s[k] <= hi:
            return 0
        lo = 0x80
        hi = 0xBF
    return n
