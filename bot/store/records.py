"""What the repository hands back: plain frozen dataclasses, never ORM rows,
so nothing outside `bot.store` can lazy-load or write by accident."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot.domain.model import DemandeForm


@dataclass(frozen=True, slots=True)
class Draft:
    id: int
    aidant_agent_id: int
    dm_room_id: str
    form: DemandeForm
    group_ids: tuple[int, ...]
    state: str  # "pending" | "confirmed" | "cancelled"
    demande_id: int | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    txn_id: str
    room_id: str
    content: dict[str, Any]
    created_at: datetime
    attempts: int


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    reference: str | None
    details: dict[str, Any]
