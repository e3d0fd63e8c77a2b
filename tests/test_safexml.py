"""app.callbacks.safexml against defusedxml, the reference it replaces on the hot path."""

import contextlib
import timeit
from collections.abc import Callable

import defusedxml.ElementTree
import pytest
from defusedxml import DefusedXmlException
from hypothesis import given, settings
from hypothesis import strategies as st

from app.callbacks import safexml
from app.crypto import WXBizMsgCrypt
from app.simulator.callbacks import add_external_contact, build_callback, event_xml, text_message
from tests.test_callback_rejections import BILLION_LAUGHS, EXTERNAL_ENTITY, QUADRATIC

HOSTILE = {
    "billion laughs": BILLION_LAUGHS,
    "quadratic blow-up": QUADRATIC,
    "external entity": EXTERNAL_ENTITY,
    "external DTD": '<?xml version="1.0"?><!DOCTYPE x SYSTEM "http://evil/x.dtd"><xml/>',
    "parameter entity": '<!DOCTYPE x [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><xml/>',
    "empty doctype": "<!DOCTYPE xml><xml><A>1</A></xml>",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_refuses_whatever_defusedxml_refuses(name: str) -> None:
    with pytest.raises(DefusedXmlException):
        defusedxml.ElementTree.fromstring(HOSTILE[name], forbid_dtd=True)
    with pytest.raises(safexml.XmlRejected) as raised:
        safexml.parse(HOSTILE[name])
    assert raised.value.kind == "forbidden"


@pytest.mark.parametrize("text", ["", "plain text", "<xml>", "<a></b>", "<xml>\x00</xml>"])
def test_malformed_xml_is_invalid(text: str) -> None:
    with pytest.raises(safexml.XmlRejected) as raised:
        safexml.parse(text)
    assert raised.value.kind == "invalid"


def _reference(text: str) -> dict[str, object]:
    """The same mapping built from defusedxml's tree."""

    def value(element: object) -> object:
        children = list(element)  # type: ignore[call-overload]
        if not children:
            return (element.text or "").strip()  # type: ignore[attr-defined]
        result: dict[str, object] = {}
        for child in children:
            v = value(child)
            if child.tag not in result:
                result[child.tag] = v
            elif isinstance(result[child.tag], list):
                result[child.tag].append(v)  # type: ignore[attr-defined]
            else:
                result[child.tag] = [result[child.tag], v]
        return result

    root = value(defusedxml.ElementTree.fromstring(text))
    return root if isinstance(root, dict) else {}


tags = st.sampled_from(["ToUserName", "Item", "Content", "MsgId", "AgentID"])
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=20).filter(
    lambda s: "]]>" not in s
)


@st.composite
def documents(draw: st.DrawFn, depth: int = 0) -> str:
    parts = []
    for tag in draw(st.lists(tags, max_size=4)):
        if depth < 2 and draw(st.booleans()):
            inner = draw(documents(depth + 1))
        else:
            inner = f"<![CDATA[{draw(texts)}]]>"
        parts.append(f"<{tag}>{inner}</{tag}>")
    return "".join(parts)


@given(body=documents())
def test_same_mapping_as_defusedxml(body: str) -> None:
    text = f"<xml>{body}</xml>"
    assert safexml.parse(text) == _reference(text)


ENVELOPE = "<xml><ToUserName><![CDATA[ww1]]></ToUserName><AgentID><![CDATA[1000002]]></AgentID>"
ENVELOPE_SIZE = 256 * 1024  # the largest body the callback endpoint ever accepted
HOSTILE_ENVELOPES = {
    "deep": b"<a>" * (ENVELOPE_SIZE // 7) + b"</a>" * (ENVELOPE_SIZE // 7),
    "wide": b"<xml>" + b"<a/>" * (ENVELOPE_SIZE // 4 - 3) + b"</xml>",
    "attributes": b"<xml " + b" ".join(b"a%d=''" % i for i in range(ENVELOPE_SIZE // 10)) + b"/>",
    "deep inside Encrypt": b"<xml><Encrypt>" + b"<a>" * (ENVELOPE_SIZE // 7) + b"</Encrypt></xml>",
    # Each runs into the end of the body in the middle of WeCom's shape (_ENVELOPE).
    "spaces": b"<xml>" + b" " * ENVELOPE_SIZE,
    "a long AgentID": b"<xml><AgentID>" + b"1" * ENVELOPE_SIZE,
    "a long Encrypt": b"<xml><Encrypt><![CDATA[" + b"A" * ENVELOPE_SIZE,
}


@pytest.mark.parametrize(
    "body",
    [
        ENVELOPE + "<Encrypt><![CDATA[abc+/=]]></Encrypt></xml>",
        '<?xml version="1.0" encoding="UTF-8"?>\n<xml>\n <Encrypt>\n abc+/= </Encrypt>\n</xml>',
        "<xml><Encrypt>abc+/=</Encrypt><AgentID>1</AgentID></xml>",
    ],
)
def test_envelope_yields_its_encrypt(body: str) -> None:
    assert safexml.parse_envelope(body.encode()) == "abc+/="


def test_envelope_is_not_parsed_past_encrypt() -> None:
    body = ENVELOPE + "<Encrypt>abc</Encrypt><a><b></c>"  # not well-formed after Encrypt
    assert safexml.parse_envelope(body.encode()) == "abc"


def test_envelope_without_encrypt_is_none() -> None:
    assert safexml.parse_envelope((ENVELOPE + "</xml>").encode()) is None


@pytest.mark.parametrize("name", list(HOSTILE))
def test_envelope_refuses_dtds(name: str) -> None:
    with pytest.raises(safexml.XmlRejected) as raised:
        safexml.parse_envelope(HOSTILE[name].encode())
    assert raised.value.kind == "forbidden"


@pytest.mark.parametrize("name", list(HOSTILE_ENVELOPES))
def test_a_hostile_envelope_costs_about_what_a_real_one_costs(name: str) -> None:
    """Parsed before its signature can be checked, so anyone can send one: a deep or wide
    256 KiB envelope cost ~25 ms of CPU against 23 µs for a real callback, and ten a second
    pushed real callbacks' p50 from 14 ms to 3.8 s. Now it is refused within ~0.1 ms."""
    body = HOSTILE_ENVELOPES[name]
    with pytest.raises(safexml.XmlRejected) as raised:
        safexml.parse_envelope(body)
    assert raised.value.kind == "invalid"
    seconds = min(timeit.repeat(lambda: _refused(body), number=10, repeat=3)) / 10
    assert seconds < 0.002  # 10× headroom over the measured ~80 µs on a shared machine


def _refused(body: bytes) -> None:
    with contextlib.suppress(safexml.XmlRejected):
        safexml.parse_envelope(body)


# The short readings (`_flat`, `_ENVELOPE`) must take every document of WeCom's shape and
# give what expat gives, and leave everything else to expat. So each property draws a
# document of WeCom's shape, then inserts, anywhere, one or two of the things that could
# make the two differ: characters XML forbids or expat rewrites (\r), markup or CDATA's end
# in text, entities, comments, a declaration, a DOCTYPE, a BOM, whitespace.
_INSERTS = ["\r", "\r\n", "]", "]]>", "&amp;", "&#43;", "&", "<", ">", "<a>", "</a>", "<a/>"]
_INSERTS += ["\x00", "\x0b", "\x1f", "\x85", "\ufffe", "\ud800", "\ufeff", " ", "\n", "\t"]
_INSERTS += ["<!-- c -->", "<![CDATA[x]]>", '<?xml version="1.0"?>', "<!DOCTYPE x>", "=", "é"]
_SHAPE = settings(max_examples=300)


def _gap(draw: st.DrawFn) -> str:
    return draw(st.sampled_from(["", "", " ", "\n", "\n\t", "\n   "]))


def _text(draw: st.DrawFn, alphabet: str, inserts: list[str]) -> str:
    pieces = st.text(alphabet=alphabet, max_size=4)
    if inserts:
        pieces = st.one_of(pieces, st.sampled_from(inserts))
    return "".join(draw(st.lists(pieces, max_size=3)))


@st.composite
def _wecom_messages(draw: st.DrawFn, inserts: list[str] | None = None) -> str:
    """inserts: also in the elements' text, where most of them matter."""
    parts = ["<xml>"]
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from(["ToUserName", "MsgId", "Content", "_x", "A1"]))
        text = _text(draw, 'ab 你好\n\t>/="\x85\u3000', inserts or [])
        body = f"<![CDATA[{text}]]>" if draw(st.booleans()) else text
        parts += [_gap(draw), f"<{name}>{body}</{name}>"]
    return "".join([*parts, _gap(draw), "</xml>", _gap(draw)])


@st.composite
def _altered(draw: st.DrawFn, shaped: st.SearchStrategy[str]) -> str:
    text = draw(shaped)
    for _ in range(draw(st.integers(1, 2))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(_INSERTS)) + text[at:]
    return text


def _by_expat(text: str) -> object:
    try:
        return safexml._parse_expat(text)
    except safexml.XmlRejected as exc:
        return ("rejected", exc.kind)
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 for expat to read
        return "not UTF-8"


@_SHAPE
@given(text=_wecom_messages())
def test_every_flat_message_takes_the_flat_reading(text: str) -> None:
    flat = safexml._flat(text)
    assert flat is not None
    assert flat == safexml._parse_expat(text)


@_SHAPE
@given(text=_altered(_wecom_messages(_INSERTS)))
def test_the_flat_reading_gives_what_expat_gives_or_leaves_it_to_expat(text: str) -> None:
    flat = safexml._flat(text)
    if flat is not None:
        assert flat == _by_expat(text)


# Every single insertion into a message of WeCom's shape (a CDATA value, a plain one, each
# kind of gap), checked both ways: the properties above draw, this leaves nothing to chance.
_MESSAGE = (
    "<xml>\n\t<ToUserName><![CDATA[ww1]]></ToUserName><CreateTime>1403610513</CreateTime>\n"
    "<Content><![CDATA[a 你好]]></Content> <Empty></Empty></xml>\n"
)


def test_any_one_insertion_into_a_message_reads_the_same_both_ways() -> None:
    taken = 0
    for at in range(len(_MESSAGE) + 1):
        for insert in _INSERTS:
            text = _MESSAGE[:at] + insert + _MESSAGE[at:]
            if (flat := safexml._flat(text)) is not None:
                assert flat == _by_expat(text), text
                taken += 1
    assert taken > 200  # the whitespace and the plain characters inserted in the values


@pytest.mark.parametrize(
    "message",
    [
        text_message(corp_id="ww1", from_user="zhangsan", content="你好 <b> & 再见\n", msg_id="1"),
        add_external_contact(corp_id="ww1", user_id="u", external_user_id="wm1", state="s"),
        event_xml("ww1", "change_external_chat", {"ChatId": "wr1", "ChangeType": "dismiss"}),
        # PROTOCOL.md's sample, as WeCom's documentation prints it: indented with tabs
        "<xml>\n\t<ToUserName><![CDATA[toUser]]></ToUserName>\n\t<CreateTime>1403610513"
        "</CreateTime>\n\t<MsgType><![CDATA[event]]></MsgType>\n\t<State><![CDATA[]]></State>\n"
        "</xml>",
    ],
)
def test_wecoms_flat_messages_take_the_flat_reading(message: str) -> None:
    flat = safexml._flat(message)
    assert flat is not None
    assert flat == safexml._parse_expat(message) == _reference(message)


def test_a_message_with_a_list_is_left_to_expat() -> None:
    message = event_xml("ww1", "change_external_chat", {"MemChangeList": ["a", "b"]})
    assert safexml._flat(message) is None
    assert safexml.parse(message)["MemChangeList"] == {"Item": ["a", "b"]}


@st.composite
def _wecom_envelopes(draw: st.DrawFn, most: int = 6, inserts: list[str] | None = None) -> str:
    """most: ToUserName and AgentID elements before Encrypt (WeCom sends two); inserts: also
    in Encrypt's text."""
    parts = ["<xml>"]
    for _ in range(draw(st.integers(0, most))):
        name = draw(st.sampled_from(["ToUserName", "AgentID"]))
        value = draw(st.sampled_from(["ww1", "", "1000002", "wx_5823.bf@9-6"]))
        body = f"<![CDATA[{value}]]>" if draw(st.booleans()) else value
        parts += [_gap(draw), f"<{name}>{body}</{name}>"]
    encrypt = _text(draw, "AZaz09+/=", inserts or [])
    body = f"<![CDATA[{encrypt}]]>" if draw(st.booleans()) else encrypt
    parts += [_gap(draw), f"<Encrypt>{body}</Encrypt>"]
    return "".join([*parts, draw(st.sampled_from(["</xml>", "", "<a><b></c>"]))])


def _envelope(read: Callable[[bytes], str | None], text: str) -> object:
    try:
        return read(text.encode("utf-8", "surrogatepass"))
    except safexml.XmlRejected as exc:
        return ("rejected", exc.kind)


@_SHAPE
@given(text=_wecom_envelopes())
def test_every_wecom_envelope_takes_the_short_reading(text: str) -> None:
    assert safexml._ENVELOPE.match(text.encode()) is not None
    if text.count("=") <= safexml.ENVELOPE_MAX_EQUALS:
        assert _envelope(safexml.parse_envelope, text) == _envelope(safexml._read_envelope, text)


@_SHAPE
@given(text=_altered(_wecom_envelopes(most=8, inserts=_INSERTS)))
def test_the_short_envelope_reading_gives_what_expat_gives(text: str) -> None:
    if text.count("=") <= safexml.ENVELOPE_MAX_EQUALS:
        by_expat = _envelope(safexml._read_envelope, text)
        assert _envelope(safexml.parse_envelope, text) == by_expat


_CRYPT = WXBizMsgCrypt(token="t", encoding_aes_key="a" * 43, receive_id="ww1")
_ENVELOPES = [
    "<xml>\n <ToUserName><![CDATA[ww1]]></ToUserName><AgentID>1</AgentID>\n"
    "<Encrypt><![CDATA[ab+/]]></Encrypt>\n</xml>",
    "<xml>" + "<AgentID></AgentID>" * 5 + "<ToUserName>ww1</ToUserName><Encrypt>ab+/</Encrypt>",
]


@pytest.mark.parametrize("envelope", _ENVELOPES)
def test_any_one_insertion_into_an_envelope_reads_the_same_both_ways(envelope: str) -> None:
    taken = 0
    for at in range(len(envelope) + 1):
        for insert in [*_INSERTS, "<AgentID>1</AgentID>"]:
            text = envelope[:at] + insert + envelope[at:]
            if text.count("=") > safexml.ENVELOPE_MAX_EQUALS:
                continue
            if safexml._ENVELOPE.match(text.encode("utf-8", "surrogatepass")):
                taken += 1
            by_expat = _envelope(safexml._read_envelope, text)
            assert _envelope(safexml.parse_envelope, text) == by_expat, text
    assert taken > 50


@pytest.mark.parametrize(
    "body",
    [
        build_callback(_CRYPT, "<xml/>").body,
        b"<xml>\n   <ToUserName><![CDATA[toUser]]></ToUserName>\n   <AgentID><![CDATA[toAgentID]]>"
        b"</AgentID>\n   <Encrypt><![CDATA[msg+encrypt/=]]></Encrypt>\n</xml>",  # PROTOCOL.md §1.3
        b"<xml><ToUserName><![CDATA[ww1]]></ToUserName><Encrypt><![CDATA[YQ==]]></Encrypt>"
        b"<AgentID><![CDATA[218]]></AgentID></xml>",
    ],
)
def test_wecoms_envelopes_take_the_short_reading(body: bytes) -> None:
    assert safexml._ENVELOPE.match(body) is not None
    assert safexml.parse_envelope(body) == safexml._read_envelope(body)
