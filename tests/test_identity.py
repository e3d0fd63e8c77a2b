"""Event naming and the dedup key, without HTTP or a database."""

from datetime import UTC, datetime

from app.callbacks import safexml
from app.events.identity import identify
from app.simulator.callbacks import add_external_contact, text_message


def _fields(message: str) -> dict[str, safexml.XmlValue]:
    return safexml.parse(message)


def test_message_is_keyed_by_its_opaque_msg_id() -> None:
    fields = _fields(
        text_message(
            corp_id="ww1",
            from_user="u",
            content="hi",
            msg_id="CAIQg/PKxgYY2sC9tpuAgAMg9/zKaw==",
            create_time=1700000000,
        )
    )
    identity = identify(fields)
    assert (identity.family, identity.type) == ("message", "text")
    assert identity.dedup_key == "msg:CAIQg/PKxgYY2sC9tpuAgAMg9/zKaw=="
    assert identity.create_time == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


def test_two_customer_adds_in_the_same_second_are_two_events() -> None:
    """FromUserName+CreateTime (WeCom's advice) would merge these; WxJava lost data that way."""
    first = identify(
        _fields(
            add_external_contact(
                corp_id="ww1", user_id="zhangsan", external_user_id="wmA", create_time=1700000000
            )
        )
    )
    second = identify(
        _fields(
            add_external_contact(
                corp_id="ww1", user_id="zhangsan", external_user_id="wmB", create_time=1700000000
            )
        )
    )
    assert first.dedup_key != second.dedup_key
    assert (first.family, first.type) == ("change_external_contact", "add_external_contact")


def test_the_same_event_with_other_whitespace_and_order_has_the_same_key() -> None:
    a = (
        "<xml><Event>change_external_chat</Event><ChangeType>update</ChangeType>"
        "<ChatId>c1</ChatId><CreateTime>1</CreateTime></xml>"
    )
    b = (
        "<xml>\n <ChatId><![CDATA[c1]]></ChatId>\n <CreateTime>1</CreateTime>"
        "<ChangeType><![CDATA[update]]></ChangeType><Event>change_external_chat</Event></xml>"
    )
    assert identify(_fields(a)).dedup_key == identify(_fields(b)).dedup_key


def test_repeated_items_and_nested_elements() -> None:
    fields = _fields(
        "<xml><MemChangeList><Item>Jack</Item><Item>Rose</Item></MemChangeList>"
        "<ScanCodeInfo><ScanType>qrcode</ScanType></ScanCodeInfo><AgentID><![CDATA[]]></AgentID></xml>"
    )
    assert fields == {
        "MemChangeList": {"Item": ["Jack", "Rose"]},
        "ScanCodeInfo": {"ScanType": "qrcode"},
        "AgentID": "",
    }


def test_names_of_other_families() -> None:
    def kind(message: str) -> str:
        identity = identify(_fields(message))
        return f"{identity.family}/{identity.type}"

    assert kind("<xml><MsgType>event</MsgType><Event>click</Event></xml>") == "event/click"
    assert (
        kind("<xml><MsgType>event</MsgType><Event>kf_msg_or_event</Event><Token>t</Token></xml>")
        == "event/kf_msg_or_event"
    )
    assert (
        kind("<xml><InfoType>suite_ticket</InfoType><TimeStamp>1</TimeStamp></xml>")
        == "info/suite_ticket"
    )
    assert kind("<xml><Whatever>1</Whatever></xml>") == "unknown/unknown"
    assert identify(_fields("<xml><CreateTime>soon</CreateTime></xml>")).create_time is None
