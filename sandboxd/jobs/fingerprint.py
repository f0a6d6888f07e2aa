"""What makes two requests "the same" for an idempotency key, declared once:
a daemon (sandboxd.jobs.table, stored in its job store) and a fleet coordinator
(sandboxd.fleet.coordinator, stored in Redis) bind a key to this."""

from __future__ import annotations

import hashlib

import msgspec

Op = str  # what a job runs: its kind's stored name (sandboxd.jobs.kinds: "run", "submit", "compat")
Spec = msgspec.Struct  # any registered kind's spec

# Sorted: the same request always encodes the same way (a dict's keys in any
# order, JSON or msgpack on the wire: the decoded struct is what is encoded).
_canon = msgspec.msgpack.Encoder(order="sorted")


def fingerprint(op: Op, spec: Spec, callback_url: str | None) -> bytes:
    return hashlib.sha256(op.encode() + b"\0" + _canon.encode([spec, callback_url])).digest()
