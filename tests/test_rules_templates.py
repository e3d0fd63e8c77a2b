"""Templates: a welcome's `{customer_name}` and `{member_name}`; a churn alert's also
`{state}` and `{added_date}`; `{{ }}` for literal braces in both.

A template is saved once and rendered on every welcome, so whatever str.format would do
beyond putting a name in (pad it to 300 million characters, read an attribute, nest a field)
is refused when the rule is saved; and `render` never calls str.format, so a template stored
before that check is sent as typed instead of blowing up.
"""

import json

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from app.automations.rules import (
    CHURN_PLACEHOLDERS,
    ChurnContent,
    ReplyMatch,
    TagMatch,
    WelcomeContent,
    render,
)
from app.automations.store import enabled_rules, validate
from app.config import Settings
from app.errors import FieldError, Invalid
from tests.conftest import RegisteredApp
from tests.processing_helpers import sessionmaker_for

NAMES = {"customer_name": "张三", "member_name": "李四"}
POLITE = {"customer_name": "您好", "member_name": "我们"}  # when a name is unknown

HOSTILE = [
    (
        "{customer_name:>300000000}",
        "placeholder {customer_name:>300000000} has a format spec; write {customer_name}",
    ),
    ("{customer_name:}", "placeholder {customer_name:} has a format spec"),
    (
        "{customer_name:{member_name.__class__}}",
        "placeholder {customer_name:{member_name.__class__}} has a format spec",
    ),
    ("{customer_name!r}", "placeholder {customer_name!r} has a conversion; write {customer_name}"),
    ("{customer_name.__class__}", "{customer_name.__class__} reads an attribute"),
    ("{member_name[0]}", "placeholder {member_name[0]} reads an index; write {member_name}"),
    ("{nickname}", "unknown placeholder {nickname}; known: {customer_name}, {member_name}"),
    ("{0}", "unknown placeholder {0}"),
    ("{}", "unknown placeholder {}"),
    ("50% {off", "a single { never closes ({off); write {{ for a literal brace"),
    ("a } b", "a single } closes no placeholder; write }} for a literal brace"),
]


@pytest.mark.parametrize(("template", "problem"), HOSTILE)
def test_a_template_with_more_than_a_plain_placeholder_is_refused_saying_why(
    template: str, problem: str
) -> None:
    with pytest.raises(Invalid) as refused:
        validate("welcome", {}, {"text": f"你好 {template}"})
    [said] = refused.value.errors
    assert said.field == "content.text"
    assert problem in said.message


@pytest.mark.parametrize("template", [template for template, _ in HOSTILE])
def test_a_refused_template_stored_before_the_check_renders_as_typed(template: str) -> None:
    rendered = render(template, NAMES)
    assert len(rendered) <= len(template)  # no padding, and nothing raised


def test_a_long_template_is_refused_for_its_length_before_it_is_read() -> None:
    with pytest.raises(Invalid) as refused:
        validate("welcome", {}, {"text": "{" * 5000})
    assert refused.value.errors == [
        FieldError("content.text", "welcome text is 5000 bytes; WeCom allows 4000")
    ]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (NAMES, "你好 张三，我是李四"),
        ({"customer_name": None, "member_name": ""}, "你好 您好，我是我们"),
        ({}, "你好 您好，我是我们"),  # 微信客服 welcomes know no names
    ],
)
def test_placeholders_are_filled_and_a_missing_name_is_polite(
    values: dict[str, str | None], expected: str
) -> None:
    template = "你好 {customer_name}，我是{member_name}"
    validate("welcome", {}, {"text": template})
    assert render(template, values) == expected


def test_doubled_braces_are_literal_braces_as_in_str_format() -> None:
    template = "{{customer_name}} 是 {customer_name}，{{{member_name}}}"
    validate("welcome", {}, {"text": template})
    assert render(template, NAMES) == "{customer_name} 是 张三，{李四}"


def test_a_name_that_looks_like_a_placeholder_is_sent_as_it_is() -> None:
    names = {"customer_name": "{member_name}{{", "member_name": "李四"}
    assert render("{customer_name}/{member_name}", names) == "{member_name}{{/李四"


pieces = st.sampled_from(
    "{ } {{ }} {customer_name} {member_name} customer_name :>9 !r .x [0] {0} 你好".split()
)
names = st.fixed_dictionaries(
    {"customer_name": st.text(max_size=5), "member_name": st.none() | st.text(max_size=5)}
)


@given(st.lists(pieces, max_size=10).map("".join), names)
def test_a_template_that_validates_renders_as_str_format_would(
    template: str, values: dict[str, str | None]
) -> None:
    text = "你好" + template
    try:
        WelcomeContent(text=text)
    except ValidationError:
        render(text, values)  # refused; had it been stored earlier, still rendered safely
        return
    filled = {name: values.get(name) or polite for name, polite in POLITE.items()}
    assert render(text, values) == text.format(**filled)


CHURN_VALUES = {
    "customer_name": "张三",
    "member_name": "李四",
    "state": "store_sh",
    "added_date": "2026-11-01",
}
CHURN_POLITE = {
    "customer_name": "一位客户",
    "member_name": "成员",
    "state": "未知渠道",
    "added_date": "未知日期",
}
CHURN_TEMPLATE = "{customer_name}（{state}，{added_date} 添加）删除了{member_name}"


@pytest.mark.parametrize(
    ("kind", "template", "problem"),
    [
        ("churn", "{state:>9}", "placeholder {state:>9} has a format spec; write {state}"),
        ("churn", "{added_date!s}", "placeholder {added_date!s} has a conversion"),
        ("churn", "{added_date.year}", "placeholder {added_date.year} reads an attribute"),
        (
            "churn",
            "{nickname}",
            "unknown placeholder {nickname}; known: {added_date}, {customer_name},"
            " {member_name}, {state}",
        ),
        (
            "welcome",
            "{state}",
            "unknown placeholder {state}; known: {customer_name}, {member_name}",
        ),
        ("welcome", "{added_date}", "unknown placeholder {added_date}"),
    ],
)
def test_each_kind_accepts_only_its_own_placeholders_written_exactly(
    kind: str, template: str, problem: str
) -> None:
    with pytest.raises(Invalid) as refused:
        validate(kind, {}, {"text": f"注意 {template}"})
    [said] = refused.value.errors
    assert said.field == "content.text"
    assert problem in said.message


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (CHURN_VALUES, "张三（store_sh，2026-11-01 添加）删除了李四"),
        ({"customer_name": None, "state": ""}, "一位客户（未知渠道，未知日期 添加）删除了成员"),
    ],
)
def test_churn_placeholders_are_filled_and_an_unknown_value_is_polite(
    values: dict[str, str | None], expected: str
) -> None:
    validate("churn", {}, {"text": CHURN_TEMPLATE})
    assert render(CHURN_TEMPLATE, values, placeholders=CHURN_PLACEHOLDERS) == expected


def test_a_welcome_renders_churn_placeholders_as_typed() -> None:
    """Each kind fills only its own placeholders, even in a template stored unchecked."""
    assert render("{state} {customer_name}", CHURN_VALUES) == "{state} 张三"


churn_pieces = st.sampled_from(
    "{ } {{ }} {customer_name} {member_name} {state} {added_date} state :>9 !r .x {0} 再见".split()
)
churn_values = st.fixed_dictionaries(
    {name: st.none() | st.text(max_size=5) for name in CHURN_POLITE},
)


@given(st.lists(churn_pieces, max_size=10).map("".join), churn_values)
def test_a_churn_template_that_validates_renders_as_str_format_would(
    template: str, values: dict[str, str | None]
) -> None:
    text = "再见" + template
    try:
        ChurnContent(text=text)
    except ValidationError:
        render(text, values, placeholders=CHURN_PLACEHOLDERS)  # refused, still safe
        return
    filled = {name: values.get(name) or polite for name, polite in CHURN_POLITE.items()}
    assert render(text, values, placeholders=CHURN_PLACEHOLDERS) == text.format(**filled)


async def test_a_stored_rule_that_no_longer_validates_is_left_out_not_fatal(
    settings: Settings, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    """Saved before templates were checked: every welcome of the app must not fail on it."""
    app_id = await db.fetchval("SELECT id FROM apps")
    for name, text in (("old", "{customer_name:>300000000}"), ("good", "你好 {customer_name}")):
        await db.execute(
            "INSERT INTO rules (kind, app_id, name, match, content)"
            " VALUES ('welcome', $1, $2, '{}', $3::jsonb)",
            app_id,
            name,
            json.dumps({"text": text}),
        )
    maker = sessionmaker_for(settings)
    try:
        async with maker() as session:
            loaded = await enabled_rules(session, "welcome", app_id)
    finally:
        await maker.kw["bind"].dispose()
    assert [rule.name for rule in loaded] == ["good"]


def test_a_keyword_that_runs_out_of_time_only_fails_itself() -> None:
    """The catastrophic pattern comes first: its timeout must not end the list."""
    text = "a" * 40 + "!"
    catastrophic = r"(a|aa)+$"
    reply = ReplyMatch(keywords=[catastrophic, "!"], mode="regex")
    tag = TagMatch(on="keyword", keywords=[catastrophic, "!"], mode="regex")
    assert reply.matches(text)
    assert tag.matches_message(text, open_kfid="wk1")
    assert not ReplyMatch(keywords=[catastrophic], mode="regex").matches(text)
