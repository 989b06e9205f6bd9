"""What a demande room must look like: its creation body and its protected state.

One place for what the opening builds and the guard restores, computed from the
policies in force (so `!politiques-recharger` reaches both) and the bot's settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.domain import room_spec
from bot.domain.model import Demande
from bot.domain.policies import MembershipRules
from bot.domain.reference import SEPARATOR, room_name
from bot.ports import PoliciesRef


def server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1]


class RoomSpecs:
    def __init__(self, *, policies: PoliciesRef, bot_user_id: str, room_version: str) -> None:
        self.policies = policies
        self.bot_user_id = bot_user_id
        self.room_version = room_version

    @property
    def allowed_servers(self) -> tuple[str, ...]:
        """The bot's own server is always allowed, or its own rooms would lock it out."""
        own = server_of(self.bot_user_id)
        configured = self.policies.current.membership.allowed_homeservers
        return tuple(dict.fromkeys([own, *configured]))

    def membership_rules(self) -> MembershipRules:
        rules = self.policies.current.membership
        for server in self.allowed_servers:
            rules = rules.with_homeserver(server)
        return rules

    def may_take_part(self, user_id: str) -> bool:
        """Can this Matrix account be in a demande room (its server is in the ACL)?"""
        try:
            server = room_spec.server_of(user_id)
        except ValueError:
            return False
        return room_spec.acl_allows(self.allowed_servers, server)

    def name(self, demande: Demande) -> str:
        """`Demande A-2026-000042 · CAF · 95 · traitée`: the status shows in Element's room
        list (the spaces service renames the room when it changes)."""
        organisations = self.policies.current.organisations
        names = [organisations[o].name if o in organisations else o for o in demande.organisations]
        base = room_name(demande.reference, names, demande.territoire)
        return f"{base}{SEPARATOR}{demande.status.label}"

    def body(self, demande: Demande, invitees: Sequence[str]) -> dict[str, Any]:
        return room_spec.create_room_body(
            reference=demande.reference,
            name=self.name(demande),
            bot_user_id=self.bot_user_id,
            invitees=list(invitees),
            allowed_servers=self.allowed_servers,
            room_version=self.room_version,
        )

    def canonical_state(self, demande: Demande) -> dict[tuple[str, str], dict[str, Any]]:
        body = self.body(demande, [])
        state = {(e["type"], e.get("state_key", "")): e["content"] for e in body["initial_state"]}
        state[("m.room.power_levels", "")] = body["power_level_content_override"]
        state[("m.room.name", "")] = {"name": body["name"]}
        return state
