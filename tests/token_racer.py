"""Run as a second process by tests/test_wecom_client.py: two concurrent token requests,
starting at an agreed instant; prints the tokens it got, one per line."""

import asyncio
import sys
import time

from app.config import Settings
from app.crypto.at_rest import SecretBox, parse_key
from app.db import create_engine, create_sessionmaker
from app.wecom.factory import open_client


async def main(
    database_url: str, secret_key: str, sim_url: str, corp_id: str, secret: str, start_at: float
) -> None:
    settings = Settings(_env_file=None, database_url=database_url, wecom_api_base_url=sim_url)
    engine = create_engine(database_url, settings, pool_size=2)
    box = SecretBox(parse_key(secret_key))
    async with open_client(settings, create_sessionmaker(engine), box) as client:
        assert client.tokens is not None
        await asyncio.sleep(max(0.0, start_at - time.time()))
        tokens = await asyncio.gather(*(client.tokens.token(corp_id, secret) for _ in range(2)))
    await engine.dispose()
    print("\n".join(tokens))


if __name__ == "__main__":
    database_url, secret_key, sim_url, corp_id, secret, start_at = sys.argv[1:7]
    asyncio.run(main(database_url, secret_key, sim_url, corp_id, secret, float(start_at)))
