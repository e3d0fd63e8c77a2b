"""`wecom-hub broadcasts`: 群发 to customers and customer groups."""

import typer

broadcasts_cli = typer.Typer(no_args_is_help=True, help="Broadcasts (群发) and their funnels.")
