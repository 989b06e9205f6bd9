"""A transaction seen by a territorial operator (`bot.domain.scope`): what is outside
their départements is not found, and a change that would touch it is refused
(`OutOfScope`, rolled back). Every audit entry it writes records the scope.

The admin commands get it through `Store.scoped`, so each of them is held to the
operator's scope without checking it itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.domain.model import Agent, Demande, Group, Role, Status
from bot.domain.scope import OperatorScope, OutOfScope
from bot.store.crypto import FieldCipher
from bot.store.records import AuditEntry
from bot.store.repository import Tx


class ScopedTx(Tx):
    def __init__(
        self, session: AsyncSession, cipher: FieldCipher, dialect: str, scope: OperatorScope
    ) -> None:
        super().__init__(session, cipher, dialect)
        self.scope = scope

    # ------------------------------------------------------------------ what is theirs

    async def _group_covered(self, group_id: int | None) -> bool:
        if group_id is None:
            return False
        return self.scope.covers_group(await super().get_group(group_id))

    async def _agent_covered(self, agent: Agent | None) -> bool:
        return agent is not None and await self._group_covered(agent.group_id)

    def _refuse(self, what: str) -> OutOfScope:
        return OutOfScope(f"{what} : hors de votre périmètre (départements {self.scope.label()}).")

    # ------------------------------------------------------------------ reads

    async def get_agent(self, agent_id: int) -> Agent | None:
        found = await super().get_agent(agent_id)
        return found if await self._agent_covered(found) else None

    async def get_agent_by_matrix_id(self, matrix_id: str) -> Agent | None:
        found = await super().get_agent_by_matrix_id(matrix_id)
        return found if await self._agent_covered(found) else None

    async def get_agent_by_email(self, email: str) -> Agent | None:
        found = await super().get_agent_by_email(email)
        return found if await self._agent_covered(found) else None

    async def list_agents(self, *, active_only: bool = True) -> list[Agent]:
        groups = {g.id for g in await self.list_groups()}
        every = await super().list_agents(active_only=active_only)
        return [a for a in every if a.group_id in groups]

    async def agents_of_group(self, group_id: int, *, active_only: bool = True) -> list[Agent]:
        if not await self._group_covered(group_id):
            return []
        return await super().agents_of_group(group_id, active_only=active_only)

    async def get_group(self, group_id: int) -> Group | None:
        found = await super().get_group(group_id)
        return found if self.scope.covers_group(found) else None

    async def get_group_by_name(self, name: str) -> Group | None:
        found = await super().get_group_by_name(name)
        return found if self.scope.covers_group(found) else None

    async def list_groups(self) -> list[Group]:
        return [g for g in await super().list_groups() if self.scope.covers_group(g)]

    def _demande(self, found: Demande | None) -> Demande | None:
        return found if found is not None and self.scope.covers_demande(found) else None

    async def get_demande(self, demande_id: int) -> Demande | None:
        return self._demande(await super().get_demande(demande_id))

    async def get_demande_by_reference(self, reference: str) -> Demande | None:
        return self._demande(await super().get_demande_by_reference(reference))

    async def get_demande_by_room(self, room_id: str) -> Demande | None:
        return self._demande(await super().get_demande_by_room(room_id))

    async def list_demandes(self, *, status: Status | None = None) -> list[Demande]:
        every = await super().list_demandes(status=status)
        return [d for d in every if self.scope.covers_demande(d)]

    async def demandes_of_agent(self, agent_id: int) -> list[Demande]:
        return [
            d for d in await super().demandes_of_agent(agent_id) if self.scope.covers_demande(d)
        ]

    async def audit_entries(
        self, *, reference: str | None = None, action: str | None = None
    ) -> list[AuditEntry]:
        if reference is not None and await self.get_demande_by_reference(reference) is None:
            return []
        entries = await super().audit_entries(reference=reference, action=action)
        covered = {d.reference for d in await self.list_demandes()}
        return [e for e in entries if e.reference in covered]

    # ------------------------------------------------------------------ changes

    async def upsert_agent(
        self,
        *,
        first_name: str,
        last_name: str,
        email: str | None,
        matrix_id: str | None,
        group_id: int | None,
        roles: frozenset[Role],
        active: bool = True,
    ) -> tuple[Agent, bool]:
        who = f"{first_name} {last_name}"
        if not await self._group_covered(group_id):
            raise self._refuse(f"Le groupe de {who}")
        for existing in (
            await super().get_agent_by_matrix_id(matrix_id) if matrix_id else None,
            await super().get_agent_by_email(email) if email else None,
        ):
            if existing is not None and not await self._agent_covered(existing):
                raise self._refuse(f"L'agent {who}, déjà dans l'annuaire")
        return await super().upsert_agent(
            first_name=first_name,
            last_name=last_name,
            email=email,
            matrix_id=matrix_id,
            group_id=group_id,
            roles=roles,
            active=active,
        )

    async def update_agent(self, agent: Agent) -> Agent:
        if not await self._agent_covered(await super().get_agent(agent.id)):
            raise self._refuse(f"L'agent n° {agent.id}")
        if not await self._group_covered(agent.group_id):
            raise self._refuse(f"Le nouveau groupe de {agent.display_name}")
        return await super().update_agent(agent)

    async def set_agent_active(self, agent_id: int, active: bool) -> None:
        if not await self._agent_covered(await super().get_agent(agent_id)):
            raise self._refuse(f"L'agent n° {agent_id}")
        await super().set_agent_active(agent_id, active)

    async def upsert_group(
        self, *, name: str, organisation_id: str, departements: frozenset[str], bal: str | None
    ) -> Group:
        existing = await super().get_group_by_name(name)
        if existing is not None and not self.scope.covers_group(existing):
            raise self._refuse(f"Le groupe « {name} »")
        if not self.scope.covers_departements(departements):
            raise self._refuse(f"Les départements du groupe « {name} »")
        return await super().upsert_group(
            name=name, organisation_id=organisation_id, departements=departements, bal=bal
        )

    async def update_group(
        self,
        group_id: int,
        *,
        name: str,
        organisation_id: str,
        departements: frozenset[str],
        bal: str | None,
    ) -> None:
        if not await self._group_covered(group_id):
            raise self._refuse(f"Le groupe « {name} »")
        if not self.scope.covers_departements(departements):
            raise self._refuse(f"Les départements du groupe « {name} »")
        await super().update_group(
            group_id, name=name, organisation_id=organisation_id, departements=departements, bal=bal
        )

    async def audit(
        self,
        action: str,
        *,
        actor: str,
        reference: str | None = None,
        details: Mapping[str, Any] | None = None,
        now: datetime,
    ) -> None:
        await super().audit(
            action,
            actor=actor,
            reference=reference,
            details={**(details or {}), "scope": self.scope.label()},
            now=now,
        )
