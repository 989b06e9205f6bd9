"""Every table of the bot, registered on `Base.metadata` by importing this module."""

from __future__ import annotations

from bot.store import crypto_models, email_models, models, work_models
from bot.store.base import Base

metadata = Base.metadata

__all__ = ["crypto_models", "email_models", "metadata", "models", "work_models"]
