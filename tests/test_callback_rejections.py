"""DESIGN invariant 4: bad input gets a clear 4xx, a log line and a counter, never a 500,
and nothing is stored. One case per way a callback can be wrong."""

import base64
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import httpx
import pytest
from Crypto.Cipher import AES
from prometheus_client import REGISTRY

from app.crypto import decode_aes_key, sign
from app.simulator.callbacks import build_callback, build_url_verification, text_message
from tests.conftest import RegisteredApp

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<xml><Encrypt>&lol4;</Encrypt><Content>&lol4;</Content></xml>"""
QUADRATIC = (
    '<?xml version="1.0"?><!DOCTYPE q [<!ENTITY a "'
    + "a" * 5000
    + '">]><xml><Encrypt>'
    + "&a;" * 5000
    + "</Encrypt></xml>"
)
EXTERNAL_ENTITY = (
    '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    "<xml><Encrypt>&xxe;</Encrypt></xml>"
)


def _signed(app: RegisteredApp, encrypted: str, *, timestamp: int | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "msg_signature": sign(token=app.token, timestamp=ts, nonce="1", encrypted=encrypted),
        "timestamp": ts,
        "nonce": "1",
    }


def _envelope(encrypted: str) -> bytes:
    return (
        f"<xml><ToUserName>ww</ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>".encode()
    )


def _raw_encrypt(app: RegisteredApp, plain: bytes) -> str:
    """Encrypt an already padded buffer, so a correctly signed callback can carry a broken one."""
    key = decode_aes_key(app.aes_key)
    return base64.b64encode(AES.new(key, AES.MODE_CBC, iv=key[:16]).encrypt(plain)).decode()


def _with_payload(app: RegisteredApp, payload: bytes) -> tuple[dict[str, str], bytes]:
    encrypted = app.crypt.encrypt(payload)
    return _signed(app, encrypted), _envelope(encrypted)


def _message(app: RegisteredApp) -> str:
    return text_message(corp_id=app.corp_id, from_user="u", content="x", msg_id="1")


@dataclass
class Case:
    method: str
    params: dict[str, str]
    body: bytes = b""
    slug: str | None = None


CaseMaker = Callable[[RegisteredApp], Case]


def _post(make: Callable[[RegisteredApp], tuple[dict[str, str], bytes]]) -> CaseMaker:
    return lambda app: Case("POST", *make(app))


def _valid(app: RegisteredApp) -> tuple[dict[str, str], bytes]:
    callback = build_callback(app.crypt, _message(app))
    return callback.params, callback.body


def _without(name: str) -> CaseMaker:
    def make(app: RegisteredApp) -> Case:
        params, body = _valid(app)
        return Case("POST", {k: v for k, v in params.items() if k != name}, body)

    return make


def _tampered_signature(app: RegisteredApp) -> tuple[dict[str, str], bytes]:
    params, body = _valid(app)
    return {**params, "msg_signature": "0" * 40}, body


def _timestamp(offset: int) -> CaseMaker:
    def make(app: RegisteredApp) -> Case:
        callback = build_callback(app.crypt, _message(app), timestamp=int(time.time()) + offset)
        return Case("POST", callback.params, callback.body)

    return make


def _word_timestamp(app: RegisteredApp) -> tuple[dict[str, str], bytes]:
    encrypted = app.crypt.encrypt(_message(app).encode())
    params = {
        "msg_signature": sign(
            token=app.token, timestamp="yesterday", nonce="1", encrypted=encrypted
        ),
        "timestamp": "yesterday",
        "nonce": "1",
    }
    return params, _envelope(encrypted)


def _wrong_corp(app: RegisteredApp) -> tuple[dict[str, str], bytes]:
    other = RegisteredApp(app.slug, "wwSOMEONEELSE", app.token, app.aes_key, app.secret)
    callback = build_callback(other.crypt, _message(app))
    return callback.params, callback.body


def _padding(app: RegisteredApp) -> tuple[dict[str, str], bytes]:
    encrypted = _raw_encrypt(app, b"r" * 16 + struct.pack(">I", 3) + b"<x>" + b"\x00" * 9)
    return _signed(app, encrypted), _envelope(encrypted)


def _length_prefix(app: RegisteredApp) -> tuple[dict[str, str], bytes]:
    encrypted = _raw_encrypt(app, b"r" * 16 + struct.pack(">I", 4000) + b"<x/>" + b"\x08" * 8)
    return _signed(app, encrypted), _envelope(encrypted)


def _broken_base64(app: RegisteredApp) -> tuple[dict[str, str], bytes]:
    encrypted = "@@not*base64@@"
    return _signed(app, encrypted), _envelope(encrypted)


def _not_block_aligned(app: RegisteredApp) -> tuple[dict[str, str], bytes]:
    encrypted = base64.b64encode(b"x" * 33).decode()
    return _signed(app, encrypted), _envelope(encrypted)


def _outer(body: bytes) -> CaseMaker:
    def make(app: RegisteredApp) -> Case:
        params, _ = _valid(app)
        return Case("POST", params, body)

    return make


def _inner(payload: bytes) -> CaseMaker:
    return lambda app: Case("POST", *_with_payload(app, payload))


def _get(make: Callable[[RegisteredApp], dict[str, str]]) -> CaseMaker:
    return lambda app: Case("GET", make(app))


def _get_signature(app: RegisteredApp) -> dict[str, str]:
    return {**build_url_verification(app.crypt, "123"), "msg_signature": "f" * 40}


def _get_wrong_corp(app: RegisteredApp) -> dict[str, str]:
    other = RegisteredApp(app.slug, "wwSOMEONEELSE", app.token, app.aes_key, app.secret)
    return build_url_verification(other.crypt, "123")


def _get_stale(app: RegisteredApp) -> dict[str, str]:
    return build_url_verification(app.crypt, "123", timestamp=int(time.time()) - 3600)


CASES: dict[str, tuple[CaseMaker, int, str]] = {
    "missing msg_signature": (_without("msg_signature"), 400, "missing_parameter"),
    "missing timestamp": (_without("timestamp"), 400, "missing_parameter"),
    "missing nonce": (_without("nonce"), 400, "missing_parameter"),
    "GET without echostr": (
        _get(
            lambda app: {
                k: v for k, v in build_url_verification(app.crypt, "1").items() if k != "echostr"
            }
        ),
        400,
        "missing_parameter",
    ),
    "unknown slug": (lambda app: Case("POST", *_valid(app), slug="nobody"), 404, "unknown_app"),
    "bad signature": (_post(_tampered_signature), 403, "bad_signature"),
    "GET bad signature": (_get(_get_signature), 403, "bad_signature"),
    "stale timestamp": (_timestamp(-601), 403, "stale_timestamp"),
    # +605, not +601: the timestamp is whole seconds, made before the request, and a busy
    # machine took more than the one second +601 leaves (the callback was accepted).
    "future timestamp": (_timestamp(+605), 403, "future_timestamp"),
    "GET stale timestamp": (_get(_get_stale), 403, "stale_timestamp"),
    "non-numeric timestamp": (_post(_word_timestamp), 400, "bad_timestamp"),
    "wrong ReceiveId": (_post(_wrong_corp), 403, "wrong_receive_id"),
    "GET wrong ReceiveId": (_get(_get_wrong_corp), 403, "wrong_receive_id"),
    "outer body not XML": (_outer(b"this is not xml"), 400, "invalid_xml"),
    "outer body JSON": (_outer(b'{"encrypt": "abc"}'), 400, "invalid_xml"),
    "empty body": (_outer(b""), 400, "invalid_xml"),
    "envelope without Encrypt": (
        _outer(b"<xml><ToUserName>ww</ToUserName></xml>"),
        400,
        "missing_encrypt",
    ),
    "billion laughs outside": (_outer(BILLION_LAUGHS.encode()), 400, "forbidden_xml"),
    "quadratic blow-up outside": (_outer(QUADRATIC.encode()), 400, "forbidden_xml"),
    "external entity outside": (_outer(EXTERNAL_ENTITY.encode()), 400, "forbidden_xml"),
    "broken base64": (_post(_broken_base64), 400, "bad_base64"),
    "ciphertext not block aligned": (_post(_not_block_aligned), 400, "decrypt_failed"),
    "bad padding": (_post(_padding), 400, "bad_padding"),
    "wrong length prefix": (_post(_length_prefix), 400, "bad_length_prefix"),
    "inner plaintext not XML": (_inner(b"hello, not xml"), 400, "invalid_inner_xml"),
    "inner plaintext not UTF-8": (_inner(b"<xml>\xff\xfe</xml>"), 400, "invalid_inner_xml"),
    "billion laughs inside": (_inner(BILLION_LAUGHS.encode()), 400, "forbidden_inner_xml"),
    "quadratic blow-up inside": (_inner(QUADRATIC.encode()), 400, "forbidden_inner_xml"),
    "external entity inside": (_inner(EXTERNAL_ENTITY.encode()), 400, "forbidden_inner_xml"),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_rejected_clearly_and_nothing_stored(
    name: str,
    client: httpx.AsyncClient,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    make, status, code = CASES[name]
    case = make(wecom_app)
    counted = REGISTRY.get_sample_value("wecom_hub_callbacks_total", {"outcome": code}) or 0.0
    url = f"/callback/{case.slug or wecom_app.slug}"
    with caplog.at_level(logging.WARNING, logger="app.routers.callback"):
        response = await client.request(case.method, url, params=case.params, content=case.body)

    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert (problem["status"], problem["code"]) == (status, code)
    assert (problem["type"], problem["instance"]) == (f"urn:wecom-hub:problem:{code}", url)
    assert problem["title"] and problem["detail"]
    assert await db.fetchval("SELECT count(*) FROM events") == 0
    assert REGISTRY.get_sample_value("wecom_hub_callbacks_total", {"outcome": code}) == counted + 1
    assert any(getattr(r, "code", None) == code for r in caplog.records)


async def test_crypto_rejections_carry_the_official_code(
    client: httpx.AsyncClient, wecom_app: RegisteredApp
) -> None:
    params, body = _padding(wecom_app)
    response = await client.post(f"/callback/{wecom_app.slug}", params=params, content=body)
    assert response.json()["wecom_code"] == -40008


@pytest.mark.parametrize("declared", [True, False])
async def test_oversized_body_is_refused_before_it_is_read(
    declared: bool, client: httpx.AsyncClient, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    params, _ = _valid(wecom_app)
    big = b"<xml><Encrypt>" + b"A" * (256 * 1024) + b"</Encrypt></xml>"

    async def chunks() -> object:
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    content = big if declared else chunks()  # without Content-Length: chunked upload
    response = await client.post(f"/callback/{wecom_app.slug}", params=params, content=content)  # type: ignore[arg-type]
    assert (response.status_code, response.json()["code"]) == (413, "body_too_large")
    assert await db.fetchval("SELECT count(*) FROM events") == 0


async def test_removed_app_no_longer_accepts_callbacks(
    client: httpx.AsyncClient, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    await db.execute("UPDATE apps SET removed_at = now() WHERE slug = $1", wecom_app.slug)
    params, body = _valid(wecom_app)
    response = await client.post(f"/callback/{wecom_app.slug}", params=params, content=body)
    assert (response.status_code, response.json()["code"]) == (404, "unknown_app")
