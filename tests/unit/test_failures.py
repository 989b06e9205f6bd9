"""Which failures hold the work back to be tried again whole (`bot.services.failures`)."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DBAPIError

from bot.domain.lease import LeaseLost
from bot.services.failures import database_unavailable


class _DriverError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"driver error {sqlstate}")
        self.sqlstate = sqlstate


def _pg(sqlstate: str) -> DBAPIError:
    return DBAPIError("UPDATE …", {}, _DriverError(sqlstate))


@pytest.mark.parametrize("sqlstate", ["40001", "40P01", "57P01", "57P03", "08006"])
def test_transient_postgresql_errors_are_retried_like_an_outage(sqlstate: str) -> None:
    assert database_unavailable(_pg(sqlstate))


@pytest.mark.parametrize("sqlstate", ["23505", "42P01", "22P02"])
def test_an_error_of_the_work_itself_is_not(sqlstate: str) -> None:
    # A unique violation, a missing table, a bad value: retrying the same work fails again.
    assert not database_unavailable(_pg(sqlstate))


def test_a_lost_lease_holds_everything_back() -> None:
    assert database_unavailable(LeaseLost("taken over"))
