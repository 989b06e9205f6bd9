"""The lease row's statements (PostgreSQL only), each in its own short transaction.

They run on the lease's own connection, never through `Store.transaction()` (which is
what the lease fences). Times are the database's (`clock_timestamp()`), so the
processes' clocks never have to agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# A statement that would wait for a row lock gives up after this: a takeover blocked
# by a stale holder's open transaction terminates that holder's connections instead.
LOCK_TIMEOUT = "500ms"


@dataclass(frozen=True, slots=True)
class LeaseState:
    holder: str
    epoch: int
    expired: bool


async def read(conn: AsyncConnection) -> LeaseState | None:
    """The lease as committed now (a plain read: it never waits for a lock)."""
    row = (
        await conn.execute(
            text("SELECT holder, epoch, expires_at < clock_timestamp() FROM lease WHERE id = 1")
        )
    ).first()
    return None if row is None else LeaseState(str(row[0]), int(row[1]), bool(row[2]))


@dataclass(frozen=True, slots=True)
class Acquired:
    epoch: int
    previous: str | None  # the holder before us, whose connections may linger


async def acquire(conn: AsyncConnection, holder: str, ttl_seconds: float) -> Acquired | None:
    """Take the lease if nobody holds it or it has expired, else None.

    Raises the driver's lock-timeout error when a stale holder's transaction still
    holds the row (see `terminate`). The caller commits.
    """
    await conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    current = await read(conn)
    params = {"holder": holder, "ttl": float(ttl_seconds)}
    if current is None:
        row = (
            await conn.execute(
                text(
                    "INSERT INTO lease (id, holder, epoch, acquired_at, expires_at) "
                    "VALUES (1, :holder, 1, clock_timestamp(), "
                    "clock_timestamp() + make_interval(secs => :ttl)) "
                    "ON CONFLICT (id) DO NOTHING RETURNING epoch"
                ),
                params,
            )
        ).first()
        return None if row is None else Acquired(int(row[0]), None)
    if not current.expired:
        return None
    row = (
        await conn.execute(
            text(
                "UPDATE lease SET holder = :holder, epoch = epoch + 1, "
                "acquired_at = clock_timestamp(), "
                "expires_at = clock_timestamp() + make_interval(secs => :ttl) "
                "WHERE id = 1 AND epoch = :seen AND expires_at < clock_timestamp() "
                "RETURNING epoch"
            ),
            {**params, "seen": current.epoch},
        )
    ).first()
    return None if row is None else Acquired(int(row[0]), current.holder)


async def renew(conn: AsyncConnection, holder: str, epoch: int, ttl_seconds: float) -> bool:
    """Extend our lease; False if another process has taken it since (epoch changed).

    Renewing an expired lease that nobody took is allowed: no other holder wrote
    meanwhile, since that needs a new epoch. The caller commits.
    """
    await conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    row = (
        await conn.execute(
            text(
                "UPDATE lease SET expires_at = clock_timestamp() + make_interval(secs => :ttl) "
                "WHERE id = 1 AND epoch = :epoch AND holder = :holder RETURNING epoch"
            ),
            {"holder": holder, "epoch": epoch, "ttl": float(ttl_seconds)},
        )
    ).first()
    return row is not None


async def release(conn: AsyncConnection, holder: str, epoch: int) -> None:
    """On a clean stop: expire our lease now, so that the standby takes over at once."""
    await conn.execute(
        text(
            "UPDATE lease SET expires_at = clock_timestamp() "
            "WHERE id = 1 AND epoch = :epoch AND holder = :holder"
        ),
        {"holder": holder, "epoch": epoch},
    )


async def terminate(conn: AsyncConnection, holder: str) -> int:
    """End every database connection of `holder` (its `application_name`): a frozen
    holder's open transaction then rolls back and releases the lease row."""
    row = (
        await conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = :holder AND datname = current_database() "
                "AND pid <> pg_backend_pid()"
            ),
            {"holder": holder},
        )
    ).first()
    return int(row[0]) if row is not None else 0
