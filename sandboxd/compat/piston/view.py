"""Piston's answer: stage objects from our run results.

Stage status mapping (how our run ended -> status, code, signal):

    ok               null, 0, null
    nonzero_exit     "RE", the exit code, null   (also an exec failure: 127)
    signaled         "SG", null, the signal's name
    bad_syscall      "SG", null, "SIGSYS"
    time_limit       "TO", null, "SIGKILL"       (message: wall clock or not)
    output_limit     "OL" (stdout) / "EL" (stderr), null, "SIGKILL"; a file past the
                     file-size limit: "SG", "SIGXFSZ"
    memory_limit     as the process ended ("SG" + SIGKILL for the OOM kill, "RE" for a
                     runtime's own out-of-memory exit), message "Memory limit exceeded"
    internal_error   "XX", null, null, with the message

`output` is stdout followed by stderr: the engine captures the streams
separately, so their interleaving is not kept.
"""

from __future__ import annotations

import signal
from typing import Any

from sandboxd.compat.piston.errors import PistonError
from sandboxd.compat.piston.request import Job
from sandboxd.schema import JobInfo, RunResult, SubmissionResult

# status, code, signal name, message: how the run ended, as a stage says it
Ending = tuple[str | None, int | None, str | None, str | None]


def _signame(n: int | None) -> str | None:
    if n is None:
        return None
    try:
        return signal.Signals(n).name
    except ValueError:
        return None


def _ending(r: RunResult) -> Ending:
    code, sig = r.exit_code, _signame(r.signal)
    if r.status == "ok":
        return None, 0, sig, None
    if r.status == "nonzero_exit":
        return "RE", code, sig, f"Exited with error status {r.exit_code}"
    if r.status == "signaled":
        return "SG", code, sig, f"Caught fatal signal {r.signal}"
    if r.status == "bad_syscall":
        return "SG", code, "SIGSYS", f"Caught fatal signal {signal.SIGSYS.value}"
    if r.status == "time_limit":
        message = "Time limit exceeded (wall clock)" if "wall" in r.message else "Time limit exceeded"
        return "TO", None, "SIGKILL", message
    if r.status == "output_limit":
        return _output_limit(r, code, sig)
    if r.status == "memory_limit":
        return "SG" if r.signal is not None else "RE", code, sig, "Memory limit exceeded"
    return "XX", None, None, r.message or "internal error"


def _output_limit(r: RunResult, code: int | None, sig: str | None) -> Ending:
    if r.stdout_truncated or r.stderr_truncated:
        status = "OL" if r.stdout_truncated else "EL"
        message = "stdout length exceeded" if r.stdout_truncated else "stderr length exceeded"
        return status, None, "SIGKILL", message
    return "SG", None, "SIGXFSZ", f"Caught fatal signal {signal.SIGXFSZ.value}"


def stage(r: RunResult) -> dict[str, Any]:
    """A Piston stage object from one of our results."""
    status, code, sig, message = _ending(r)
    if status in ("SG", "TO", "OL", "EL"):
        code = None
    out = r.stdout.decode("utf-8", errors="replace")
    err = r.stderr.decode("utf-8", errors="replace")
    return {
        "signal": sig,
        "stdout": out,
        "stderr": err,
        "code": code,
        "output": out + err,
        "memory": r.memory,
        "message": message,
        "status": status,
        "cpu_time": round(r.cpu_time * 1000),
        "wall_time": round(r.wall_time * 1000),
    }


def response(job: Job, info: JobInfo) -> dict[str, Any]:
    """Piston's answer for a final job; PistonError if the job itself failed."""
    res = info.result
    if info.state != "done" or not isinstance(res, SubmissionResult):
        err = info.error
        message = err.message if err is not None else info.state
        code = err.code if err is not None else "internal"
        raise PistonError({"queue_full": 503, "draining": 503, "bad_request": 400}.get(code, 500), message)
    out: dict[str, Any] = {}
    if res.compile is not None:
        out["compile"] = stage(res.compile)
    # Piston: the run stage repeats the compile stage "for backward compatibility
    # when the run stage is not started".
    out["run"] = stage(res.runs[0]) if res.runs else out.get("compile", _internal(res.message))
    out.update(language=job.language, version=job.version)
    return out


def _internal(message: str) -> dict[str, Any]:
    return stage(RunResult("internal_error", message=message or "internal error"))
