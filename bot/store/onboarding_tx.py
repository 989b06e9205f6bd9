"""Onboarding's part of `Tx`: welcomes, agents' activity, operators' scopes."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, func, select, type_coerce, update

from bot.store.base import UTCDateTime
from bot.store.models import AgentRow, ParticipantRow
from bot.store.onboarding_models import AgentActivityRow, AgentWelcomeRow, OperatorScopeRow
from bot.store.tx_base import TxBase


class OnboardingTx(TxBase):
    # ------------------------------------------------------------------ welcomes

    async def mark_welcomed(self, agent_id: int, channel: str, now: datetime) -> bool:
        """True the first time an agent is greeted on `channel` (this activation)."""
        stmt = (
            self._insert(AgentWelcomeRow)
            .values(agent_id=agent_id, channel=channel, welcomed_at=now)
            .on_conflict_do_nothing(index_elements=["agent_id", "channel"])
            .returning(AgentWelcomeRow.agent_id)
        )
        return (await self._s.execute(stmt)).first() is not None

    async def welcomed_channels(self, agent_id: int) -> set[str]:
        rows = await self._s.scalars(
            select(AgentWelcomeRow.channel).where(AgentWelcomeRow.agent_id == agent_id)
        )
        return set(rows)

    async def forget_welcomes(self, agent_id: int) -> None:
        await self._s.execute(delete(AgentWelcomeRow).where(AgentWelcomeRow.agent_id == agent_id))

    async def link_participants(self, agent_id: int, matrix_id: str) -> None:
        """An email-only agent got a Matrix account: their ledger lines name it now."""
        await self._s.execute(
            update(ParticipantRow)
            .where(
                ParticipantRow.agent_id == agent_id,
                ParticipantRow.matrix_id.is_(None),
                ParticipantRow.removed_at.is_(None),
            )
            .values(matrix_id=matrix_id)
        )

    # ------------------------------------------------------------------ activity

    async def touch_activity(self, agent_id: int, now: datetime) -> None:
        """The agent acted: their inactivity clock starts again, any warning is void."""
        stmt = (
            self._insert(AgentActivityRow)
            .values(agent_id=agent_id, last_active_at=now, warned_at=None)
            .on_conflict_do_update(
                index_elements=["agent_id"], set_={"last_active_at": now, "warned_at": None}
            )
        )
        await self._s.execute(stmt)

    async def last_activity(self) -> dict[int, tuple[datetime, datetime | None]]:
        """Every active agent: (last act, or their creation; warned at or None)."""
        rows = await self._s.execute(
            select(
                AgentRow.id,
                # typed, so that SQLite's text comes back as an aware datetime
                type_coerce(
                    func.coalesce(AgentActivityRow.last_active_at, AgentRow.created_at),
                    UTCDateTime(),
                ),
                AgentActivityRow.warned_at,
            )
            .outerjoin(AgentActivityRow, AgentActivityRow.agent_id == AgentRow.id)
            .where(AgentRow.active.is_(True))
        )
        out: dict[int, tuple[datetime, datetime | None]] = {}
        for agent_id, last, warned in rows:
            out[agent_id] = (last, warned)
        return out

    async def mark_inactivity_warned(self, agent_id: int, last: datetime, now: datetime) -> None:
        stmt = (
            self._insert(AgentActivityRow)
            .values(agent_id=agent_id, last_active_at=last, warned_at=now)
            .on_conflict_do_update(index_elements=["agent_id"], set_={"warned_at": now})
        )
        await self._s.execute(stmt)

    # ------------------------------------------------------------------ operators' scopes

    async def operator_scope(self, agent_id: int) -> frozenset[str] | None:
        """A territorial operator's départements; None: national."""
        raw = await self._s.scalar(
            select(OperatorScopeRow.departements).where(OperatorScopeRow.agent_id == agent_id)
        )
        if raw is None:
            return None
        return frozenset(code for code in raw.split(",") if code)

    async def set_operator_scope(self, agent_id: int, departements: Iterable[str] | None) -> None:
        await self._s.execute(delete(OperatorScopeRow).where(OperatorScopeRow.agent_id == agent_id))
        if departements is not None:
            codes = ",".join(sorted(set(departements)))
            await self._s.execute(
                self._insert(OperatorScopeRow).values(agent_id=agent_id, departements=codes)
            )
