"""`wecom-hub rules`: automation rules, the same services as /api/v1/rules."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from app.errors import FieldError, Invalid

if TYPE_CHECKING:
    pass

from app.cli.common import (
    add_row,
    console,
    current_settings,
    given,
    in_transaction,
    print_page,
    refusals,
)

rules_cli = typer.Typer(no_args_is_help=True, help="Automation rules: welcome, tag, reply, churn.")


def _json(text: str | None, field: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Invalid([FieldError(field, f"not JSON: {exc}")]) from None
    if not isinstance(value, dict):
        raise Invalid([FieldError(field, "must be a JSON object")])
    return value


def _cut(value: dict[str, Any], limit: int = 300) -> str:
    """Whole unless very long: `rules show ID` prints all of it."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


NameOption = Annotated[str | None, typer.Option(help="A name people recognise.")]
MatchOption = Annotated[
    str | None, typer.Option(help='JSON, e.g. {"state": "spring", "state_mode": "prefix"}')
]
ContentOption = Annotated[
    str | None, typer.Option(help='JSON, e.g. {"text": "欢迎 {customer_name}"}')
]
PriorityOption = Annotated[int | None, typer.Option(help="Higher wins among equals.")]
RuleId = Annotated[int, typer.Argument(help="The rule's id (`rules list`).")]


@rules_cli.command("add")
def rules_add(
    kind: Annotated[str, typer.Argument(help="welcome, tag, reply or churn")],
    name: NameOption = None,
    match: MatchOption = None,
    content: ContentOption = None,
    app: Annotated[str | None, typer.Option(help="Only for this app (default: all).")] = None,
    priority: PriorityOption = None,
    enabled: Annotated[
        bool, typer.Option("--enabled/--disabled", help="In force from the start, or not.")
    ] = True,
) -> None:
    """Add a rule; it is validated first (limits, placeholders, regexes, tag ids, files)."""
    from app.automations.store import create_rule, rule_spec

    media_dir = current_settings().media_dir
    with refusals():
        spec = rule_spec(
            given(
                kind=kind,
                name=name,
                app=app,
                priority=priority,
                match=_json(match, "match"),
                content=_json(content, "content"),
            )
            | {"enabled": enabled}
        )
        view = in_transaction(lambda session, box: create_rule(session, spec, media_dir=media_dir))
    console.print(f"added {view.kind} rule {view.id}: {view.name}", markup=False, highlight=False)


@rules_cli.command("list")
def rules_list(
    kind: Annotated[str | None, typer.Option(help="Only rules of this kind.")] = None,
    app: Annotated[str | None, typer.Option(help="Only the rules of this app.")] = None,
    enabled: Annotated[
        bool | None, typer.Option("--enabled/--disabled", help="Only enabled (disabled) rules.")
    ] = None,
    after: Annotated[int | None, typer.Option(help="Only ids lower than this: next page.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=250)] = 50,
) -> None:
    """List the rules, newest first."""
    from app.automations.store import list_rules

    with refusals():
        views = in_transaction(
            lambda session, box: list_rules(
                session, kind=kind, app=app, enabled=enabled, after_id=after, limit=limit
            )
        )
    table = Table("id", "kind", "name", "app", "priority", "enabled")
    for column in ("match", "content"):  # wrapped whole, not cut at the terminal's width
        table.add_column(column, overflow="fold")
    for view in views:
        add_row(
            table,
            str(view.id),
            view.kind,
            view.name,
            view.app or "all",
            str(view.priority),
            "yes" if view.enabled else "no",
            _cut(view.match),
            _cut(view.content),
        )
    print_page(table, views, limit)


@rules_cli.command("show")
def rules_show(rule_id: RuleId) -> None:
    """Print a whole rule as JSON."""
    from app.automations.store import get_rule

    with refusals():
        view = in_transaction(lambda session, box: get_rule(session, rule_id))
    typer.echo(view.model_dump_json(indent=2))


@rules_cli.command("update")
def rules_update(
    rule_id: RuleId,
    name: NameOption = None,
    match: MatchOption = None,
    content: ContentOption = None,
    app: Annotated[str | None, typer.Option(help="Only for this app from now on.")] = None,
    all_apps: Annotated[bool, typer.Option("--all-apps", help="For every app from now on.")] = (
        False
    ),
    priority: PriorityOption = None,
    enabled: Annotated[
        bool | None, typer.Option("--enabled/--disabled", help="Turn the rule on (off).")
    ] = None,
) -> None:
    """Change a rule: the options given (match and content replace the old ones whole); the
    result is validated like a new rule."""
    from app.automations.store import rule_patch, update_rule

    media_dir = current_settings().media_dir
    with refusals():
        if app is not None and all_apps:
            raise Invalid([FieldError("app", "give --app or --all-apps, not both")])
        changes = given(
            name=name,
            app=app,
            priority=priority,
            enabled=enabled,
            match=_json(match, "match"),
            content=_json(content, "content"),
        ) | ({"app": None} if all_apps else {})
        if not changes:
            raise Invalid([FieldError("", "nothing to change: give an option (see --help)")])
        patch = rule_patch(changes)
        view = in_transaction(
            lambda session, box: update_rule(session, rule_id, patch, media_dir=media_dir)
        )
    console.print(f"rule {view.id} updated: {', '.join(changes)}", highlight=False)


def _set_enabled(rule_id: int, enabled: bool) -> None:
    from app.automations.store import set_enabled

    with refusals():
        in_transaction(lambda session, box: set_enabled(session, rule_id, enabled))
    console.print(f"rule {rule_id}: {'enabled' if enabled else 'disabled'}", highlight=False)


@rules_cli.command("enable")
def rules_enable(rule_id: RuleId) -> None:
    """Enable a rule (refused while an enabled one of its kind and app has its name)."""
    _set_enabled(rule_id, True)


@rules_cli.command("disable")
def rules_disable(rule_id: RuleId) -> None:
    """Disable a rule, keeping it."""
    _set_enabled(rule_id, False)


@rules_cli.command("remove")
def rules_remove(rule_id: RuleId) -> None:
    """Delete a rule (actions it caused keep its name in their payload)."""
    from app.automations.store import delete_rule

    with refusals():
        in_transaction(lambda session, box: delete_rule(session, rule_id))
    console.print(f"rule {rule_id}: removed", highlight=False)
