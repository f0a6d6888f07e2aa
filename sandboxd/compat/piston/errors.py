"""Piston's error answers: an HTTP status and a JSON body with its `message`."""

from __future__ import annotations

from typing import Any


class PistonError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.body = status, {"message": message, **extra}
