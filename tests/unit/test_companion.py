"""Who may be in a demande's companion room: its instructeurs only."""

from __future__ import annotations

from bot.domain.companion import companion_members
from bot.domain.model import Agent, Participant, Role


def agent(i: int, roles: set[Role], group: int, *, active: bool = True) -> Agent:
    return Agent(i, f"A{i}", "Test", None, f"@a{i}:ex.org", group, frozenset(roles), active)


AGENTS = {
    1: agent(1, {Role.AIDANT}, 10),
    2: agent(2, {Role.INSTRUCTEUR}, 20),
    3: agent(3, {Role.INSTRUCTEUR}, 30),
    4: agent(4, {Role.INSTRUCTEUR, Role.AIDANT}, 10),  # a colleague of the aidant
    5: agent(5, {Role.INSTRUCTEUR}, 20, active=False),
    6: agent(6, {Role.INSTRUCTEUR}, 20),
}


def part(i: int, kind: str) -> Participant:
    a = AGENTS[i]
    return Participant(i, a.matrix_id if i != 6 else None, None, a.group_id, kind)


def test_only_active_matrix_instructeurs_outside_the_aidant_s_group() -> None:
    participants = [
        part(1, "aidant"),
        part(2, "instructeur"),
        part(3, "invite"),
        part(4, "invite"),
        part(5, "instructeur"),
        part(6, "instructeur"),  # email-only
    ]
    assert companion_members(participants, AGENTS, aidant_group=10) == {"@a2:ex.org", "@a3:ex.org"}
