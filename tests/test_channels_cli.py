"""`wecom-hub channels …` as an operator runs it: the same services as the API, WeCom played
by the simulator over real HTTP."""

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.config import Settings, get_settings
from tests.conftest import TRUNCATE_ALL, RegisteredApp, Simulator, random_app, register

runner = CliRunner()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


async def _sql(url: str, query: str) -> None:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await connection.execute(query)
    finally:
        await connection.close()


@pytest.fixture
def shop(
    database_url: str, secret_key: str, simulator: Simulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RegisteredApp]:
    monkeypatch.setenv("WECOM_HUB_DATABASE_URL", database_url)
    monkeypatch.setenv("WECOM_HUB_SECRET_KEY", secret_key)
    monkeypatch.setenv("WECOM_HUB_WECOM_API_BASE_URL", simulator.url)
    get_settings.cache_clear()
    asyncio.run(_sql(database_url, TRUNCATE_ALL))
    app = random_app("shop")
    settings = Settings(_env_file=None, database_url=database_url, secret_key=secret_key)
    asyncio.run(register(settings, app))
    simulator.state.corp(app.corp_id).secrets.add(app.secret)
    simulator.state.seed(app.corp_id, members=2, customers_per_member=0, groups=0, tags=0)
    yield app
    get_settings.cache_clear()


def test_add_list_show_qr_stats_remove(
    shop: RegisteredApp, simulator: Simulator, tmp_path: Path
) -> None:
    members = ["--user", "member000", "--user", "member001"]
    added = runner.invoke(
        cli,
        [
            "channels",
            "add",
            "--app",
            "shop",
            "--name",
            "门店A",
            *members,
            "--welcome",
            "欢迎 {customer_name}",
        ],
    )
    assert added.exit_code == 0, added.output
    assert "added channel 1: 门店A" in added.output
    shown = runner.invoke(cli, ["channels", "show", "1"])
    channel = json.loads(shown.output)
    way = simulator.state.corp(shop.corp_id).contact_ways[channel["config_id"]]
    assert (way.state, way.user) == (channel["state"], ["member000", "member001"])
    assert channel["state"] in added.output

    listed = runner.invoke(cli, ["channels", "list", "--app", "shop"])
    assert listed.exit_code == 0 and "门店A" in listed.output and "active" in listed.output

    out = tmp_path / "code.png"
    qr = runner.invoke(cli, ["channels", "qr", "1", "--out", str(out)])
    assert qr.exit_code == 0, qr.output
    assert out.read_bytes().startswith(PNG_SIGNATURE)

    stats = runner.invoke(cli, ["channels", "stats", "1"])
    assert stats.exit_code == 0 and "welcome_expired" in stats.output

    refused = runner.invoke(
        cli, ["channels", "add", "--app", "shop", "--name", "x", "--user", "stranger"]
    )
    assert refused.exit_code == 1 and "visible range" in refused.output
    invalid = runner.invoke(
        cli, ["channels", "add", "--app", "shop", "--name", "x", "--remark", "x" * 31]
    )
    assert invalid.exit_code == 2 and "remark:" in invalid.output

    removed = runner.invoke(cli, ["channels", "remove", "1"])
    assert removed.exit_code == 0, removed.output
    assert simulator.state.corp(shop.corp_id).contact_ways == {}
    missing = runner.invoke(cli, ["channels", "show", "1"])
    assert missing.exit_code == 1 and "no channel 1" in missing.output
