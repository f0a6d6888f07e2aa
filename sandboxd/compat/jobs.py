"""Compat jobs: the spec union of both APIs and the one way a host runs one.

A spec is the API's validated request (Judge0's submission, Piston's execute
request), tagged by `api`.  It travels as msgpack: through the Service on a
host daemon, through Redis (fleet job kind "compat") in a fleet.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from sandboxd.compat import Compiler, judge0, piston
from sandboxd.engine.engine import Engine
from sandboxd.schema import JobInfo, RunResult, SubmissionResult, Verdict, check_box_path

Spec = judge0.Request | piston.Job
KIND = "compat"  # the fleet job kind

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(Spec)


def encode(spec: Spec) -> bytes:
    return _enc.encode(spec)


def decode(data: bytes) -> Spec:
    """Raises msgspec.DecodeError / ValidationError for a spec this version cannot
    read, SchemaError for a file path outside the box (the spec came through Redis)."""
    spec: Spec = _dec.decode(data)
    files = [*spec.extras] if isinstance(spec, judge0.Request) else [spec.entry, *spec.others]
    for f in files:
        check_box_path(f.path, "file")
    return spec


async def execute(
    engine: Engine, compiler: Compiler, spec: Spec, on_run: Callable[[Verdict, RunResult], None]
) -> SubmissionResult:
    if isinstance(spec, judge0.Request):
        return await judge0.run_job(engine, compiler, spec, on_run)
    return await piston.run_job(engine, compiler, spec, on_run)


def notifies(spec: Spec) -> bool:
    """Whether the job's final result is to be delivered (`finished`)."""
    return isinstance(spec, judge0.Request) and bool(spec.callback_url)


async def finished(job_id: str, spec: Spec, info: JobInfo, allow_private: bool) -> None:
    """What follows a compat job's final result, once readable: Judge0's callback."""
    if isinstance(spec, judge0.Request):
        await judge0.deliver_callback(job_id, spec, info, allow_private)
