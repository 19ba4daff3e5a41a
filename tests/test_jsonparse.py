# midge.jsonparse: strict RFC 8259 on both interpreters. Expected values are
# written out here, never taken from the json module (MicroPython's differs).
from midge.jsonparse import loads


def _err(doc):
    """The ValueError message for doc, or None if it parsed."""
    try:
        loads(doc)
    except ValueError as e:
        return str(e)
    return None


VALID = [
    # literals and numbers
    (b"true", True),
    (b"false", False),
    (b"null", None),
    (b"0", 0),
    (b"-0", 0),
    (b"7", 7),
    (b"-12", -12),
    (b"1234567890123456789012345", 1234567890123456789012345),
    (b"1.5", 1.5),
    (b"-0.25", -0.25),
    (b"1e3", 1000.0),
    (b"1E+2", 100.0),
    (b"25e-2", 0.25),
    (b"0.5e1", 5.0),
    (b"0e0", 0.0),
    # strings and every escape
    (b'""', ""),
    (b'"abc"', "abc"),
    (b'"\\"\\\\\\/\\b\\f\\n\\r\\t"', '"\\/\b\f\n\r\t'),
    (b'"\\u0041\\u00e9\\u00C9"', "A\u00e9\u00c9"),
    (b'"\\u0000"', "\x00"),
    (b'"\\u20ac"', "\u20ac"),
    (b'"\\ud83d\\ude00"', "\U0001f600"),  # surrogate pair
    (b'"\\uDBFF\\uDFFF"', "\U0010ffff"),
    (b'"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"', "\u00e9\u20ac\U0001f600"),  # raw UTF-8
    (b'"\x7f"', "\x7f"),  # DEL is not a control character to JSON
    (b'"a\'b"', "a'b"),
    # containers
    (b"[]", []),
    (b"{}", {}),
    (b"[1, [2, [3]], {}]", [1, [2, [3]], {}]),
    (b'{"a": {"b": [true, false, null]}}', {"a": {"b": [True, False, None]}}),
    (b'{"a": 1, "a": 2}', {"a": 2}),  # duplicate keys: the last wins
    (b'{"": 0}', {"": 0}),
    # whitespace of the four kinds, around everything
    (b' \t\r\n{ "port" :\t1999 ,\n"max_clients" : 2 } \n',
     {"port": 1999, "max_clients": 2}),
    (b"[ ]", []),
    (b"{ }", {}),
    (b"[" * 16 + b"]" * 16, [[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]),  # 16 levels: the limit
    # a str is taken too
    ('{"host": "0.0.0.0"}', {"host": "0.0.0.0"}),
]


def test_valid_corpus():
    for doc, want in VALID:
        got = loads(doc)
        assert got == want, (doc, got, want)
        assert type(got) is type(want), doc  # 1e3 is a float, 7 an int


def test_ints_and_floats_keep_their_type():
    assert type(loads(b"[1]")[0]) is int
    assert type(loads(b"[1.0]")[0]) is float
    assert type(loads(b"[1e0]")[0]) is float
    assert loads(b'{"max_clients": 5}')["max_clients"] is not True


def test_config_document():
    doc = (b'{\n  "host": "0.0.0.0",\n  "port": 1883,\n  "max_clients": 7,\n'
           b'  "allow_anonymous": false,\n  "log_level": "info",\n  "store_dir": ""\n}\n')
    assert loads(doc) == {"host": "0.0.0.0", "port": 1883, "max_clients": 7,
                          "allow_anonymous": False, "log_level": "info", "store_dir": ""}


# (document, message expected to contain, including "line L column C")
INVALID = [
    (b'{"max_clients": 5,}', "line 1 column 18: trailing comma"),
    (b"[1, 2,]", "line 1 column 6: trailing comma"),
    (b"[1,\n 2,\n ]", "line 2 column 3: trailing comma"),
    (b"[,]", "line 1 column 2: unexpected character ','"),
    (b"[1,,2]", "line 1 column 4: unexpected character ','"),
    (b'{"a": 1 "b": 2}', "line 1 column 9: expected ',' or '}'"),
    (b"[1 2]", "line 1 column 4: expected ',' or ']'"),
    (b'{"a" 1}', "line 1 column 6: expected ':'"),
    (b"{a: 1}", "line 1 column 2: expected a string key"),
    (b"{1: 1}", "line 1 column 2: expected a string key"),
    (b"// comment\n{}", "line 1 column 1: unexpected character '/'"),
    (b"{} // comment", "line 1 column 4: unexpected data after the value"),
    (b'{"a": 1 /* c */}', "line 1 column 9: expected ',' or '}'"),
    (b"# comment\n{}", "line 1 column 1: unexpected character '#'"),
    (b"{'a': 1}", "line 1 column 2: expected a string key"),
    (b"['a']", "line 1 column 2: unexpected character '''"),
    (b"01", "line 1 column 1: leading zero"),
    (b"[-01]", "line 1 column 2: leading zero"),
    (b"00", "line 1 column 1: leading zero"),
    (b"+1", "unexpected character '+'"),
    (b".5", "unexpected character '.'"),
    (b"1.", "line 1 column 3: unexpected end of input"),
    (b"1.e3", "line 1 column 3: expected a digit"),
    (b"1e", "unexpected end of input"),
    (b"1e+", "unexpected end of input"),
    (b"-", "line 1 column 2: unexpected end of input"),
    (b"-a", "line 1 column 2: expected a digit"),
    (b"0x10", "line 1 column 2: unexpected data after the value"),
    (b"1" * 65, "line 1 column 1: number longer than 64 characters"),
    (b"NaN", "unexpected character 'N'"),
    (b"[Infinity]", "line 1 column 2: unexpected character 'I'"),
    (b"-Infinity", "line 1 column 2: expected a digit"),
    (b"[nan]", "unexpected character 'n'"),
    (b"tru", "unexpected character 't'"),
    (b"True", "unexpected character 'T'"),
    (b"nul", "unexpected character 'n'"),
    (b'"a\tb"', "line 1 column 3: control character in string"),
    (b'"a\nb"', "line 1 column 3: control character in string"),
    (b'"\x00"', "line 1 column 2: control character in string"),
    (b'"\\ud800"', "line 1 column 2: lone surrogate"),
    (b'"\\udc00"', "line 1 column 2: lone surrogate"),
    (b'"\\ud800\\u0041"', "line 1 column 2: lone surrogate"),
    (b'"\\ud800\\ud800"', "line 1 column 2: lone surrogate"),
    (b'"\\ud800x"', "line 1 column 2: lone surrogate"),
    (b'"\\u12"', "line 1 column 2: invalid \\u escape"),
    (b'"\\u12g4"', "invalid \\u escape"),
    (b'"\\u+123"', "invalid \\u escape"),
    (b'"\\u 123"', "invalid \\u escape"),
    (b'"\\x41"', "line 1 column 2: invalid escape"),
    (b'"\\a"', "invalid escape"),
    (b'"\\U0001F600"', "invalid escape"),
    (b'"\\', "invalid escape"),
    (b'"abc', "line 1 column 1: unterminated string"),
    (b'{"a": "abc}', "line 1 column 7: unterminated string"),
    (b'"', "unterminated string"),
    (b"[1, 2", "line 1 column 6: unexpected end of input"),
    (b'{"a": 1', "unexpected end of input"),
    (b'{"a":', "unexpected end of input"),
    (b'{"a"', "unexpected end of input"),
    (b"{", "unexpected end of input"),
    (b"[", "unexpected end of input"),
    (b"", "line 1 column 1: unexpected end of input"),
    (b" \n\t ", "line 2 column 3: unexpected end of input"),
    (b"{}}", "line 1 column 3: unexpected data after the value"),
    (b"{} x", "line 1 column 4: unexpected data after the value"),
    (b"1 2", "line 1 column 3: unexpected data after the value"),
    (b"truefalse", "line 1 column 5: unexpected data after the value"),
    (b"[" * 17 + b"]" * 17, "line 1 column 17: nesting deeper than 16 levels"),
    (b'{"a":' * 17 + b"1" + b"}" * 17, "nesting deeper than 16 levels"),
    (b"[" * 100000, "nesting deeper than 16 levels"),
    # whitespace other than the four, and bytes that are not UTF-8
    (b"\x0c{}", "line 1 column 1: unexpected character U+000C"),
    (b"[\x0b]", "line 1 column 2: unexpected character U+000B"),
    (b"{\x0b}", "line 1 column 2: expected a string key"),
    (b"\xc2\xa0{}", "line 1 column 1: unexpected character U+00A0"),
    (b"\xef\xbb\xbf{}", "line 1 column 1: unexpected character U+FEFF"),  # BOM
    (b"\xe2\x80\x9cport\xe2\x80\x9d", "unexpected character U+201C"),  # smart quotes
    (b"\xff", "line 1 column 1: unexpected byte 0xff"),
    (b'"\xed\xa0\x80"', "line 1 column 2: invalid UTF-8"),  # a raw surrogate
    (b'"\xc0\xaf"', "invalid UTF-8"),  # overlong '/'
    (b'"\xe0\x80\xaf"', "invalid UTF-8"),  # overlong
    (b'"\xf0\x82\x82\xac"', "invalid UTF-8"),  # overlong
    (b'"\xf4\x90\x80\x80"', "invalid UTF-8"),  # past U+10FFFF
    (b'"\xf5\x80\x80\x80"', "invalid UTF-8"),
    (b'"\x80"', "invalid UTF-8"),  # a lone continuation byte
    (b'"\xc3"', "invalid UTF-8"),  # cut short
    (b'"\xe2\x82"', "invalid UTF-8"),
    (b'"\xc3("', "invalid UTF-8"),
    # columns count characters, not bytes
    (b'["\xc3\xa9\xe2\x82\xac", x]', "line 1 column 8: unexpected character 'x'"),
]


def test_invalid_corpus():
    for doc, want in INVALID:
        msg = _err(doc)
        assert msg is not None, doc
        assert want in msg, (doc, msg, want)
        assert msg.startswith("line "), (doc, msg)


def test_errors_are_value_errors_only():
    # Truncations and one-byte damage of a config document must raise
    # ValueError (never IndexError, TypeError, ...) or parse.
    doc = b'{"port": 1883, "s": "a\\u00e9\\ud83d\\ude00", "l": [1.5e3, -0, true, null]}'
    for n in range(len(doc)):
        assert _err(doc[:n]) is not None, doc[:n]
        for b in (0x00, 0x22, 0x2C, 0x5C, 0x5D, 0x7D, 0x80, 0xFF):
            _err(doc[:n] + bytes((b,)) + doc[n + 1:])
