"""Interoperability with wechatpy 1.8 (`wechatpy.enterprise.crypto`), an independent
implementation: what it encrypts we decrypt, and what we encrypt it decrypts."""

import defusedxml.ElementTree as ET
from hypothesis import given, settings
from hypothesis import strategies as st
from wechatpy.enterprise.crypto import WeChatCrypto

from app.crypto import WXBizMsgCrypt, sign

TOKEN = "hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo"
KEY = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt"
CORP = "ww1436e0e65a779aee"
OURS = WXBizMsgCrypt(token=TOKEN, encoding_aes_key=KEY, receive_id=CORP)
THEIRS = WeChatCrypto(TOKEN, KEY, CORP)
contents = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("你好😀"),
    max_size=300,
).filter(lambda s: "]]>" not in s)


def _message(content: str) -> str:
    return (
        f"<xml><ToUserName><![CDATA[{CORP}]]></ToUserName><FromUserName><![CDATA[zhangsan]]>"
        f"</FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        f"<Content><![CDATA[{content}]]></Content><MsgId>1</MsgId></xml>"
    )


@settings(max_examples=50)
@given(content=contents)
def test_we_decrypt_what_wechatpy_encrypts(content: str) -> None:
    reply = ET.fromstring(THEIRS.encrypt_message(_message(content), "12345", "1700000000"))
    plaintext = OURS.decrypt_message(
        signature=reply.findtext("MsgSignature", ""),
        timestamp=reply.findtext("TimeStamp", ""),
        nonce=reply.findtext("Nonce", ""),
        encrypted=reply.findtext("Encrypt", ""),
    )
    assert plaintext.decode() == _message(content)


@settings(max_examples=50)
@given(content=contents)
def test_wechatpy_decrypts_what_we_encrypt(content: str) -> None:
    encrypted = OURS.encrypt(_message(content).encode())
    signature = sign(token=TOKEN, timestamp="1700000000", nonce="777", encrypted=encrypted)
    envelope = (
        f"<xml><ToUserName>{CORP}</ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
    )
    assert THEIRS.decrypt_message(envelope, signature, "1700000000", "777") == _message(content)


def test_wechatpy_opens_our_passive_reply() -> None:
    reply_xml = _message("收到，谢谢")
    envelope = OURS.encrypt_reply(reply_xml, timestamp="1700000001", nonce="42")
    root = ET.fromstring(envelope)
    assert (
        THEIRS.decrypt_message(envelope, root.findtext("MsgSignature"), "1700000001", "42")
        == reply_xml
    )


def test_url_verification_echo_both_ways() -> None:
    echostr = OURS.encrypt(b"1616140317555161061")
    signature = sign(token=TOKEN, timestamp="1", nonce="2", encrypted=echostr)
    assert THEIRS.check_signature(signature, "1", "2", echostr) == "1616140317555161061"
