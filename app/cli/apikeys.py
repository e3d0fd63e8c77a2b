"""`wecom-hub apikeys`: keys for the REST API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from app import apikeys
    from app.crypto.at_rest import SecretBox

from app.cli.common import (
    add_row,
    console,
    in_transaction,
    refusals,
)

apikeys_cli = typer.Typer(no_args_is_help=True, help="API keys for the REST API (/api/v1).")


@apikeys_cli.command("create")
def apikeys_create(
    name: Annotated[str, typer.Option(help="Who or what uses it, for people.")],
    scope: Annotated[
        str, typer.Option(help="read (lists, shows) < write (rules, tags, sends) < admin.")
    ],
) -> None:
    """Create a key and print it, this once: only a hash of it is kept."""
    from app import apikeys

    async def create(session: AsyncSession, box: SecretBox) -> tuple[apikeys.ApiKeyView, str]:
        return await apikeys.create_key(session, name=name, scope=scope)

    with refusals():
        view, key = in_transaction(create)
    console.print(
        f"API key {view.id} ({view.scope}) for {view.name!r}; shown only now:",
        markup=False,
        highlight=False,
    )
    print(key)


@apikeys_cli.command("list")
def apikeys_list() -> None:
    """Every key, revoked ones too; the prefix identifies a key, the key is never shown."""
    from app import apikeys

    async def keys(session: AsyncSession, box: SecretBox) -> list[apikeys.ApiKeyView]:
        return await apikeys.list_keys(session)

    table = Table("id", "name", "scope", "prefix", "created", "last used", "revoked")
    for key in in_transaction(keys):
        add_row(
            table,
            str(key.id),
            key.name,
            key.scope,
            key.prefix,
            key.created_at.isoformat(timespec="seconds"),
            key.last_used_at.isoformat(timespec="seconds") if key.last_used_at else "",
            key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "",
        )
    console.print(table)


@apikeys_cli.command("revoke")
def apikeys_revoke(key_id: Annotated[int, typer.Argument(help="The key's id.")]) -> None:
    """Refuse the key from now on (on every replica within seconds)."""
    from app import apikeys

    async def revoke(session: AsyncSession, box: SecretBox) -> apikeys.ApiKeyView:
        return await apikeys.revoke_key(session, key_id)

    with refusals():
        view = in_transaction(revoke)
    console.print(f"API key {view.id} ({view.name}) revoked", markup=False, highlight=False)
