"""The event stream's own bounds (sandboxd/api/sse.py): a slow reader's queue drops its
oldest test events, never the final one; the daemon-wide cap refuses with Retry-After."""

from __future__ import annotations

import asyncio

from sandboxd.api import sse
from sandboxd.api.inbound import default


class Sink:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.chunks.append(data)


def test_a_slow_readers_queue_drops_the_oldest_tests_and_keeps_the_result() -> None:
    s = sse._Stream()
    for i in range(sse.EVENT_QUEUE + 10):
        s.put(sse.encode("test", {"index": i}))
    s.end(sse.encode("result", {"verdict": "AC"}))
    sink = Sink()
    asyncio.run(s.pump(sink, 5.0))  # type: ignore[arg-type]
    out = b"".join(sink.chunks).decode()
    indexes = [int(line.split(":")[-1].rstrip("}")) for line in out.splitlines() if line.startswith('data: {"index"')]
    assert indexes == list(range(10, sse.EVENT_QUEUE + 10))
    assert out.endswith('event: result\ndata: {"verdict":"AC"}\n\n')


def test_the_stream_cap_refuses_with_retry_after() -> None:
    inbound = default()
    assert sse.refusal(inbound) is None
    inbound.event_streams = inbound.max_event_streams
    err = sse.refusal(inbound)
    assert err is not None and err.code == "queue_full" and err.retry_after and "max_event_streams" in err.message
