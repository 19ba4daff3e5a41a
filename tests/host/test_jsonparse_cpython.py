"""midge.jsonparse against CPython's json module, on generated documents.

Every generated document is valid RFC 8259 JSON written in a random one of
its many spellings (escapes of any case, surrogate pairs, raw UTF-8,
exponents, the four kinds of whitespace, duplicate keys) within jsonparse's
limits; both parsers must give the same value, types included. Then each
document is damaged a few times (bytes deleted, inserted, replaced,
duplicated, cut off): where json refuses, jsonparse must refuse; where both
accept, the values must be the same; where json accepts and jsonparse
refuses, the reason must be one of jsonparse's documented refusals (lone
surrogate escapes, NaN/Infinity, nesting or number limits).

Seeded. MIDGE_JSON_SEEDS=A-B (default 0-19) picks the seeds, e.g.
  MIDGE_JSON_SEEDS=0-999 .venv/bin/python -m pytest tests/host/test_jsonparse_cpython.py -q
"""
import json
import math
import os
import random

import pytest

from midge.jsonparse import loads

_DOCS_PER_SEED = 60
_MUTANTS_PER_DOC = 30
_MAX_DEPTH = 16  # jsonparse's limit; documents stay within it
_WS = " \t\n\r"
_SHORT = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f",
          "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Characters strings are drawn from: ASCII (controls included), the JSON
# metacharacters, Latin-1, BMP (U+FEFF, U+2028, the last one before the
# surrogates, the first after) and astral planes.
_CHARS = ('abcXYZ09 "\\/\'\x00\x01\x1f\x7f\b\f\n\r\t{}[]:,'
          "\u00e9\u00ff\u0100\u20ac\u2028\ufeff\ud7ff\ue000\uffff"
          "\U00010000\U0001f600\U0010ffff")


def _seeds():
    spec = os.environ.get("MIDGE_JSON_SEEDS", "0-19")
    lo, _, hi = spec.partition("-")
    return range(int(lo), int(hi or lo) + 1)


# ---- generating values and their spellings --------------------------------------
def _gen_value(rng, depth):
    kinds = ["int", "float", "str", "lit"]
    if depth < _MAX_DEPTH:
        kinds += ["list", "dict"] * (3 if depth < 3 else 1)
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, 1, -1, 1883, 65535, 1 << 30, -(1 << 63),
                           rng.randrange(-10 ** rng.randrange(1, 40), 10 ** rng.randrange(1, 40))])
    if kind == "float":
        f = rng.choice([0.0, -0.0, 0.5, 1e-300, 5e-324, 1.7976931348623157e308, 1e16,
                        rng.uniform(-1e6, 1e6),
                        rng.uniform(-1, 1) * 10 ** rng.randrange(-320, 300)])
        return f if math.isfinite(f) else 1.0
    if kind == "str":
        return _gen_str(rng)
    if kind == "lit":
        return rng.choice([True, False, None])
    n = rng.randrange(0, 5)
    if kind == "list":
        return [_gen_value(rng, depth + 1) for _ in range(n)]
    return {_gen_str(rng): _gen_value(rng, depth + 1) for _ in range(n)}


def _gen_str(rng):
    return "".join(rng.choice(_CHARS) for _ in range(rng.randrange(0, 8)))


def _ws(rng):
    if rng.random() < 0.6:
        return ""
    return "".join(rng.choice(_WS) for _ in range(rng.randrange(1, 4)))


def _u(rng, cp):
    h = "%04x" % cp
    return "\\u" + (h.upper() if rng.random() < 0.5 else h)


def _spell_str(rng, s):
    out = ['"']
    for ch in s:
        cp = ord(ch)
        r = rng.random()
        if ch in _SHORT and (r < 0.7 or ch in '"\\' or cp < 0x20):
            out.append(_SHORT[ch] if r < 0.7 else _u(rng, cp))
        elif cp < 0x20:
            out.append(_u(rng, cp))
        elif r < 0.15:
            if cp > 0xFFFF:  # a surrogate pair
                cp -= 0x10000
                out.append(_u(rng, 0xD800 + (cp >> 10)) + _u(rng, 0xDC00 + (cp & 0x3FF)))
            else:
                out.append(_u(rng, cp))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _spell_float(rng, f):
    r = rng.random()
    if r < 0.5:
        text = repr(f)
    elif r < 0.8:
        text = "%.17e" % f
    else:
        text = "%.17E" % f
    if "e" not in text.lower() and "." not in text:
        text += ".0"
    if rng.random() < 0.3:  # exponent spelled without '+' or with leading zeros
        text = text.replace("e+", "e").replace("E+", "E")
    return text


def _spell(rng, v):
    """A random valid JSON spelling of v (ws around tokens added by callers)."""
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _spell_float(rng, v)
    if isinstance(v, str):
        return _spell_str(rng, v)
    if isinstance(v, list):
        items = [_ws(rng) + _spell(rng, x) + _ws(rng) for x in v]
        return "[" + (",".join(items) if items else _ws(rng)) + "]"
    items = []
    for k in v:
        if rng.random() < 0.1:  # a duplicate key before the one that wins
            items.append(_ws(rng) + _spell_str(rng, k) + _ws(rng) + ":" + _ws(rng) + "[0]")
        items.append(_ws(rng) + _spell_str(rng, k) + _ws(rng) + ":" + _ws(rng)
                     + _spell(rng, v[k]) + _ws(rng))
    return "{" + (",".join(items) if items else _ws(rng)) + "}"


def _document(rng):
    """(bytes of a valid document, its value)."""
    if rng.random() < 0.3:  # json's own spelling
        v = _gen_value(rng, 1)
        text = json.dumps(v, ensure_ascii=rng.random() < 0.5,
                          indent=rng.choice([None, 0, 2, "\t"]),
                          separators=rng.choice([None, (",", ":"), (" , ", " : ")]),
                          sort_keys=rng.random() < 0.5, allow_nan=False)
    else:
        v = _gen_value(rng, 1)
        text = _spell(rng, v)
    text = _ws(rng) + text + _ws(rng)
    return text.encode("utf-8"), v


# ---- comparing -----------------------------------------------------------------------
def _same(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return repr(a) == repr(b)  # -0.0 is not 0.0
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _json(data):
    """json's value for the bytes, or an exception instance if it refuses."""
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # decode, JSONDecodeError, int digits
        return e


def _ours(data):
    try:
        return loads(data)
    except ValueError as e:
        return e


# What jsonparse refuses on purpose where CPython's json accepts:
# (part of the message, what the document then holds).
_OUR_REFUSALS = (("lone surrogate", b"\\u"), ("unexpected character 'N'", b"NaN"),
                 ("unexpected character 'I'", b"Infinity"), ("expected a digit", b"-Infinity"),
                 ("nesting deeper than", b""), ("number longer than", b""))


_TOKENS = (b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-0", b"01", b"1.", b".5", b"+1",
           b"1" * 70, b",", b",]", b",}", b"//c\n", b"/**/", b"#", b"'a'", b"\xef\xbb\xbf",
           b"\\ud800", b"\\udc00", b"\\ud83d\\ude00", b"\\u00e9", b"\\x41", b"\\'",
           b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xe2\x82\xac", b"\xc2\xa0",
           b"true", b"null", b"[", b"{", b'"a":1', b"[" * 17, b"]" * 17)


def _mutate(rng, data):
    b = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(7)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:  # delete
            del b[min(i, len(b) - 1)]
        elif op == 1:  # insert an interesting byte
            b[i:i] = bytes([rng.choice(b'{}[],:"\\/ \t\n\r\x0b\x0c\x00\x1f\x7f'
                                       b"0123456789-+.eEtrufalsn'#*xINa"
                                       b"\x80\xbf\xc0\xc3\xe2\xed\xf0\xf4\xf5\xff")])
        elif op == 2 and b:  # replace
            b[min(i, len(b) - 1)] = rng.randrange(256)
        elif op == 3 and b:  # duplicate a slice
            j = rng.randrange(i, len(b) + 1)
            b[j:j] = b[i:j][:40]
        elif op == 4:  # insert a token some parser or other accepts
            b[i:i] = rng.choice(_TOKENS)
        elif op == 5:  # cut off
            del b[i:]
        else:  # swap two bytes
            if len(b) > 1:
                j = rng.randrange(len(b))
                i = min(i, len(b) - 1)
                b[i], b[j] = b[j], b[i]
    return bytes(b)


def _check(data, where):
    want = _json(data)
    got = _ours(data)
    if isinstance(want, Exception):
        assert isinstance(got, Exception), "%s: json refuses (%s), jsonparse gives %r: %r" % (
            where, want, got, data)
        assert str(got).startswith("line "), (where, str(got), data)
        return
    if isinstance(got, Exception):
        assert any(r in str(got) and b in data for r, b in _OUR_REFUSALS), (
            "%s: json accepts, jsonparse: %s: %r" % (where, got, data))
        return
    assert _same(got, want), "%s: values differ: %r != %r for %r" % (where, got, want, data)


@pytest.mark.parametrize("seed", _seeds())
def test_agrees_with_json(seed):
    rng = random.Random(seed)
    for n in range(_DOCS_PER_SEED):
        data, value = _document(rng)
        where = "seed %d doc %d" % (seed, n)
        got = loads(data)  # a valid document must parse
        assert _same(got, value), "%s: %r != %r for %r" % (where, got, value, data)
        assert _same(got, json.loads(data.decode("utf-8"))), (where, data)
        for m in range(_MUTANTS_PER_DOC):
            _check(_mutate(rng, data), "%s mutant %d" % (where, m))
