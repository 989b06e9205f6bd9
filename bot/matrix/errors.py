"""Errors of the Matrix side, turned into exceptions at one place (nio returns them)."""

from __future__ import annotations

# The homeserver guard's reason (synapse_module/) for "no bot answered in time".
GUARD_REASON_FIELD = "fr.aplus.reason"
GUARD_UNAVAILABLE = "unavailable"


class MatrixError(Exception):
    """The homeserver answered with an error."""

    def __init__(
        self,
        status: int | None,
        errcode: str | None,
        message: str,
        *,
        guard_reason: str | None = None,
    ) -> None:
        super().__init__(f"{status} {errcode}: {message}")
        self.status = status
        self.errcode = errcode
        self.message = message
        # `fr.aplus.reason` of a refusal by the homeserver guard, if it was one.
        self.guard_reason = guard_reason

    @property
    def guard_unavailable(self) -> bool:
        """Refused only because the guard could not ask our ledger in time: retry later."""
        return self.guard_reason == GUARD_UNAVAILABLE

    @property
    def transient(self) -> bool:
        """Worth retrying later: rate limits, server-side failures, an unanswered guard."""
        return (
            self.status is None
            or self.status == 429
            or self.status >= 500
            or self.guard_unavailable
        )


class HomeserverUnavailable(MatrixError):
    """The homeserver could not be reached at all (connection refused, timeout)."""

    def __init__(self, message: str) -> None:
        super().__init__(None, None, message)


class MediaUnavailable(MatrixError):
    """A file's media could not be fetched (its server is down, or it does not exist).

    Caused by the event that names the media, not an outage of our homeserver: the
    event is retried on its own and given up after its budget, never the whole sync.
    """
