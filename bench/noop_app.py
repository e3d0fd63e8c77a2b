"""The ceiling for bench/ingest.py: same framework and server, no crypto, no database."""

import gc

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

app = FastAPI()


@app.post("/callback/{slug}", response_class=PlainTextResponse)
async def receive(slug: str, request: Request) -> PlainTextResponse:
    await request.body()
    return PlainTextResponse("success")


gc.freeze()  # as `wecom-hub serve` does, so both run with the same collector setting
