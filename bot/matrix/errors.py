"""Errors of the Matrix side, turned into exceptions at one place (nio returns them)."""

from __future__ import annotations


class MatrixError(Exception):
    """The homeserver answered with an error."""

    def __init__(self, status: int | None, errcode: str | None, message: str) -> None:
        super().__init__(f"{status} {errcode}: {message}")
        self.status = status
        self.errcode = errcode
        self.message = message

    @property
    def transient(self) -> bool:
        """Worth retrying later: rate limits and server-side failures."""
        return self.status is None or self.status == 429 or self.status >= 500


class HomeserverUnavailable(MatrixError):
    """The homeserver could not be reached at all (connection refused, timeout)."""

    def __init__(self, message: str) -> None:
        super().__init__(None, None, message)


class MediaUnavailable(MatrixError):
    """A file's media could not be fetched (its server is down, or it does not exist).

    Caused by the event that names the media, not an outage of our homeserver: the
    event is retried on its own and given up after its budget, never the whole sync.
    """
