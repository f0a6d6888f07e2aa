"""The Python client's retry policy (clients/python/sandboxd_client): what is
retried and how long it waits.  (Against a daemon that stops and comes back:
tests/clients/test_client_retry.py.)"""

from __future__ import annotations

from sandboxd_client import SandboxdError
from sandboxd_client.client import _retry_after
from sandboxd_client.retry import Retry


def test_what_is_retried() -> None:
    assert _retry_after(SandboxdError("draining", "stopping", 3.0)) == 3.0  # at least the server's Retry-After
    assert _retry_after(SandboxdError("disconnected", "connection lost")) == 0.0
    assert _retry_after(ConnectionRefusedError()) == 0.0
    assert _retry_after(FileNotFoundError()) == 0.0  # the socket of a daemon not yet back
    # A 503 is "not now" whatever its code (the daemon's connection and receive-bytes caps)...
    assert _retry_after(SandboxdError("queue_full", "too many connections", 1.0, status=503)) == 1.0
    # ...a 429 queue_full (the job queue is full) is final.
    full = SandboxdError("queue_full", "full", 1.0, status=429)
    for final in (SandboxdError("bad_request", "cmd"), SandboxdError("queue_full", "full", 1.0), full, ValueError()):
        assert _retry_after(final) is None
    r = Retry(first=0.1, factor=2, cap=1.0)
    assert all(0.05 <= r.backoff(0) <= 0.1 for _ in range(20))
    assert all(0.5 <= r.backoff(9) <= 1.0 for _ in range(20))  # capped
