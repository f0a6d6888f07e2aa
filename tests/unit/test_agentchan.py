"""The daemon's end of the agent channel, against a real SOCK_SEQPACKET pair
(no agent: the other end plays one)."""

from __future__ import annotations

import array
import asyncio
import os
import socket

import pytest

from sandboxd.sandbox import agentproto as proto
from sandboxd.sandbox.agentchan import AgentDied, Channel


async def _reply(data: bytes, fds: list[int] | None = None) -> tuple[bytes, list[int]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    chan = Channel(ours)
    try:
        fut = chan.expect()
        if fds:
            theirs.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _ints(fds))])
        else:
            theirs.send(data)
        return await asyncio.wait_for(fut, 5)
    finally:
        chan.close()
        theirs.close()


def _ints(fds: list[int]) -> bytes:
    return array.array("i", fds).tobytes()


def test_a_reply_up_to_max_reply_arrives_whole() -> None:
    data = proto.KIND.pack(proto.MSG_ERROR) + b"e" * (proto.MAX_REPLY - 4)
    got, fds = asyncio.run(_reply(data))
    assert got == data and fds == []


def test_a_reply_past_max_reply_kills_the_channel_not_a_truncated_read() -> None:
    # (a longer packet would be cut silently: the agent is broken, not its reply short)
    with pytest.raises(AgentDied, match="over"):
        asyncio.run(_reply(proto.KIND.pack(proto.MSG_RESULT) + b"r" * proto.MAX_REPLY))


def test_a_reply_fd_arrives() -> None:
    r, w = os.pipe()
    try:
        got, fds = asyncio.run(_reply(proto.KIND.pack(proto.MSG_READY), [r]))
        assert got == proto.KIND.pack(proto.MSG_READY) and len(fds) == 1
        os.write(w, b"x")
        assert os.read(fds[0], 1) == b"x"
        os.close(fds[0])
    finally:
        os.close(r)
        os.close(w)
