"""Judge0 over HTTP: how each way a program ends maps to Judge0's statuses, exit
codes, signals and messages, and Judge0's output comparison rule."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from compat.util import Server, http, submit
from sandboxd.compat import judge0 as j0mod

# --- Judge0 over HTTP: statuses -------------------------------------------------

C_PROGRAMS = {
    7: "int main(void){volatile int *p=0; *p=1; return 0;}",
    9: "int main(void){volatile int a=7, z=0; return a/z;}",
    10: "#include <stdlib.h>\nint main(void){abort();}",
    12: "#include <signal.h>\nint main(void){raise(SIGUSR1); return 0;}",
}


@pytest.mark.parametrize(("status", "signal"), [(7, 11), (9, 8), (10, 6), (12, 10)])
def test_signals_map_to_judge0_runtime_errors(server: Server, status: int, signal: int) -> None:
    r = submit(server, source_code=C_PROGRAMS[status], language_id=50)
    assert r["status"] == {"id": status, "description": j0mod.STATUSES[status]}
    assert r["exit_signal"] == signal and r["exit_code"] == 0 and r["message"] == f"Caught fatal signal {signal}"


def test_accepted_wrong_answer_nzec(server: Server) -> None:
    r = submit(server, source_code="print(input())", language_id=71, stdin="a", expected_output="a")
    assert r["status"]["id"] == 3 and r["exit_code"] == 0 and r["message"] is None
    r = submit(server, source_code="print(input())", language_id=71, stdin="a", expected_output="b")
    assert r["status"]["id"] == 4 and r["stdout"] == "a\n"
    r = submit(server, source_code="raise SystemExit(7)", language_id=71)
    assert r["status"]["id"] == 11 and r["exit_code"] == 7 and r["message"] == "Exited with error status 7"


def test_time_limits_cpu_wall_and_extra_time(server: Server) -> None:
    r = submit(server, source_code="while True: pass", language_id=71, cpu_time_limit=0.5, cpu_extra_time=0)
    assert r["status"]["id"] == 5 and r["message"] == "Time limit exceeded" and float(r["time"]) >= 0.5
    r = submit(server, source_code="import time\ntime.sleep(5)", language_id=71, wall_time_limit=1)
    assert r["status"]["id"] == 5 and r["message"] == "Time limit exceeded (wall clock)"
    # Past cpu_time_limit but within the extra time: not killed, still over the limit (isolate's -x).
    spin = "import time\nt=time.process_time()\nwhile time.process_time()-t<0.7: pass\nprint('done')"
    r = submit(server, source_code=spin, language_id=71, cpu_time_limit=0.3, cpu_extra_time=2)
    assert r["status"]["id"] == 5 and r["stdout"] == "done\n" and float(r["time"]) > 0.3


def test_memory_limit_is_a_runtime_error_with_a_message(server: Server) -> None:
    src = (
        "#include <stdlib.h>\n#include <string.h>\n"
        "int main(void){for(;;){char*p=malloc(1<<20); if(!p) return 3; memset(p,1,1<<20);}}"
    )
    r = submit(server, source_code=src, language_id=50, memory_limit=32000)
    # Killed by the kernel's OOM killer (SIGKILL): what Judge0's status logic calls Runtime Error (Other).
    assert r["status"]["id"] == 12 and r["exit_signal"] == 9 and r["message"] == "Memory limit exceeded"
    assert r["memory"] >= 30000
    r = submit(server, source_code="x = bytearray(200 << 20)", language_id=71, memory_limit=32000)
    assert r["status"]["id"] in (11, 12) and r["message"] == "Memory limit exceeded"


def test_output_limit_is_sigxfsz(server: Server) -> None:
    r = submit(server, source_code="print('x' * 5000)", language_id=71, max_file_size=1)
    assert r["status"]["id"] == 8 and r["exit_signal"] == 25 and r["max_file_size"] == 1
    assert len(r["stdout"]) <= 1024


def test_compile_error_and_in_queue_processing_and_delete(server: Server) -> None:
    r = submit(server, source_code="int main( {", language_id=54)
    assert r["status"]["id"] == 6 and "error" in r["compile_output"]
    assert r["time"] is None and r["memory"] is None and r["stdout"] is None and r["exit_code"] is None
    st, body = http(
        server, "POST", "/judge0/submissions", {"source_code": "import time; time.sleep(1)", "language_id": 71}
    )
    assert st == 201 and set(body) == {"token"}
    token = body["token"]
    st, body = http(server, "GET", f"/judge0/submissions/{token}?fields=status,finished_at")
    assert body["status"]["id"] in (1, 2) and body["finished_at"] is None
    st, body = http(server, "DELETE", f"/judge0/submissions/{token}")
    assert st == 400 and re.fullmatch(r"submission cannot be deleted because its status is [12] \(.+\)", body["error"])
    deadline = time.monotonic() + 30
    while http(server, "GET", f"/judge0/submissions/{token}")[1]["status"]["id"] in (1, 2):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    st, body = http(server, "DELETE", f"/judge0/submissions/{token}?fields=status,stdout")
    assert st == 200 and body == {"stdout": None, "status": {"id": 3, "description": "Accepted"}}
    assert http(server, "GET", f"/judge0/submissions/{token}") == (404, None)


@pytest.mark.parametrize(
    ("stdout", "expected", "status"),
    [
        ("3\n", "3", 3),
        ("3", "3\n\n", 3),
        ("3 \n", "3", 3),
        ("a \nb\n", "a\nb", 3),
        ("3\r\n", "3", 3),
        (" 3\n", "3", 4),
        ("a\n\nb\n", "a\nb", 4),
        ("", "", 4),  # Judge0: empty stdout is nil, "" is not nil
        ("x", None, 3),
    ],
)
def test_output_comparison_rule(server: Server, stdout: str, expected: str | None, status: int) -> None:
    sub: dict[str, Any] = {"source_code": f"import sys\nsys.stdout.write({stdout!r})", "language_id": 71}
    if expected is not None:
        sub["expected_output"] = expected
    assert submit(server, fields="status", **sub)["status"]["id"] == status
