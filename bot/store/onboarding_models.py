"""Onboarding and the managers' roles: welcomes sent, agents' last activity, operators'
scopes. No personal data: agent ids, channels, times and département codes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey
from sqlalchemy.orm import Mapped, mapped_column

from bot.store.base import Base, _in

WELCOME_CHANNELS = ("matrix", "email")


class AgentWelcomeRow(Base):
    """An agent greeted on one channel (once per channel and per activation: a
    deactivation forgets it, so that a reactivated agent is greeted again)."""

    __tablename__ = "agent_welcomes"
    __table_args__ = (CheckConstraint(_in("channel", WELCOME_CHANNELS), name="channel"),)

    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), primary_key=True)
    channel: Mapped[str] = mapped_column(primary_key=True)
    welcomed_at: Mapped[datetime]


class AgentActivityRow(Base):
    """An agent's last act in the service, and when they were told they would be
    deactivated for inactivity (cleared when they act)."""

    __tablename__ = "agent_activity"

    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), primary_key=True)
    last_active_at: Mapped[datetime]
    warned_at: Mapped[datetime | None]


class OperatorScopeRow(Base):
    """A territorial operator's départements (no row: a national operator)."""

    __tablename__ = "operator_scopes"

    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), primary_key=True)
    departements: Mapped[str]  # sorted, comma-joined codes
