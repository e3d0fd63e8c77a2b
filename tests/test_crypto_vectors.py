"""Every published vector of PROTOCOL.md §3, reproduced byte for byte."""

import pytest

from app.crypto import SignatureError, WXBizMsgCrypt, decode_aes_key, sign

V1 = WXBizMsgCrypt(
    token="hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo",
    encoding_aes_key="6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt",
    receive_id="ww1436e0e65a779aee",
)
V2 = WXBizMsgCrypt(
    token="QDG6eK",
    encoding_aes_key="jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
    receive_id="wx5823bf96d3bd56c7",
)
V3 = WXBizMsgCrypt(
    token="123456",
    encoding_aes_key="kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR",
    receive_id="wx49f0ab532d5d035a",
)
V4 = WXBizMsgCrypt(
    token="pamtest",
    encoding_aes_key="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
    receive_id="wxb11529c136998cb6",
)

V1_ENCRYPT = (
    "Kl7kjoSf6DMD1zh7rtrHjFaDapSCkaOnwu3bqLc5tAybhhMl9pFeK8NslNPVdMwmBQTNoW4mY7AIjeLvEl3NyeTkAgGz"
    "BhzTtRLNshw2AEew+kkYcD+Fq72Kt00fT0WnN87hGrW8SqGc+NcT3mu87Ha3dz1pSDi6GaUA6A0sqfde0VJPQbZ9U+3J"
    "WcoD4Z5jaU0y9GSh010wsHF8KZD24YhmZH4ch4Ka7ilEbjbfvhKkNL65HHL0J6EYJIZUC2pFrdkJ7MhmEbU2qARR4iQH"
    "E7wy24qy0cRX3Mfp6iELcDNfSsPGjUQVDGxQDCWjayJOpcwocugux082f49HKYg84EpHSGXAyh+/oxwaWbvL6aSDPOYu"
    "PDGOCI8jmnKiypE+"
)
V2_ENCRYPT = (
    "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUp"
    "j911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06"
    "DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH"
    "03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6B"
    "pNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E"
    "7Q=="
)
V3_DECRYPT = (
    "RgqEoJj5A4EMYlLvWO1F86ioRjZfaex/gePD0gOXTxpsq5Yj4GNglrBb8I2BAJVODGajiFnXBu7mCPatfjsu6IHCrsTy"
    "eDXzF6Bv283dGymzxh6ydJRvZsryDyZbLTE7rhnus50qGPMfp2wASFlzEgMW9z1ef/RD8XzaFYgm7iTdaXpXaG4+BiYyol"
    "Bug/gYNx410cvkKR2/nPwBiT+P4hIiOAQqGp/TywZBtDh1yCF2KOd0gpiMZ5jSw3e29mTvmUHzkVQiMS6td7vXUaWOMZnY"
    "ZlF3So2SjHnwh4jYFxdgpkHHqIrH/54SNdshoQgWYEvccTKe7FS709/5t6NMxuGhcUGAPOQipvWTT4dShyqio7mlsl5noT"
    "rb++x6En749zCpQVhDpbV6GDnTbcX2e8K9QaNWHp91eBdCRxthuL0="
)
V3_PLAINTEXT = (
    "<xml>\n"
    "<MsgType><![CDATA[text]]></MsgType>\n"
    "<Content><![CDATA[test]]></Content>\n"
    "<FromUserName><![CDATA[wx49f0ab532d5d035a]]></FromUserName>\n"
    "<ToUserName><![CDATA[messense]]></ToUserName>\n"
    "<AgentID>1</AgentID>\n"
    "<CreateTime>1411525903</CreateTime>\n"
    "</xml>"
)
V3_ENCRYPTED = (
    "9s4gMv99m88kKTh/H8IdkOiMg6bisoy3ypwy9H4hvSPe9nsGaqyw5hhSjdYbcrKk+j3nba4HMOTzHrluLBYqxgNcBqGs"
    "L8GqxlhZgURnAtObvesEl5nZ+uBE8bviY0LWke8Zy9V/QYKxNV2FqllNXcfmstttyIkMKCCmVbCFM2JTF5wY0nFhHZSjPU"
    "L2Q1qvSUCUld+/WIXrx0oyKQmpB6o8NRrrNrsDf03oxI1p9FxUgMnwKKZeOA/uu+2IEvEBtb7muXsVbwbgX05UPPJvFurD"
    "XafG0RQyPR+mf1nDnAtQmmNOuiR5MIkdQ39xn1vWwi1O5oazPoQJz0nTYjxxEE8kv3kFxtAGVRe3ypD3WeK2XeFYFMNMpa"
    "tF9XiKzHo3"
)
V5_ENCRYPT = (
    "rTNFcsut4LfGuAFKEUVVpwcaCOTJzOd9twZdIW910jb3k+iicx2uvhttIZ3Qg9Qgty3BEF2xbOrz6boTfb30dMomcgrk"
    "TqdFPwnhqbk+kIQ7rZiwny9D7NUrTgA5kpX3KsZvrXzUZyP2x9YOlxbgm572lmxKvM7HAQQhIQ/p6HBmoY30bGXFK0Bt"
    "Iu1pW9TjhOYrLQoU18nWYjWqDA1ynkmOytpv7QRI1P1+0NoxL0q2zO1DgeSvnE8CZGo/o5Ap/WHK5W2RAsinpzN4/LjP"
    "nmB6U01I5XCoJoC0GK/yMZycd2Oh8Nq6+wBkC1U85oy0ktOY4nLvsQMLrourmMGdZHuTbqpeJ8Ao/5PRYJ+WBvRUwPfG"
    "KBL2+2IKZF49vAJqkcGWSHGE76ZN2erXeuNazf/o9o3lIE3q739o4c8t9QGPe31GT2Go/rOz1BsrASwvauNulCh+++yz"
    "+CQzBIuikA=="
)
V6_ENCRYPT = (
    "yzY09xkWVovVOxPTwSYfIFVRO92WzZiKxWXGZLeoAMYPqh1DLdt3Ph3vASJHpLZ3DZF8laEEx1A1ySJGogWBOKZn9QFq"
    "ANkFj4GnWX2qheHLuCyCvHtHp/Jx6qnqQTRL0RpRvBa2OPCuMufQYEFi0UX4RpXsxS2oQnOCcnob3PJxIOFIs5kc4hxg"
    "RpbiAjy3f54tbwyJzzO2qq4ZpzpxOsmFUsJhuWROhK+ltW8VvSrVjhfeFZmcF3WLzk8ShSXowuQeF69kP80gZAbpdT/N"
    "FkeuP7L45+o5z/g5D+0xbalxWctGr5yM1C6p8ILJGDRUP2JdoKd3n+PBSKSQJBz98sgRJgjDZyCbxFa03yq77UbZn3sQ"
    "KpwqFInqorHUvn47YWcQoSsohLiuhdB4m9zVa/sQ0f+cT9umemuQjvT7u6aNr1SAtYCN6kTkTh2gUMxhRfr+iy/kU7NK"
    "8dKQojBRXw=="
)


def test_v1_url_verification() -> None:
    echo = V1.verify_url(
        signature="012bc692d0a58dd4b10f8dfe5c4ac00ae211ebeb",
        timestamp="1476416373",
        nonce="47744683",
        echostr="fsi1xnbH4yQh0+PJxcOdhhK6TDXkjMyhEPA7xB2TGz6b+g7xyAbEkRxN/3cNXW9qdqjnoVzEtpbhnFyq6SVHyA==",
    )
    assert echo == "1288432023552776189"


def test_v1_message_with_pad_22_that_a_16_byte_unpadder_rejects() -> None:
    msg = V1.decrypt_message(
        signature="0c3914025cb4b4d68103f6bfc8db550f79dcf48e",
        timestamp="1476422779",
        nonce="1597212914",
        encrypted=V1_ENCRYPT,
    )
    assert msg.decode() == (
        "<xml><ToUserName>ww1436e0e65a779aee</ToUserName><FromUserName>ChenJiaShun</FromUserName>"
        "<CreateTime>1476422779</CreateTime><MsgType>text</MsgType><Content>你好</Content>"
        "<MsgId>1456453720</MsgId><AgentID>1000002</AgentID></xml>"
    )


def test_v1_json_mode_ciphertext() -> None:
    encrypted = (
        "cjhLUX7UU4yCSelv1vz7T0zT8huF51bAMVWriNvO1FMegHrQZNrtvRxbwf0fUPsFvwqR0U0fgiJNEA5Y30F2MoI2S7vv"
        "3EjVQ68C0cjw9frBoUE2Hj0BvFp9h3u6Vbsg4lc1C8AtHdaN8orKuNKkLRLuYEL52R1J3v8olJGZRLnRdVKIivixmX/eQ"
        "pzgeExtp20jI1HxRP1AAZ6xZoILdqDPO549LO4WeG+685JRUTdiwcY5fjZlqeMxuT4PpMn1X9OWsS7NRj06Wa5E3Tvg4tw"
        "jWp39KPfOdRte6P1T4JU="
    )
    msg = V1.decrypt_message(
        signature="e3647471e395139e2308c1fa963f2d648a00b90e",
        timestamp="1409659813",
        nonce="1372623149",
        encrypted=encrypted,
    )
    assert msg.startswith(b'{ "ToUserName": "wx5823bf96d3bd56c7"')


def test_v2_url_verification() -> None:
    echo = V2.verify_url(
        signature="5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3",
        timestamp="1409659589",
        nonce="263014780",
        echostr="P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==",
    )
    assert echo == "1616140317555161061"


def test_v2_echostr_with_plus_turned_into_space_fails_the_signature() -> None:
    with pytest.raises(SignatureError):
        V2.verify_url(
            signature="5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3",
            timestamp="1409659589",
            nonce="263014780",
            echostr=(
                "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp 4RPcs8TgAE7OaBO "
                "FZXvnaqQ=="
            ),
        )


def test_v2_message_with_pad_30() -> None:
    msg = V2.decrypt_message(
        signature="477715d11cdb4164915debcba66cb864d751f3e6",
        timestamp="1409659813",
        nonce="1372623149",
        encrypted=V2_ENCRYPT,
    )
    assert b"<Content><![CDATA[hello]]></Content>" in msg
    assert b"<MsgId>4561255354251345929</MsgId>" in msg


def test_v3_signature_and_a_nonce_off_by_one() -> None:
    echostr = (
        "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q=="
    )
    echo = V3.verify_url(
        signature="dd6b9c95b495b3f7e2901bfbc76c664930ffdb96",
        timestamp="1411443780",
        nonce="437374425",
        echostr=echostr,
    )
    assert echo == "5927782489442352469"
    with pytest.raises(SignatureError):
        V3.verify_url(
            signature="dd6b9c95b495b3f7e2901bfbc76c664930ffdb96",
            timestamp="1411443780",
            nonce="437374424",
            echostr=echostr,
        )


def test_v3_message_with_pad_1() -> None:
    msg = V3.decrypt_message(
        signature="74d92dfeb87ba7c714f89d98870ae5eb62dff26d",
        timestamp="1411525903",
        nonce="461056294",
        encrypted=V3_DECRYPT,
    )
    assert b"<Content><![CDATA[test]]></Content>" in msg
    assert b"<FromUserName><![CDATA[messense]]></FromUserName>" in msg
    assert b"<MsgId>4363689963896700987</MsgId>" in msg


def test_v3_deterministic_encryption_and_reply_signature() -> None:
    encrypted = V3.encrypt(V3_PLAINTEXT.encode(), random16=b"1234567890123456")
    assert encrypted == V3_ENCRYPTED
    reply = V3.encrypt_reply(
        V3_PLAINTEXT, timestamp="1411525903", nonce="461056294", random16=b"1234567890123456"
    )
    assert f"<Encrypt><![CDATA[{V3_ENCRYPTED}]]></Encrypt>" in reply
    assert (
        "<MsgSignature><![CDATA[407518b7649e86ef23978113f92d27afa9296533]]></MsgSignature>" in reply
    )
    assert "<TimeStamp>1411525903</TimeStamp>" in reply
    assert "<Nonce><![CDATA[461056294]]></Nonce>" in reply


def test_v4_length_prefix_counts_bytes_not_characters() -> None:
    encrypted = V4.encrypt("我是中文abcd123".encode(), random16=b"aaaabbbbccccdddd")
    assert encrypted == (
        "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg=="
    )


def test_v5_easywechat_message() -> None:
    msg = V4.decrypt_message(
        signature="4f3ad57b6989f09f4eb392acce4f9e93942ed890",
        timestamp="1458300676",
        nonce="260774613",
        encrypted=V5_ENCRYPT,
    )
    for fragment in (b"asdasdasd", b"1234567898", b"hello", b"12345"):
        assert fragment in msg


def test_v6_fastwego_menu_event_with_derived_signature() -> None:
    crypt = WXBizMsgCrypt(
        token="Token",
        encoding_aes_key="TfuodSKwmagZ0iCvQU2yfOWvOt8VLU5S5D85PcbOCMs",
        receive_id="ww4ffb2457362fa91a",
    )
    assert (
        sign(token="Token", timestamp="1596792211", nonce="nonce", encrypted=V6_ENCRYPT)
        == "dedffeb72b6715f6b7b4fbee5a0b05776bee3cde"
    )
    msg = crypt.decrypt(V6_ENCRYPT)
    assert msg.endswith(b"<EventKey><![CDATA[https://roadmapedu.com]]></EventKey></xml>")


def test_fastwego_deterministic_encryption_roundtrip() -> None:
    crypt = WXBizMsgCrypt(
        token="t",
        encoding_aes_key="AdiqDDDvUNCeE1ZW5XJmjf9fqNBJpGBs4vL4cHKmHBS",
        receive_id="wx45f133bf6fce646e",
    )
    encrypted = crypt.encrypt(b"<xml>hi</xml>", random16=b"cc9632a98304f81c")
    assert crypt.decrypt(encrypted) == b"<xml>hi</xml>"


def test_v7_rust_crate_and_the_two_lenient_spellings_of_one_key() -> None:
    assert decode_aes_key("kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aQ") == decode_aes_key(
        "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
    )
    crypt = WXBizMsgCrypt(
        token="t", encoding_aes_key="kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aQ", receive_id="rust"
    )
    assert crypt.decrypt("9s4gMv99m88kKTh/H8IdkNiFGeG9pd7vNWl50fGRWXY=") == b"test"
