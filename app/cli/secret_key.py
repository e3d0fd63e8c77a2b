"""`wecom-hub secret-key`: make a key for WECOM_HUB_SECRET_KEY, and seal every stored secret
again with the current key (`rotate`) after it changed.

A rotation (docs/adr/0011-at-rest-keys.md): make a new key; give every process the new key
as WECOM_HUB_SECRET_KEY and the old one in WECOM_HUB_PREVIOUS_SECRET_KEYS (both open, the new
one seals); run `rotate`; then drop the previous keys. `rotate` reads and writes in small
transactions (a batch of rows each, locked only for that batch), so it can run beside
`serve` and `worker`, be stopped at any point and run again: what is done stays done, and a
second run finds nothing to do. It also binds values of before key ids to their owner.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import typer

from app.cli.common import complain, console, current_settings, prepare_database, secret_box

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from app.crypto.at_rest import SecretBox

secret_key_cli = typer.Typer(
    help="Print a new key for WECOM_HUB_SECRET_KEY; `rotate`: seal every stored secret again "
    "with the current key."
)


@secret_key_cli.callback(invoke_without_command=True)
def secret_key(ctx: typer.Context) -> None:
    """Print a new value for WECOM_HUB_SECRET_KEY (or, with `rotate`, seal every stored
    secret again with the current key)."""
    if ctx.invoked_subcommand is not None:
        return
    from app.crypto.at_rest import generate_key

    print(generate_key())


@dataclass(frozen=True)
class SealedColumns:
    """A table's sealed columns, each with the purpose it is sealed for, and whose each
    row's values are (the owner: "" where the column alone says what a value is for)."""

    table: str
    key: tuple[str, ...]  # the primary key: rows are walked in its order
    purposes: dict[str, str]
    owner: Callable[[Any], str] = lambda row: ""
    reads: tuple[str, ...] = ()  # columns the owner is made of


def sealed_columns() -> list[SealedColumns]:
    """Every sealed value wecom-hub stores, as the code that opens it opens it."""
    from app.webhooks.delivery import SECRET_PURPOSE
    from app.wecom_apps import SECRET_FIELDS, secret_owner

    return [
        SealedColumns(
            "apps",
            ("id",),
            {f"{name}_sealed": f"app.{name}" for name in SECRET_FIELDS},
            owner=lambda row: secret_owner(row.id, row.corp_id),
            reads=("corp_id",),
        ),
        SealedColumns(
            "webhook_endpoints",
            ("id",),
            {"secret_sealed": SECRET_PURPOSE, "previous_secret_sealed": SECRET_PURPOSE},
        ),
        # app/wecom/tokens.py: shared access tokens, sealed for `token` with no owner.
        SealedColumns("access_tokens", ("corp_id", "secret_hash"), {"token_sealed": "token"}),
    ]


@dataclass
class Resealed:
    """What `reseal` did with one table's values."""

    table: str
    resealed: int = 0
    current: int = 0  # already sealed with the current key, bound to their owner
    unopened: Counter[str] = field(default_factory=Counter)  # by the key that sealed them


async def reseal(
    engine: AsyncEngine, box: SecretBox, columns: SealedColumns, *, batch: int = 100
) -> Resealed:
    """Seal again with the current key, bound to its owner, every value of the table that
    is not yet: `batch` rows per transaction, each row locked (FOR UPDATE) from its read to
    its write, so that a secret changed meanwhile is never overwritten with the old one.
    A value that does not open with any configured key is left as it is and counted."""
    from sqlalchemy import text

    from app.crypto.at_rest import SecretBoxError, sealed_with

    names = list(columns.purposes)
    current_prefix = f"v2:{box.key_id}:%"
    pending = " OR ".join(f"({c} IS NOT NULL AND {c} NOT LIKE :current)" for c in names)
    key = ", ".join(columns.key)
    wanted = ", ".join([*columns.key, *columns.reads, *names])
    after = " AND (" + key + ") > (" + ", ".join(f":k{i}" for i in range(len(columns.key))) + ")"
    found = Resealed(columns.table)
    last: tuple[Any, ...] | None = None
    counted = " + ".join(f"count({c}) FILTER (WHERE {c} LIKE :current)" for c in names)
    async with engine.connect() as connection:
        found.current = (
            await connection.execute(
                text(f"SELECT {counted} FROM {columns.table}"),  # noqa: S608 - our names only
                {"current": current_prefix},
            )
        ).scalar_one()
    while True:
        async with engine.begin() as connection:
            where = f"({pending}){after if last is not None else ''}"
            query = f"SELECT {wanted} FROM {columns.table} WHERE {where} ORDER BY {key}"  # noqa: S608 - our names; values are parameters
            query += " LIMIT :batch FOR UPDATE"
            params: dict[str, Any] = {"current": current_prefix, "batch": batch}
            params |= {f"k{i}": v for i, v in enumerate(last or ())}
            rows = (await connection.execute(text(query), params)).all()
            for row in rows:
                owner = columns.owner(row)
                changes: dict[str, str] = {}
                for name, purpose in columns.purposes.items():
                    sealed = getattr(row, name)
                    if sealed is None or not box.needs_resealing(sealed):
                        continue
                    try:
                        plain = box.open(sealed, purpose=purpose, owner=owner)
                    except SecretBoxError:
                        found.unopened[sealed_with(sealed) or "(none: before key ids)"] += 1
                        continue
                    changes[name] = box.seal(plain, purpose=purpose, owner=owner)
                if changes:
                    this = " AND ".join(f"{k} = :k{i}" for i, k in enumerate(columns.key))
                    sets = ", ".join(f"{name} = :{name}" for name in changes)
                    values = {f"k{i}": getattr(row, k) for i, k in enumerate(columns.key)}
                    await connection.execute(
                        text(f"UPDATE {columns.table} SET {sets} WHERE {this}"),  # noqa: S608 - ours
                        values | changes,
                    )
                    found.resealed += len(changes)
        if len(rows) < batch:
            return found
        last = tuple(getattr(rows[-1], k) for k in columns.key)


@secret_key_cli.command("rotate")
def rotate(
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="Rows per transaction.")] = 100,
) -> None:
    """Seal every stored secret again with the current key, bound to its app.

    Run it once every process has the new key as WECOM_HUB_SECRET_KEY and the old one in
    WECOM_HUB_PREVIOUS_SECRET_KEYS; when it says the previous keys are no longer needed,
    remove them. A batch of rows per transaction: safe beside running servers, and it can
    be stopped and run again. Exits 1 if a value opens with no configured key."""
    from app import logs
    from app.db import create_engine

    settings = current_settings()
    logs.configure(settings.log_level, settings.log_format)
    url = prepare_database(settings)
    box = secret_box(settings)

    async def run() -> list[Resealed]:
        engine = create_engine(url, settings, pool_size=1)
        try:
            return [await reseal(engine, box, table, batch=batch) for table in sealed_columns()]
        finally:
            await engine.dispose()

    done = asyncio.run(run())
    for table in done:
        console.print(
            f"{table.table}: {table.resealed} sealed again with key {box.key_id}, "
            f"{table.current} already were",
            highlight=False,
            soft_wrap=True,
        )
    unopened = sum((table.unopened for table in done), Counter[str]())
    if unopened:
        keys = ", ".join(f"{n} with key {kid}" for kid, n in sorted(unopened.items()))
        complain(
            f"{unopened.total()} values do not open with any configured key (sealed {keys}): "
            "give the key that sealed them in WECOM_HUB_PREVIOUS_SECRET_KEYS and run again"
        )
        raise typer.Exit(1)
    if box.previous_key_ids:
        console.print(
            f"every stored secret is sealed with key {box.key_id}: the previous keys "
            f"({', '.join(box.previous_key_ids)}) are no longer needed; remove "
            "WECOM_HUB_PREVIOUS_SECRET_KEYS",
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print(
            f"every stored secret is sealed with key {box.key_id}", highlight=False, soft_wrap=True
        )
