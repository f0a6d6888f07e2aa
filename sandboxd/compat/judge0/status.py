"""How a run ended, as the Judge0 status, exit_code, exit_signal and message it reports.

    ok, output matches (or no expected_output)  3 Accepted
    ok, output differs                           4 Wrong Answer
    time_limit, or CPU time above cpu_time_limit 5 Time Limit Exceeded
    the compiler failed                          6 Compilation Error (compile_output)
    signaled by SIGSEGV/SIGXFSZ/SIGFPE/SIGABRT   7/8/9/10, exit_signal = the signal
    signaled by any other signal                 12 Runtime Error (Other)
    nonzero_exit                                 11 Runtime Error (NZEC), exit_code
    output_limit (a stream passed max_file_size) 8 Runtime Error (SIGXFSZ), exit_signal 25
    memory_limit                                 as the process ended: 12 (the OOM kill is
                                                 SIGKILL) or 11 (a runtime's own out-of-memory
                                                 error exits nonzero); message
                                                 "Memory limit exceeded"
    bad_syscall (seccomp)                        12 Runtime Error (Other), exit_signal 31
    exec failure (exit 127, "cannot execute")    14 Exec Format Error
    internal_error, a failed or cancelled job    13 Internal Error (message says why)

Memory: Judge0 has no memory-limit status; under its cgroup memory limit an
out-of-memory program is killed by SIGKILL, which Judge0's own status logic
(`determine_status`: a signal other than SEGV/XFSZ/FPE/ABRT) reports as 12
"Runtime Error (Other)", and a runtime that catches its own out-of-memory
error (Java, Python, Node) exits nonzero: 11 NZEC.  We report exactly that,
so clients see the status Judge0 would give the same program, and say
"Memory limit exceeded" in `message` (Judge0 leaves it to the client to
compare `memory` with `memory_limit`).  Signals are reported as Judge0's
status table defines them (7-10, 12), from the signal that ended the program;
Judge0 1.13.1 itself runs programs under a bash script, so a signal death
there often surfaces as 11 with exit code 128+N instead.

`outcome` is what Judge0 stores of a submission after its worker ran, derived
from the job's state and result each time it is read.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandboxd.compat.judge0.casts import words
from sandboxd.compat.judge0.request import Request
from sandboxd.compat.judge0.tables import SIGNAL_STATUS, KiB
from sandboxd.judging.judge import compile_verdict
from sandboxd.schema import JobInfo, RunResult, SubmissionResult

Judged = tuple[int, int | None, int | None, str | None]  # status id, exit_code, exit_signal, message


def judge_run(r: RunResult, req: Request) -> Judged:
    """(status id, exit_code, exit_signal, message) of one run, as Judge0 would report it."""
    code = r.exit_code if r.exit_code is not None else 0  # Judge0: `exitcode || 0`
    if r.status == "internal_error":
        return 13, None, None, r.message or "internal error"
    over_time = req.cpu_time_limit > 0 and r.cpu_time > req.cpu_time_limit
    if r.status == "time_limit" or over_time:
        wall = r.status == "time_limit" and "wall" in r.message
        return 5, code, r.signal, "Time limit exceeded (wall clock)" if wall else "Time limit exceeded"
    failed = _failed(r, code)
    if failed is not None:
        return failed
    if req.expected_output is None or strip(req.expected_output) == strip(r.stdout or None):
        return 3, code, None, None
    return 4, code, None, None


def _failed(r: RunResult, code: int) -> Judged | None:
    """A run that did not end well, other than by a time limit; None: it exited 0."""
    sig = r.signal
    if r.status == "nonzero_exit" and r.exit_code == 127 and r.message.startswith("cannot execute"):
        return 14, code, None, r.message
    if r.status == "memory_limit":
        if sig is not None:
            return SIGNAL_STATUS.get(sig, 12), code, sig, "Memory limit exceeded"
        return 11, code, None, "Memory limit exceeded"
    if r.status == "output_limit":
        return 8, code, 25, "Output limit exceeded"  # isolate's -f ends the program with SIGXFSZ
    if r.status == "bad_syscall":
        return 12, code, sig, f"Caught fatal signal {sig} (a forbidden system call)"
    if r.status == "signaled":
        assert sig is not None
        return SIGNAL_STATUS.get(sig, 12), code, sig, f"Caught fatal signal {sig}"
    if r.status == "nonzero_exit":
        return 11, code, None, f"Exited with error status {r.exit_code}"
    return None


_WS = b" \t\n\v\f\r\0"  # what Ruby's rstrip removes


def strip(text: bytes | None) -> bytes | None:
    """isolate_job.rb's `strip`: each line right-stripped, joined, right-stripped; a text
    that is not UTF-8 is compared as it is (Ruby's split raises, the rescue returns it)."""
    if text is None:
        return None
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return text
    return b"\n".join(line.rstrip(_WS) for line in text.split(b"\n")).rstrip(_WS)


@dataclass
class Outcome:
    """What Judge0 stores of a submission after its worker ran: derived from the
    job's state and result, never kept on its own (so every replica shows the same)."""

    status_id: int = 1
    stdout: bytes | None = None
    stderr: bytes | None = None
    compile_output: bytes | None = None
    message: str | None = None
    exit_code: int | None = None
    exit_signal: int | None = None
    time: float | None = None
    wall_time: float | None = None
    memory: int | None = None

    @property
    def pending(self) -> bool:
        return self.status_id in (1, 2)


def outcome(req: Request, info: JobInfo) -> Outcome:
    if info.state in ("queued", "running"):
        return Outcome(status_id=1 if info.state == "queued" else 2)
    res = info.result
    if info.state != "done" or not isinstance(res, SubmissionResult):
        return Outcome(status_id=13, message=info.error.message if info.error is not None else info.state)
    shell = _shell_error(req)
    if shell is not None:
        return shell
    o = Outcome()
    c = res.compile
    if c is not None:
        o.compile_output = (c.stdout + c.stderr) or None
    if not res.runs:
        return _compile_failed(o, res)
    return _ran(o, req, res)


def _shell_error(req: Request) -> Outcome | None:
    """Options or arguments bash could not parse: Judge0's compile.sh / run.sh failed."""
    try:
        words(req.compiler_options)
    except ValueError as e:
        return Outcome(status_id=6, compile_output=f"compile.sh: compiler_options: {e}\n".encode())
    try:
        words(req.command_line_arguments)
    except ValueError as e:
        stderr = f"run.sh: command_line_arguments: {e}\n".encode()
        return Outcome(status_id=11, exit_code=2, message="Exited with error status 2", stderr=stderr)
    return None


def _compile_failed(o: Outcome, res: SubmissionResult) -> Outcome:
    c = res.compile
    if c is None or compile_verdict(c) == "IE":  # the one CE/IE rule (sandboxd.judging.judge)
        o.status_id, o.message = 13, (c.message if c is not None else res.message) or "internal error"
        return o
    if c.status == "time_limit":
        o.compile_output = b"Compilation time limit exceeded."
    o.status_id = 6
    return o


def _ran(o: Outcome, req: Request, res: SubmissionResult) -> Outcome:
    last = res.runs[-1]
    o.status_id, o.exit_code, o.exit_signal, o.message = judge_run(last, req)
    o.stdout = last.stdout or None
    o.stderr = None if req.redirect_stderr_to_stdout else (last.stderr or None)
    # Judge0 averages time and memory over the runs it made (memory is an integer column).
    o.time = sum(r.cpu_time for r in res.runs) / len(res.runs)
    o.memory = int(sum(r.memory // KiB for r in res.runs) / len(res.runs))
    o.wall_time = last.wall_time
    return o
