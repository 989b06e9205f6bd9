"""What the repository hands back: plain frozen dataclasses, never ORM rows,
so nothing outside `bot.store` can lazy-load or write by accident."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot.domain.model import DemandeForm, Status, StatusTimes, Usefulness


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
class DemandeRecord:
    """A demande's metadata. The usager's data is only reachable through `Tx.load_form`."""

    id: int
    reference: str
    territoire: str
    organisations: tuple[str, ...]
    categorie: str | None
    status: Status
    times: StatusTimes
    usefulness: Usefulness | None
    aidant_agent_id: int
    room_id: str | None
    creation_step: str  # "pending" | "room_created" | "invited" | "ready"
    dossier_event_id: str | None
    group_ids: tuple[int, ...]
    draft_id: int | None


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
