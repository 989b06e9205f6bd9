"""Finding an agent or a group from what an operator typed."""

from __future__ import annotations

from bot.domain.model import Agent, Group
from bot.domain.policies import fold
from bot.ports import ConsoleTx


async def find_agent(tx: ConsoleTx, text: str) -> Agent | None:
    """An agent by Matrix ID, email address or number (« n° 12 » or « 12 »)."""
    text = text.strip()
    if text.startswith("@"):
        return await tx.get_agent_by_matrix_id(text)
    if "@" in text:
        return await tx.get_agent_by_email(text)
    number = text.removeprefix("n°").strip()
    if number.isdigit():
        return await tx.get_agent(int(number))
    return None


async def group_named(tx: ConsoleTx, name: str) -> Group | None:
    """A group by its exact name, else by its name without case or accents."""
    found = await tx.get_group_by_name(name)
    if found is not None:
        return found
    wanted = fold(name)
    for group in await tx.list_groups():
        if fold(group.name) == wanted:
            return group
    return None
