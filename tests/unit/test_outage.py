"""fleet.outage.transient: which errors are a Redis outage the fleet's loops
and the coordinator's requests ride out (503/draining, retried), and which
are bugs raised as they are."""

from __future__ import annotations

import asyncio

import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from sandboxd.fleet.outage import transient


async def _write_after_the_peer_closed() -> BaseException:
    """What uvloop raises when a client (redis-py) writes on a connection that
    is already closed, as one to a killed Redis is: made for real, on loopback."""
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        writer.transport.abort()
        await asyncio.sleep(0)
        try:
            writer.write(b"*1\r\n$4\r\nPING\r\n")
        except Exception as e:
            return e
        raise AssertionError("uvloop wrote on a closed transport without an error")
    finally:
        server.close()


def test_a_write_on_a_connection_redis_closed_is_an_outage() -> None:
    # CI: a client's call spanning a Redis restart got "internal error: unable
    # to perform operation on <TCPTransport closed=True ...>; the handler is
    # closed" instead of a 503 it would have retried.
    e = uvloop.run(_write_after_the_peer_closed())
    assert isinstance(e, RuntimeError) and not isinstance(e, OSError), e
    assert transient(e)


def test_outages_and_bugs_are_told_apart() -> None:
    assert transient(RedisConnectionError("Connection refused"))
    assert transient(ResponseError("LOADING Redis is loading the dataset in memory"))
    assert not transient(ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"))
    assert not transient(RuntimeError("dictionary changed size during iteration"))
    assert not transient(ValueError("bad data"))
