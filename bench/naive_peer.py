"""The naive peer for bench/ingest.py: a WeCom callback receiver as one would first write it.

wechatpy verifies and decrypts, xmltodict parses, and each request runs one INSERT on an
asyncpg pool (its own commit) before answering "success". Same framework and server as the
no-op ceiling; configured from BENCH_TOKEN, BENCH_AES_KEY, BENCH_CORP_ID and BENCH_DSN.
"""

import gc
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import xmltodict  # type: ignore[import-untyped]
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from wechatpy.enterprise.crypto import WeChatCrypto

crypto = WeChatCrypto(
    os.environ["BENCH_TOKEN"], os.environ["BENCH_AES_KEY"], os.environ["BENCH_CORP_ID"]
)
pool: asyncpg.Pool | None = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    global pool
    pool = await asyncpg.create_pool(os.environ["BENCH_DSN"], min_size=4, max_size=16)
    await pool.execute(
        "CREATE TABLE IF NOT EXISTS naive_events"
        " (id bigserial PRIMARY KEY, msg_id text, payload jsonb NOT NULL)"
    )
    yield
    await pool.close()


app = FastAPI(lifespan=lifespan)


@app.post("/callback/{slug}", response_class=PlainTextResponse)
async def receive(
    slug: str, request: Request, msg_signature: str, timestamp: str, nonce: str
) -> PlainTextResponse:
    body = await request.body()
    xml = crypto.decrypt_message(body, msg_signature, timestamp, nonce)
    fields = xmltodict.parse(xml)["xml"]
    assert pool is not None
    await pool.execute(
        "INSERT INTO naive_events (msg_id, payload) VALUES ($1, $2::jsonb)",
        fields.get("MsgId"),
        json.dumps(fields, ensure_ascii=False),
    )
    return PlainTextResponse("success")


gc.freeze()  # as `wecom-hub serve` does
