"""Who is in a demande's companion room: its instructeurs only (pure).

Administration+ let instructeurs « restreindre le message aux instructeurs ». Here the
agents confer in a second encrypted room of the demande, created on first use: the
same ledger decides who is in it — its active participants who are instructeurs
(routed or invited), never the aidant nor the aidant's colleagues — and it is purged
with the demande.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bot.domain.model import Agent, Participant, Role

INSTRUCTEUR_KINDS = frozenset({"instructeur", "invite"})


def companion_members(
    participants: Iterable[Participant], agents: Mapping[int, Agent], aidant_group: int | None
) -> set[str]:
    """The Matrix IDs allowed in the companion room."""
    allowed = set()
    for p in participants:
        agent = agents.get(p.agent_id)
        if p.matrix_id is None or agent is None or not agent.active:
            continue
        if p.kind not in INSTRUCTEUR_KINDS or not agent.has(Role.INSTRUCTEUR):
            continue
        if aidant_group is not None and agent.group_id == aidant_group:
            continue  # a colleague of the aidant, invited to help: the aidant's side
        allowed.add(p.matrix_id)
    return allowed
