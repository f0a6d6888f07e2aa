"""Judge0 over HTTP: the model's validation messages, limits reaching the run,
callbacks refused, batches, and the information endpoints."""

from __future__ import annotations

import time
from typing import Any

from daemon_util import Daemon
from judge0.base_types import Config as SdkConfig

from compat.util import Server, http, submit


def test_validation_errors_are_judge0s(server: Server) -> None:
    def post(sub: dict[str, Any]) -> tuple[int, Any]:
        return http(server, "POST", "/judge0/submissions", sub)

    assert post({"source_code": "1", "language_id": 150000}) == (
        422,
        {"language_id": ["language with id 150000 doesn't exist"]},
    )
    assert post({"source_code": "1"}) == (422, {"language_id": ["can't be blank", "language with id  doesn't exist"]})
    assert post({"source_code": "  ", "language_id": 89}) == (
        422,
        {"source_code": ["can't be blank"], "language_id": ["language with id 89 doesn't exist"]},
    )
    too_much = {
        "number_of_runs": 21, "cpu_time_limit": 15.5, "cpu_extra_time": 6, "wall_time_limit": 21,
        "memory_limit": 512001, "stack_limit": 128001, "max_processes_and_or_threads": 121, "max_file_size": 4097,
    }  # fmt: skip
    assert post({"source_code": "1", "language_id": 71, **too_much}) == (
        422,
        {
            "number_of_runs": ["must be less than or equal to 20"],
            "cpu_time_limit": ["must be less than or equal to 15.0"],
            "cpu_extra_time": ["must be less than or equal to 5.0"],
            "wall_time_limit": ["must be less than or equal to 20.0"],
            "memory_limit": ["must be less than or equal to 512000"],
            "stack_limit": ["must be less than or equal to 128000"],
            "max_processes_and_or_threads": ["must be less than or equal to 120"],
            "max_file_size": ["must be less than or equal to 4096"],
        },
    )
    too_little = {"number_of_runs": 0, "cpu_time_limit": -1, "wall_time_limit": 0.5, "memory_limit": 2047,
                  "max_processes_and_or_threads": 0, "stack_limit": "abc"}  # fmt: skip
    assert post({"source_code": "1", "language_id": 71, **too_little}) == (
        422,
        {
            "number_of_runs": ["must be greater than 0"],
            "cpu_time_limit": ["must be greater than or equal to 0"],
            "wall_time_limit": ["must be greater than or equal to 1"],
            "memory_limit": ["must be greater than or equal to 2048"],
            "stack_limit": ["is not a number"],
            "max_processes_and_or_threads": ["must be greater than 0"],
        },
    )
    assert post({"source_code": "1", "language_id": 71, "enable_network": True}) == (
        422,
        {"enable_network": ["enabling network is not allowed"]},
    )
    assert post({"source_code": "1", "language_id": 71, "enable_per_process_and_thread_time_limit": True}) == (
        422,
        {"enable_per_process_and_thread_time_limit": ["this option cannot be enabled"]},
    )
    assert post({"source_code": "1", "language_id": 71, "command_line_arguments": "x" * 513}) == (
        422,
        {"command_line_arguments": ["is too long (maximum is 512 characters)"]},
    )
    # Numbers as strings, unknown keys and non-scalar values are what Rails makes of them.
    st, _ = post({"source_code": "print(1)", "language_id": "71", "cpu_time_limit": "2", "bogus": 1, "stdin": [1]})
    assert st == 201


def test_limits_reach_the_run(server: Server) -> None:
    src = "import resource\nprint(resource.getrlimit(resource.RLIMIT_STACK)[0] // 1024)"
    r = submit(server, source_code=src, language_id=71, stack_limit=8000, memory_limit=100000)
    assert r["stdout"] == "8000\n" and r["stack_limit"] == 8000 and r["memory_limit"] == 100000
    fork = (
        "import os, time\nn=0\ntry:\n    for _ in range(50):\n"
        "        if os.fork()==0: time.sleep(2); os._exit(0)\n        n+=1\nexcept OSError: pass\nprint(n)"
    )
    r = submit(server, source_code=fork, language_id=71, max_processes_and_or_threads=5)
    assert int(r["stdout"]) < 50


def test_private_callback_is_refused(server: Server) -> None:
    for url in ("http://127.0.0.1:9/cb", "http://169.254.169.254/latest", "file:///etc/passwd"):
        st, body = http(
            server, "POST", "/judge0/submissions", {"source_code": "1", "language_id": 71, "callback_url": url}
        )
        assert st == 422 and list(body) == ["callback_url"], body


def test_batches(server: Server) -> None:
    subs = [{"source_code": "print(1)", "language_id": 71}, {"source_code": "print(2)", "language_id": 9999}]
    st, body = http(server, "POST", "/judge0/submissions/batch", {"submissions": subs})
    assert st == 201 and "token" in body[0] and body[1] == {"language_id": ["language with id 9999 doesn't exist"]}
    st, body = http(server, "POST", "/judge0/submissions/batch", {"submissions": subs[1:]})
    assert st == 422 and body == [{"language_id": ["language with id 9999 doesn't exist"]}]
    st, body = http(server, "POST", "/judge0/submissions/batch", {"submissions": subs[:1] * 21})
    assert (st, body) == (400, {"error": "number of submissions in a batch should be less than or equal to 20"})
    st, body = http(server, "POST", "/judge0/submissions/batch", {"submissions": []})
    assert (st, body) == (400, {"error": "there should be at least one submission in a batch"})
    st, body = http(server, "POST", "/judge0/submissions/batch", {"submissions": subs[:1] * 3})
    tokens = [t["token"] for t in body]
    time.sleep(0.5)
    st, body = http(server, "GET", f"/judge0/submissions/batch?tokens={','.join([*tokens, 'nope'])}&fields=token")
    assert st == 200 and body["submissions"][:3] == [{"token": t} for t in tokens] and body["submissions"][3] is None
    st, body = http(server, "GET", "/judge0/submissions/batch?tokens=" + ",".join(["x"] * 21))
    assert st == 400
    assert http(server, "GET", "/judge0/submissions/batch")[0] == 400


def test_information_endpoints(server: Server) -> None:
    st, statuses = http(server, "GET", "/judge0/statuses")
    assert statuses[2] == {"id": 3, "description": "Accepted"} and len(statuses) == 14
    st, cfg = http(server, "GET", "/judge0/config_info")
    assert set(cfg) == set(SdkConfig.model_fields) and SdkConfig(**cfg).max_number_of_runs == 20
    st, langs = http(server, "GET", "/judge0/languages/all")
    assert all(x["is_archived"] is False for x in langs)
    assert http(server, "GET", "/judge0/languages/4242") == (404, None)
    st, lang = http(server, "GET", "/judge0/languages/62")
    assert lang["source_file"] == "Main.java" and "javac" in lang["compile_cmd"]
    assert http(server, "GET", "/judge0/version") == (200, "1.13.1")
    st, info = http(server, "GET", "/judge0/system_info")
    assert st == 200 and int(info["CPU(s)"]) >= 1 and "Mem" in info
    st, workers = http(server, "GET", "/judge0/workers")
    # A daemon's rows are its pools; a fleet's are its hosts.
    assert workers[0]["queue"] == ("host" if isinstance(server, Daemon) else "compat-host")
    assert workers[0]["available"] == 4
    assert http(server, "GET", "/judge0/submissions")[0] == 403
