"""app.callbacks.safexml against defusedxml, the reference it replaces on the hot path."""

import defusedxml.ElementTree
import pytest
from defusedxml import DefusedXmlException
from hypothesis import given
from hypothesis import strategies as st

from app.callbacks import safexml
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
