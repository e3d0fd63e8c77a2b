"""Hardened, fast XML parsing for callback envelopes and decrypted messages.

The rule is defusedxml's: no DOCTYPE. Without a document type declaration no entity can be
declared, so billion laughs, quadratic blow-up and external entities (XXE) are all refused
before any expansion happens. We apply it to the C expat parser directly instead of using
defusedxml.ElementTree, because that module is built on the pure-Python ElementTree parser
and parsing twice per callback that way cost ~15% of ingest throughput (bench/ingest.py;
docs/adr/0004-expat-without-doctype.md). The hostile-input tests in
tests/test_callback_rejections.py hold this module to defusedxml's behaviour.

The envelope is parsed before its signature can be checked, so anyone can make us parse one.
`parse_envelope` therefore reads only what WeCom sends (a root holding ToUserName, AgentID and
Encrypt) and stops at the end of Encrypt: a deep or wide envelope is refused at its third
level or its ninth element, and nothing after Encrypt is parsed at all. Attributes are
refused before expat sees them, by counting `=` (the base64 padding and an XML declaration
have a handful): expat reads a start tag whole before any handler can stop it, and 64 KiB of
attributes cost 1.6 ms, 70 real callbacks; the count costs microseconds, a regex for
attributes up to a millisecond on a body of `<a>`.

Both parsers first try the shape WeCom actually sends (`_FLAT`, `_ENVELOPE`): a document of
that shape, in the characters those patterns allow, is well-formed, has no DOCTYPE, and its
result can be read off with a regex scan instead of a parser that calls Python three times
an element. Anything else, however close, goes to expat, so what is refused and why does not
change; tests/test_safexml.py holds both ways to the same result (ADR 0008, sixth round).
"""

import re
from typing import Protocol, TypeAlias
from xml.parsers import expat

XmlValue: TypeAlias = str | dict[str, "XmlValue"] | list["XmlValue"]


class XmlRejected(Exception):
    """Not well-formed XML (`invalid`) or XML using forbidden features (`forbidden`)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Forbidden(Exception):
    pass


def _forbid_doctype(name: str, *args: object) -> None:
    raise _Forbidden(f"DOCTYPE {name!r}: DTDs and entities are not accepted")


class _Builder:
    """Collects elements into nested dicts: text is stripped (payloads put newlines around
    CDATA); a repeated tag becomes a list (MemChangeList/Item); every leaf stays a string,
    because WeCom ids that look numeric are not always numbers (MsgId, AgentID, tag Id)."""

    def __init__(self) -> None:
        self.stack: list[tuple[str, dict[str, XmlValue], list[str]]] = []
        self.root: dict[str, XmlValue] = {}

    def start(self, tag: str, attributes: dict[str, str]) -> None:
        self.stack.append((tag, {}, []))

    def data(self, text: str) -> None:
        self.stack[-1][2].append(text)

    def end(self, tag: str) -> None:
        _, children, text = self.stack.pop()
        value: XmlValue = children if children else "".join(text).strip()
        if not self.stack:
            self.root = children
            return
        _add(self.stack[-1][1], tag, value)


def _add(siblings: dict[str, XmlValue], tag: str, value: XmlValue) -> None:
    """A repeated tag becomes a list, in document order."""
    if tag not in siblings:
        siblings[tag] = value
    elif isinstance(existing := siblings[tag], list):
        existing.append(value)
    else:
        siblings[tag] = [existing, value]


class _Handlers(Protocol):
    def start(self, tag: str, attributes: dict[str, str]) -> None: ...
    def end(self, tag: str) -> None: ...
    def data(self, text: str) -> None: ...


def _parse_with(data: bytes | str, handlers: _Handlers) -> None:
    """Run expat over data with these handlers, no DOCTYPE, errors as XmlRejected."""
    # UTF-8 whatever the document declares: WeCom sends nothing else, and a declared
    # encoding="UTF-16" (ValueError) or an unknown one (LookupError) must not become a 500.
    parser = expat.ParserCreate("UTF-8")
    parser.StartDoctypeDeclHandler = _forbid_doctype
    parser.StartElementHandler = handlers.start
    parser.EndElementHandler = handlers.end
    parser.CharacterDataHandler = handlers.data
    parser.buffer_text = True
    try:
        parser.Parse(data, True)
    except _Forbidden as exc:
        raise XmlRejected("forbidden", f"forbidden XML construct: {exc}") from None
    except expat.ExpatError as exc:
        raise XmlRejected("invalid", f"not well-formed XML: {exc}") from None


# Characters the flat shape leaves to expat: those XML forbids or expat rewrites (\r, which
# it turns into \n), surrogates (which a str may hold and UTF-8 cannot), and `]`, so that
# neither `]]>` in text nor the end of a CDATA section needs a second look.
_NOT_FLAT = r"\]\x00-\x08\x0b\x0c\x0e-\x1f\r\ud800-\udfff\ufffe\uffff"
# One element holding one CDATA section, or text without markup or references. Every repeat
# is possessive (`*+`): nothing it took can be part of what follows, so giving it back one
# character at a time could never make a match, only make a long document that fails slow.
_ELEMENT = (
    rf"<([A-Za-z_][A-Za-z0-9_]*+)>"
    rf"(?:<!\[CDATA\[([^{_NOT_FLAT}]*+)\]\]>|([^<&{_NOT_FLAT}]*+))</\1>"
)
_FLAT = re.compile(rf"<xml>(?:[ \t\n]*+{_ELEMENT})*+[ \t\n]*+</xml>[ \t\n]*+")
_ELEMENTS = re.compile(_ELEMENT)


def _flat(text: str) -> dict[str, XmlValue] | None:
    """The mapping of a flat message (every WeCom message but the few with nested lists), or
    None for expat to parse. The same rules as _Builder: stripped text, a repeated tag a list."""
    if _FLAT.fullmatch(text) is None:
        return None
    fields: dict[str, XmlValue] = {}
    for tag, cdata, plain in _ELEMENTS.findall(text, len("<xml>"), text.rindex("</xml>")):
        _add(fields, tag, (cdata or plain).strip())  # one of the two is always empty
    return fields


def parse(data: bytes | str) -> dict[str, XmlValue]:
    """The children of the root element as a dict (the root's name is not checked)."""
    if isinstance(data, str) and (fields := _flat(data)) is not None:
        return fields
    return _parse_expat(data)


def _parse_expat(data: bytes | str) -> dict[str, XmlValue]:
    builder = _Builder()
    _parse_with(data, builder)
    return builder.root


# WeCom's envelope has three children; a few more leave room for what it may add one day.
ENVELOPE_MAX_ELEMENTS = 8
# Base64 padding (2) and `<?xml version="1.0" encoding="UTF-8" standalone="yes"?>` (3).
ENVELOPE_MAX_EQUALS = 5


# WeCom's envelope up to the end of Encrypt, which is all parse_envelope reads: the root, at
# most six ToUserName or AgentID elements of ids, then Encrypt holding Base64. Possessive
# repeats, as in _FLAT: this runs before the signature is checked, and a body of 64 KiB of
# spaces or digits that fails at its end must fail in one pass (0.07 ms), not in one retry
# per character given back (1.7 ms, ten real callbacks' worth).
_ENVELOPE = re.compile(
    rb"<xml>[ \t\r\n]*+"
    rb"(?:<(ToUserName|AgentID)>(?:<!\[CDATA\[[\w.@-]*+\]\]>|[\w.@-]*+)</\1>[ \t\r\n]*+){0,6}+"
    rb"<Encrypt>(?:<!\[CDATA\[([A-Za-z0-9+/=]*+)\]\]>|([A-Za-z0-9+/=]*+))</Encrypt>"
)


class _EncryptRead(Exception):
    """Raised from a handler to stop expat: what comes after Encrypt is never needed."""


class _EnvelopeReader:
    """Keeps the text of <Encrypt> (a child of the root) and refuses any other shape."""

    def __init__(self) -> None:
        self.depth = 0
        self.elements = 0
        self.in_encrypt = False
        self.encrypt: list[str] = []

    def start(self, tag: str, attributes: dict[str, str]) -> None:
        self.depth += 1
        self.elements += 1
        if self.depth > 2:
            raise XmlRejected("invalid", "envelope nests deeper than WeCom's")
        if self.elements > ENVELOPE_MAX_ELEMENTS:
            raise XmlRejected("invalid", "envelope has more elements than WeCom's")
        self.in_encrypt = self.depth == 2 and tag == "Encrypt"

    def data(self, text: str) -> None:
        if self.in_encrypt:
            self.encrypt.append(text)

    def end(self, tag: str) -> None:
        if self.in_encrypt:
            raise _EncryptRead
        self.depth -= 1


def parse_envelope(data: bytes) -> str | None:
    """The stripped text of the envelope's Encrypt element, None if it has none (the root's
    name is not checked, as in `parse`)."""
    if data.count(b"=") > ENVELOPE_MAX_EQUALS:
        raise XmlRejected("invalid", "envelope has attributes; WeCom's has none")
    if found := _ENVELOPE.match(data):
        cdata, plain = found.group(2, 3)
        return (plain if cdata is None else cdata).decode("ascii")
    return _read_envelope(data)


def _read_envelope(data: bytes) -> str | None:
    reader = _EnvelopeReader()
    try:
        _parse_with(data, reader)
    except _EncryptRead:
        return "".join(reader.encrypt).strip()
    return None
