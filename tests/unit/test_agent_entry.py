"""`!agent-ajouter`'s roles and contacts, as the operators and a responsable type them.

Both read them with one parser (`bot.domain.agent_entry`), each in its own scope: an
operator may give any role and is told of a refused homeserver after the contacts are
read; a responsable gives only their organisation's roles and is stopped at the first
Matrix account on a refused homeserver. These tests run the declared commands (parse,
then dispatch) up to their refusals, with no store.
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

import bot.commands.admin  # noqa: F401  (registers the operators' commands)
from bot.commands.admin.context import ADMIN
from bot.commands.framework import Parsed, Reply
from bot.commands.group import GROUP, GroupCtx
from bot.domain.model import Agent, Group, OrganisationKind, Role

ALLOWED_SERVERS = {"x.test", "ok.test"}
ROLE_LIST = "aidant, instructeur, responsable, operateur"


async def _run(commands: Any, ctx: Any, text: str) -> Reply:
    parsed = commands.parse(text)
    assert isinstance(parsed, Parsed), parsed
    reply = await commands.dispatch(parsed, ctx)
    assert isinstance(reply, Reply)
    return reply


def _operator_ctx() -> Any:
    rules = SimpleNamespace(homeserver_allowed=lambda server: server in ALLOWED_SERVERS)
    return SimpleNamespace(membership=lambda: rules, sender="@op:x.test")


@pytest.mark.parametrize(
    ("roles", "contacts", "error"),
    [
        ("chef", "@j:x.test", f"Rôle inconnu « chef » : {ROLE_LIST}."),
        (",", "@j:x.test", f"Au moins un rôle : {ROLE_LIST}."),
        ("instructeur", "jean", "« jean » n'est ni un identifiant Matrix ni une adresse e-mail."),
        ("instructeur", "@jean", "« @jean » n'est pas un identifiant Matrix (@nom:serveur)."),
        ("instructeur", "- -", "Indiquez un identifiant Matrix et/ou une adresse e-mail."),
        # Every contact is read before the homeserver is looked at.
        (
            "instructeur",
            "@j:evil.test jean",
            "« jean » n'est ni un identifiant Matrix ni une adresse e-mail.",
        ),
        (
            "instructeur",
            "@j:evil.test",
            "Le serveur Matrix « evil.test » de @j:evil.test n'est pas autorisé pour ce service",
        ),
        # The last Matrix account typed is the one kept, and the one checked.
        (
            "instructeur",
            "@j:ok.test @k:evil.test",
            "Le serveur Matrix « evil.test » de @k:evil.test n'est pas autorisé",
        ),
    ],
)
async def test_an_operator_is_told_what_is_wrong_with_the_roles_or_contacts(
    roles: str, contacts: str, error: str
) -> None:
    reply = await _run(ADMIN, _operator_ctx(), f"!agent-ajouter Jean Dupont - {roles} {contacts}")
    assert reply.is_error
    assert error in reply.text


class _GroupOps:
    def __init__(self) -> None:
        self.added: list[dict[str, Any]] = []

    def homeserver_allowed(self, server: str) -> bool:
        return server in ALLOWED_SERVERS

    async def add_agent(self, group: Group, **fields: Any) -> Agent:
        self.added.append(fields)
        first, last = fields["first_name"], fields["last_name"]
        return Agent(7, first, last, None, None, group.id, frozenset())


def _group_ctx(kind: OrganisationKind = OrganisationKind.OPERATEUR) -> tuple[GroupCtx, _GroupOps]:
    ops = _GroupOps()
    responsable = Agent(1, "Rose", "Resp", None, "@rose:x.test", 3, frozenset({Role.RESPONSABLE}))
    group = Group(3, "CAF 78", "caf", frozenset({"78"}))
    now = datetime(2026, 12, 2, 9, tzinfo=UTC)
    return GroupCtx(responsable, group, kind, ops, now), ops  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("roles", "contacts", "error"),
    [
        ("chef", "@j:x.test", "Rôle inconnu « chef »."),
        (",", "@j:x.test", "Au moins un rôle."),
        (
            "operateur",
            "@j:x.test",
            "Vous ne pouvez pas donner le rôle operateur (rôles : instructeur, responsable).",
        ),
        ("instructeur", "jean", "« jean » n'est ni un identifiant Matrix ni une adresse e-mail."),
        ("instructeur", "@jean", "« @jean » n'est pas un identifiant Matrix (@nom:serveur)."),
        ("instructeur", "- -", "Indiquez un identifiant Matrix et/ou une adresse e-mail."),
        # The first Matrix account on a refused homeserver stops the reading.
        (
            "instructeur",
            "@j:evil.test jean",
            "Le serveur de @j:evil.test n'est pas autorisé pour ce service : inscrivez "
            "l'agent par son adresse e-mail.",
        ),
        (
            "instructeur",
            "@j:evil.test @k:ok.test",
            "Le serveur de @j:evil.test n'est pas autorisé",
        ),
    ],
)
async def test_a_responsable_is_told_what_is_wrong_with_the_roles_or_contacts(
    roles: str, contacts: str, error: str
) -> None:
    ctx, ops = _group_ctx()
    reply = await _run(GROUP, ctx, f"!agent-ajouter Jean Dupont {roles} {contacts}")
    assert reply.is_error
    assert error in reply.text
    assert ops.added == []


async def test_a_responsable_of_an_aidant_organisation_gives_its_roles_only() -> None:
    ctx, _ = _group_ctx(OrganisationKind.AIDANT)
    reply = await _run(GROUP, ctx, "!agent-ajouter Jean Dupont instructeur @j:x.test")
    assert reply.text == (
        "Vous ne pouvez pas donner le rôle instructeur (rôles : aidant, responsable)."
    )


async def test_a_responsable_adds_an_agent_with_roles_and_contacts_as_typed() -> None:
    ctx, ops = _group_ctx()
    reply = await _run(
        GROUP, ctx, "!agent-ajouter Jean Dupont Instructeur+RESPONSABLE Jean@X.test @j:ok.test"
    )
    assert not reply.is_error
    assert reply.text == "Agent n° 7 ajouté à votre groupe « CAF 78 » : Jean Dupont."
    assert ops.added == [
        {
            "first_name": "Jean",
            "last_name": "Dupont",
            "roles": frozenset({Role.INSTRUCTEUR, Role.RESPONSABLE}),
            "matrix_id": "@j:ok.test",
            "email": "jean@x.test",
            "actor": "@rose:x.test",
        }
    ]
