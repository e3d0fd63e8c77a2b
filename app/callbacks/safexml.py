"""Hardened XML parsing for callback envelopes and decrypted messages.

defusedxml refuses entity declarations (billion laughs, quadratic blow-up) and external
entities; forbid_dtd refuses any DOCTYPE at all, since WeCom never sends one.
"""

from typing import TypeAlias
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree
from defusedxml import DefusedXmlException

XmlValue: TypeAlias = str | dict[str, "XmlValue"] | list["XmlValue"]


class XmlRejected(Exception):
    """Not well-formed XML (`invalid`) or XML using forbidden features (`forbidden`)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def parse(data: bytes | str) -> Element:
    try:
        return defusedxml.ElementTree.fromstring(data, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise XmlRejected("forbidden", f"forbidden XML construct: {type(exc).__name__}") from None
    except ParseError as exc:
        raise XmlRejected("invalid", f"not well-formed XML: {exc}") from None


def to_dict(root: Element) -> dict[str, XmlValue]:
    """Children of the root as a dict. Text is stripped (payloads put newlines around CDATA);
    a repeated tag becomes a list (MemChangeList/Item); every leaf stays a string, because
    WeCom ids that look numeric are not always numbers (MsgId, AgentID, tag Id)."""
    value = _value(root)
    return value if isinstance(value, dict) else {}


def _value(element: Element) -> XmlValue:
    children = list(element)
    if not children:
        return (element.text or "").strip()
    result: dict[str, XmlValue] = {}
    for child in children:
        value = _value(child)
        if child.tag not in result:
            result[child.tag] = value
            continue
        existing = result[child.tag]
        if isinstance(existing, list):
            existing.append(value)
        else:
            result[child.tag] = [existing, value]
    return result
