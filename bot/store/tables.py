"""Every table of the bot, registered on `Base.metadata` by importing this module."""

from __future__ import annotations

import bot.store.crypto_models as crypto_models
import bot.store.draft_models as draft_models
import bot.store.email_models as email_models
import bot.store.lease_models as lease_models
import bot.store.loop_models as loop_models
import bot.store.models as models
import bot.store.onboarding_models as onboarding_models
import bot.store.work_models as work_models
from bot.store.base import Base

metadata = Base.metadata

__all__ = [
    "crypto_models",
    "draft_models",
    "email_models",
    "lease_models",
    "loop_models",
    "metadata",
    "models",
    "onboarding_models",
    "work_models",
]
