"""`wecom-hub`: serve, migrate, manage apps. Thin: each command calls the same functions as HTTP."""

import typer

from app.cli import process
from app.cli.apikeys import apikeys_cli
from app.cli.apps import apps_cli
from app.cli.broadcasts import broadcasts_cli
from app.cli.channels import channels_cli
from app.cli.common import _migration_heads
from app.cli.rules import rules_cli
from app.cli.secret_key import secret_key_cli
from app.simulator.cli import sim_cli

__all__ = ["_migration_heads", "cli", "main"]

cli = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
for command in (process.serve, process.demo, process.worker, process.sync, process.migrate):
    cli.command()(command)
cli.add_typer(secret_key_cli, name="secret-key")
cli.add_typer(apps_cli, name="apps")
cli.add_typer(rules_cli, name="rules")
cli.add_typer(apikeys_cli, name="apikeys")
cli.add_typer(channels_cli, name="channels")
cli.add_typer(broadcasts_cli, name="broadcasts")
cli.add_typer(sim_cli, name="sim")


def main() -> None:
    cli()
