"""The ceiling for bench/ingest.py: same framework and server, no crypto, no database."""

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

app = FastAPI()


@app.post("/callback/{slug}", response_class=PlainTextResponse)
async def receive(slug: str, request: Request) -> PlainTextResponse:
    await request.body()
    return PlainTextResponse("success")
