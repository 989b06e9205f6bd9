"""Persistence: SQLAlchemy models, the `Tx` repository, Alembic migrations, and
field encryption of the usager's data at rest."""

from bot.domain.model import Demande, DirectoryConflict
from bot.store.crypto import FieldCipher, FieldCipherError, generate_key
from bot.store.db import Store, current_revision, head_revision, upgrade
from bot.store.records import AuditEntry, Draft, OutgoingMessage
from bot.store.repository import NotFound, Tx

__all__ = [
    "AuditEntry",
    "Demande",
    "DirectoryConflict",
    "Draft",
    "FieldCipher",
    "FieldCipherError",
    "NotFound",
    "OutgoingMessage",
    "Store",
    "Tx",
    "current_revision",
    "generate_key",
    "head_revision",
    "upgrade",
]
