"""The error every operation raises toward a client: a wire code and a message.

Its own module so that the transports, the compatibility APIs and the fleet can
raise and catch it without importing the service (which imports them)."""

from __future__ import annotations

from typing import Any

from sandboxd.schema import Error


class ServiceError(Exception):
    """An error with a wire code; transports map it to a reply (and HTTP status)."""

    def __init__(self, err: Error) -> None:
        super().__init__(err.message)
        self.err = err


def error(code: Any, message: str, retry_after: float | None = None) -> ServiceError:
    return ServiceError(Error(code, message, retry_after))
