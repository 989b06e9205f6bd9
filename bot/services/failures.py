"""What a failure means for the work that met it: hold everything back, or only this.

Only two faults hold back the sync position and every other event: the database
being unavailable (nothing can be recorded, not even the failure), and the
homeserver's `/sync` failing (the loop never got the batch). Anything else that goes
wrong while handling one event stays with that event (`bot.services.event_retries`).
"""

from __future__ import annotations

import asyncio

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from bot.domain.lease import LeaseLost
from bot.matrix.errors import HomeserverUnavailable, MatrixError, MediaUnavailable

# PostgreSQL errors that say nothing of the work itself: the same work, tried again,
# goes through. Serialization failure, deadlock, the connection ended by the server
# (pg_terminate_backend, a restart) or not available yet, connection failures.
TRANSIENT_SQLSTATES = frozenset(
    {"40001", "40P01", "57P01", "57P02", "57P03", "08000", "08001", "08003", "08004", "08006"}
)


def _sqlstate(exc: DBAPIError) -> str | None:
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code if isinstance(code, str) else None


def database_unavailable(exc: BaseException) -> bool:
    """The database cannot be reached, answered with a connection-level error, or
    refused this transaction for a reason of its own (`TRANSIENT_SQLSTATES`): the work
    waits and is tried again, whole (every handler is idempotent), blamed for nothing.

    `LeaseLost` counts as one: this process may not write (fenced) nor act, so every
    piece of work waits, blamed for nothing, until the process exits as the standby.
    """
    if isinstance(exc, LeaseLost):
        return True
    if isinstance(exc, DBAPIError) and _sqlstate(exc) in TRANSIENT_SQLSTATES:
        return True
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    # asyncpg raises plain OSErrors when it cannot connect; the gateway wraps its own
    # network errors, so a bare one here comes from the database driver.
    return isinstance(exc, (ConnectionError, OSError, TimeoutError)) and not isinstance(
        exc, MatrixError
    )


def homeserver_outage(exc: BaseException) -> bool:
    """Our homeserver is unreachable or overloaded: wait, without blaming the work."""
    if isinstance(exc, MediaUnavailable):
        return False
    if isinstance(exc, HomeserverUnavailable):
        return True
    if isinstance(exc, MatrixError) and exc.guard_unavailable:
        # The homeserver guard could not ask any bot in time: wait for it, as for an outage.
        return True
    return isinstance(exc, MatrixError) and exc.status in (429, 502, 503, 504)


def describe(exc: BaseException) -> str:
    """A short name for the audit trail and the logs: never the content of anything."""
    if isinstance(exc, MatrixError):
        return f"{type(exc).__name__}({exc.status} {exc.errcode})"
    return type(exc).__name__


def stop_requested() -> bool:
    """The current task was asked to stop (cancelled), even if what it was doing then
    raised another exception in place of the `CancelledError` (a rollback on a busy or
    lost database, a batch that failed while the stop waited for it). A loop that
    retries failures must end then, not retry: the process would never exit."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def stop_if_requested(exc: BaseException) -> None:
    """In a loop's `except Exception`: if the task was asked to stop, end it (the stop's
    `CancelledError`, caused by `exc`) instead of treating `exc` as a failure to retry."""
    if stop_requested():
        raise asyncio.CancelledError from exc
