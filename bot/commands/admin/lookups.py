"""Finding an agent or a group from what an operator typed."""

from __future__ import annotations

from typing import Any

from bot.commands.admin.context import *  # noqa
from bot.commands.admin.lookups import *  # noqa
from bot.domain.model import Agent, Group
from bot.domain.policies import fold


async def find_agent(tx: Any, text: str) -> Agent | None:
    text = text.strip()
    if text.startswith("@"):
        found: Agent | None = await tx.get_agent_by_matrix_id(text)
        return found
    if "@" in text:
        found = await tx.get_agent_by_email(text)
        return found
    number = text.removeprefix("n°").strip()
    if number.isdigit():
        found = await tx.get_agent(int(number))
        return found
    return None


async def group_named(tx: Any, name: str) -> Group | None:
    found: Group | None = await tx.get_group_by_name(name)
    if found is not None:
        return found
    wanted = fold(name)
    for group in await tx.list_groups():
        if fold(group.name) == wanted:
            return group  # type: ignore[no-any-return]
    return None
