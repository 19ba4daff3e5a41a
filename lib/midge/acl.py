# Access control lists in mosquitto's acl_file format: the broker's one
# authorisation point.
#
# File format, one rule a line; blank lines and lines whose first non-blank
# character is '#' are ignored, each line is stripped of leading and
# trailing whitespace:
#
#   user <username>                   the topic lines after it, up to the
#                                     next user line, apply to this user
#   topic [ACCESS] <filter>           a rule for the current user; before
#                                     the first user line: anonymous clients
#                                     (no username) only, as in mosquitto
#   pattern [ACCESS] <filter>         a rule for every client: %u becomes
#                                     the username, %c the client id
#
# ACCESS is read, write, readwrite or deny; without it (a line of just the
# keyword and one word) the rule is readwrite. Everything after the access
# word is the filter, spaces included. As in mosquitto, a line with more
# than one word after the keyword must start with an access word. Unlike
# mosquitto, "topic read" (an access word alone) is refused as a forgotten
# filter rather than taken as readwrite on a topic named "read"; write
# "topic readwrite read" for that. Keywords and access words are
# case-sensitive.
#
# Decisions: with an ACL in force, anything not granted is refused (default
# deny); a deny rule that applies wins over every grant. Matching is MQTT's:
# '+' one level, '#' the rest including the parent ('a/#' matches 'a'), and
# a filter whose first level is a wildcard does not match a topic whose
# first level starts with '$' [MQTT-4.7.2-1]; so 'topic read #' gives no
# $SYS topic, only a rule that names '$...' in its first level does.
#
# Patterns: one that uses %u does not apply to an anonymous client; one
# whose substituted value is empty or contains '/', '+' or '#' does not
# apply (the value could otherwise leave its level or widen the filter, as
# mosquitto refuses too); one whose substitution makes the first level start
# with '$' when the pattern's own text did not does not apply (a client id
# "$SYS" must not turn "%c/#" into "$SYS/#").
#
# Cost: rules are split into level tuples once (parse_acl, for_client);
# can_write/can_read split the topic once (or take the caller's levels) and
# allocate nothing else; can_subscribe runs only on SUBSCRIBE. No regular
# expressions.
from .compat import const, read_capped
from .errors import ConfigError
from . import topics

# Access bits of one rule.
_READ = const(1)
_WRITE = const(2)
_DENY = const(4)

# Pattern flags: which substitutions its text uses.
_USES_U = const(1)
_USES_C = const(2)

# An ACL file is a few KB; load_acl refuses one past this size, read in
# chunks (compat.read_capped) so it never holds more than about twice the file.
_MAX_FILE_BYTES = const(16384)

# ClientAcl objects cached per username (only when no pattern uses %c). The
# broker's authentication bounds the usernames; this cap bounds them when it
# does not (anonymous brokers let clients pick any name): past it the cache
# is emptied, which costs only sharing, never correctness.
_MAX_CACHED_USERS = const(64)


def _access(word):
    """Access bits of an access word, 0 if it is not one."""
    if word == "read":
        return _READ
    if word == "write":
        return _WRITE
    if word == "readwrite":
        return _READ | _WRITE
    if word == "deny":
        return _DENY
    return 0


def _err(name, lineno, what):
    return ConfigError("acl file %s line %d: %s" % (name, lineno, what))


def parse_acl(lines, name):
    """An Acl from the lines of an acl_file. lines: an iterable of str (or
    bytes, decoded as UTF-8); name: the file name the error messages use.
    Raises ConfigError "acl file NAME line N: ..." on the first bad line:
    unknown keyword, user without a name, topic/pattern without a filter,
    a bad access word, an invalid filter, bytes that are not UTF-8."""
    acl = Acl()
    rules = acl._anon  # where topic lines go: anonymous until a user line
    lineno = 0
    for line in lines:
        lineno += 1
        if not isinstance(line, str):
            try:
                line = bytes(line).decode()
            except UnicodeError:
                raise _err(name, lineno, "not valid UTF-8")
        line = line.strip()
        if not line or line[0] == "#":
            continue
        parts = line.split(None, 1)
        keyword = parts[0]
        rest = parts[1] if len(parts) > 1 else ""  # stripped both ends
        if keyword == "user":
            if not rest:
                raise _err(name, lineno, "user without a name")
            rules = acl._users.get(rest)
            if rules is None:  # a user named twice: one list of rules
                rules = acl._users[rest] = []
            continue
        if keyword != "topic" and keyword != "pattern":
            raise _err(name, lineno, "unknown keyword %r (topic, user or pattern)" % keyword)
        if not rest:
            raise _err(name, lineno, "%s without a topic filter" % keyword)
        words = rest.split(None, 1)
        access = _access(words[0])
        if len(words) == 1:
            if access:
                # mosquitto would take "topic read" as readwrite on the topic
                # "read"; that is almost surely a forgotten filter
                raise _err(name, lineno, "%s %s without a topic filter (write 'readwrite %s' for a topic of that name)"
                           % (keyword, words[0], words[0]))
            access = _READ | _WRITE
            filt = rest
        else:
            if not access:
                raise _err(name, lineno, "bad access word %r (read, write, readwrite or deny)" % words[0])
            filt = words[1]
        levels = topics.filter_levels(filt)
        if levels is None:
            raise _err(name, lineno, "invalid topic filter %r" % filt)
        if keyword == "topic":
            rules.append((access, tuple(levels)))
            continue
        flags = 0
        if "%u" in filt:
            flags |= _USES_U
        if "%c" in filt:
            flags |= _USES_C
            acl._uses_c = True
        # a pattern without substitutions is split here, once for everyone
        acl._patterns.append((access, flags, filt, None if flags else tuple(levels)))
    return acl


def load_acl(path):
    """parse_acl over the file at path. Raises ConfigError naming the file
    when it cannot be read, holds more than _MAX_FILE_BYTES, or has a bad
    line (then with its number)."""
    try:
        data = read_capped(path, _MAX_FILE_BYTES)
    except OSError as e:
        raise ConfigError("cannot read acl file %s: %s" % (path, e))
    if data is None:
        raise ConfigError("acl file %s is larger than %d bytes" % (path, _MAX_FILE_BYTES))
    return parse_acl(_byte_lines(data), path)


def _byte_lines(data):
    """The lines of data (bytes) one at a time, without their b"\\n"; the
    whole list of lines is never built."""
    start = 0
    while True:
        end = data.find(b"\n", start)
        if end < 0:
            yield data[start:]
            return
        yield data[start:end]
        start = end + 1


def _substitute(text, username, client_id):
    """text with %u -> username and %c -> client_id in one pass (a username
    holding "%c" stays as it is); other '%' sequences are kept."""
    out = []
    i = 0
    while True:
        j = text.find("%", i)
        if j < 0 or j + 1 >= len(text):
            out.append(text[i:])
            return "".join(out)
        c = text[j + 1]
        if c == "u":
            value = username
        elif c == "c":
            value = client_id
        else:
            out.append(text[i:j + 1])
            i = j + 1
            continue
        out.append(text[i:j])
        out.append(value)
        i = j + 2


def _value_ok(value):
    """May value replace %u/%c? Not None (anonymous), not empty, and none
    of '/', '+', '#' (it would leave its level or become a wildcard)."""
    return bool(value) and "/" not in value and "+" not in value and "#" not in value


class Acl:
    """The rules of one ACL file. Read-only after parse_acl, except for the
    cache of ClientAcl objects that for_client keeps."""

    def __init__(self):
        self._anon = []      # (access, levels): topic lines before any user line
        self._users = {}     # username -> [(access, levels)]
        self._patterns = []  # (access, flags, text, levels or None if substituted)
        self._uses_c = False  # some pattern uses %c: no sharing between sessions
        self._cache = {}     # username (None: anonymous) -> ClientAcl

    def for_client(self, username, client_id):
        """The ClientAcl of one client (username None: anonymous), with %u
        and %c substituted. Sessions of one user get the same object while
        no pattern uses %c; the caller must not change it."""
        if not self._uses_c:
            cached = self._cache.get(username)
            if cached is not None:
                return cached
        read = []
        write = []
        deny = []
        rules = self._anon if username is None else self._users.get(username, ())
        for access, levels in rules:
            _add(access, levels, read, write, deny)
        for access, flags, text, levels in self._patterns:
            if levels is None:
                if flags & _USES_U and not _value_ok(username):
                    continue
                if flags & _USES_C and not _value_ok(client_id):
                    continue
                filt = _substitute(text, username, client_id)
                if filt[0] == "$" and text[0] != "$":
                    continue  # a '$' value must not reach $SYS [MQTT-4.7.2-1]
                levels = tuple(filt.split("/"))
            _add(access, levels, read, write, deny)
        client = ClientAcl(tuple(read), tuple(write), tuple(deny))
        if not self._uses_c:
            if len(self._cache) >= _MAX_CACHED_USERS:
                self._cache.clear()
            self._cache[username] = client
        return client


def _add(access, levels, read, write, deny):
    if access & _DENY:
        deny.append(levels)
    if access & _READ:
        read.append(levels)
    if access & _WRITE:
        write.append(levels)


class ClientAcl:
    """The rules that apply to one client, as tuples of filter levels.
    Immutable; shared by the sessions of one user."""

    def __init__(self, read, write, deny):
        self._read = read
        self._write = write
        self._deny = deny

    def can_write(self, topic, levels=None):
        """May the client PUBLISH to topic (a valid topic name)? levels:
        topic already split by the caller, if it has it."""
        if not self._write:
            return False
        return _allowed(levels or topic.split("/"), self._write, self._deny)

    def can_read(self, topic, levels=None):
        """May a message on topic (a topic name) be delivered to the
        client? levels as for can_write."""
        if not self._read:
            return False
        return _allowed(levels or topic.split("/"), self._read, self._deny)

    def can_subscribe(self, filt):
        """May the client SUBSCRIBE to filt (the inner filter of a $share
        subscription)? True only if every topic filt can match is readable:
        filt is a subset of one read rule and overlaps no deny rule. So the
        messages a granted subscription receives need no check of their
        own. Conservative: a filter covered only by several read rules
        together is refused. A malformed filter is refused."""
        if not self._read:
            return False
        levels = topics.filter_levels(filt)
        if levels is None:
            return False
        for rule in self._read:
            if _covers(rule, levels):
                break
        else:
            return False
        for rule in self._deny:
            if _overlaps(rule, levels):
                return False
        return True


def _allowed(levels, grants, denies):
    """Some grant matches the topic levels and no deny rule does."""
    for rule in grants:
        if _matches(rule, levels):
            break
    else:
        return False
    for rule in denies:
        if _matches(rule, levels):
            return False
    return True


def _matches(rule, levels):
    """Does the filter rule (levels) match the topic name levels?"""
    first = rule[0]
    if (first == "+" or first == "#") and levels[0].startswith("$"):
        return False  # [MQTT-4.7.2-1]
    n = len(levels)
    i = 0
    for r in rule:
        if r == "#":
            return True  # the rest, the parent included [MQTT-4.7.1-2]
        if i == n:
            return False
        if r != "+" and r != levels[i]:
            return False
        i += 1
    return i == n


def _covers(rule, filt):
    """Is every topic the filter filt (levels) matches also matched by the
    filter rule (levels)?"""
    m = len(filt)
    i = 0
    for r in rule:
        if r == "#":
            if i == 0 and filt[0] != "+" and filt[0] != "#" and filt[0].startswith("$"):
                return False  # '#' never matches '$' topics [MQTT-4.7.2-1]
            return True
        if i == m:
            return False  # rule needs more levels than filt's topics have
        f = filt[i]
        if f == "#":
            # filt: every depth from here, and the parent when i > 0; only
            # '#' covers that, or at the first level '+/#' (no parent there)
            return i == 0 and r == "+" and len(rule) == 2 and rule[1] == "#"
        if r == "+":
            if i == 0 and f != "+" and f.startswith("$"):
                return False  # [MQTT-4.7.2-1]
        elif r != f:
            return False  # a different name, or filt's '+' under a name
        i += 1
    return i == m


def _overlaps(rule, filt):
    """Is there a topic name that both filters (levels) match?"""
    n = len(rule)
    m = len(filt)
    i = 0
    while True:
        if i == n:
            return i == m or filt[i] == "#"
        if i == m:
            return rule[i] == "#"
        r = rule[i]
        f = filt[i]
        r_wild = r == "+" or r == "#"
        f_wild = f == "+" or f == "#"
        if i == 0:
            # a wildcard first level matches no '$' name [MQTT-4.7.2-1]
            if r_wild and not f_wild and f.startswith("$"):
                return False
            if f_wild and not r_wild and r.startswith("$"):
                return False
        if r == "#" or f == "#":
            return True
        if not r_wild and not f_wild and r != f:
            return False
        i += 1
