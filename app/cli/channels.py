"""`wecom-hub channels`: 「联系我」 QR codes and group join ways."""

import typer

channels_cli = typer.Typer(no_args_is_help=True, help="Channels: 「联系我」 QR codes, join ways.")
