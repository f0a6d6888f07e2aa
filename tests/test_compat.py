"""Judge0 CE and Piston v2 compatibility, against real servers and real clients from PyPI.

The official `judge0` SDK and the `ultra-piston` and `piston_rspy` clients are
used unchanged, pointed at the /judge0 and /piston prefixes of a host daemon
and, for every test again, of a coordinator in front of a fleet (Redis, a
host daemon, two coordinators); raw HTTP covers every field, status mapping
and error body.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import stat
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from typing import Any

import judge0
import msgspec
import piston_rspy
import pytest
from daemon_util import CallbackSink, Daemon, free_port
from fleet_util import Coordinator, Redis
from instances import inst
from judge0.base_types import Config as SdkConfig
from ultra_piston import File as PistonFile
from ultra_piston import PistonClient

from sandboxd.compat import judge0 as j0mod
from sandboxd.compat import piston as pmod
from sandboxd.schema import RunResult

SOURCES = {
    "c": '#include <stdio.h>\nint main(void){long a,b;scanf("%ld %ld",&a,&b);printf("%ld\\n",a+b);return 0;}\n',
    "cpp": "#include <iostream>\nint main(){long a,b;std::cin>>a>>b;std::cout<<a+b<<std::endl;}\n",
    "python": "a, b = map(int, input().split())\nprint(a + b)\n",
    "java": "import java.util.*;\npublic class Main{public static void main(String[] x){"
    "Scanner s=new Scanner(System.in);long a=s.nextLong(),b=s.nextLong();System.out.println(a+b);}}\n",
    "javascript": 'const [a,b]=require("fs").readFileSync(0,"utf8").trim().split(/\\s+/).map(Number);'
    "console.log(a+b);\n",
}
ALIASES = {
    "c": judge0.C,  # 50 in the SDK's table for 1.13.1
    "cpp": judge0.CPP,  # 52 (GCC 7.4.0's id): served by our g++
    "python": judge0.PYTHON,  # 71
    "java": judge0.JAVA,  # 62
    "javascript": judge0.JAVASCRIPT,  # 63
}
IDS = {"c": 50, "cpp": 54, "python": 71, "java": 62, "javascript": 63}


class FleetStack:
    """Both APIs through the fleet: a redis-server, one host daemon, two coordinators.
    `http` is the first coordinator's; the host is reached only through Redis."""

    def __init__(
        self,
        instance: str = inst("-compat-fleet"),
        pool_size: int = 4,
        env: dict[str, str] | None = None,
        first_coord_env: dict[str, str] | None = None,
    ) -> None:
        self.redis = Redis()
        self.coords: list[Coordinator] = []
        self.host: Daemon | None = None
        env = {**BODY_ENV, **(env or {})}
        try:
            host_env = {**env, "SANDBOXD_FLEET": self.redis.url, "SANDBOXD_FLEET_HOST_ID": "compat-host"}
            self.host = Daemon(instance, pool_size=pool_size, env=host_env)
            self.coords = [Coordinator(self.redis.url, {**env, **(first_coord_env or {})})]
            self.coords.append(Coordinator(self.redis.url, env))
            self.http = self.coords[0].http
            deadline = time.monotonic() + 20
            token = env.get("SANDBOXD_HTTP_TOKEN")
            auth = {"Authorization": f"Bearer {token}"} if token else {}
            while http(self, "GET", "/v1/hosts", headers=auth)[1] in ([], None):
                assert time.monotonic() < deadline, "the host did not join the fleet"
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> int:
        rc = 0
        for c in self.coords:
            rc |= c.stop()
        if self.host is not None:
            rc |= self.host.stop()
        self.redis.stop()
        return rc

    def output(self) -> str:
        return "\n".join(x.output() for x in (self.host, *self.coords) if x is not None)


Server = Daemon | FleetStack
BODY_ENV = {"SANDBOXD_MAX_BODY": str(4 << 20)}


@pytest.fixture(scope="module", params=["daemon", "fleet"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """Every test of the APIs runs against a host daemon and through a coordinator."""
    s: Server = Daemon(inst("-compat"), pool_size=4, env=BODY_ENV) if request.param == "daemon" else FleetStack()
    yield s
    assert s.stop() == 0, s.output()


@pytest.fixture(scope="module")
def client(server: Server) -> judge0.Client:
    return judge0.Client(f"{server.http}/judge0", headers={})


def http(
    d: Server | str,
    method: str,
    path: str,
    body: Any = None,
    ctype: str = "application/json",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    base = d if isinstance(d, str) else d.http
    req = urllib.request.Request(
        base + path, data=data, method=method, headers={"Content-Type": ctype, **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            raw, st = r.read(), r.status
    except urllib.error.HTTPError as e:
        raw, st = e.read(), e.code
    try:
        return st, json.loads(raw) if raw else None
    except ValueError:
        return st, raw.decode()


def submit(d: Server, fields: str = "*", b64: bool = False, **sub: Any) -> dict[str, Any]:
    q = f"?wait=true&fields={fields}" + ("&base64_encoded=true" if b64 else "")
    st, body = http(d, "POST", "/judge0/submissions" + q, sub)
    assert st == 201, body
    return body  # type: ignore[no-any-return]


def b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def unb64(s: str | None) -> bytes | None:
    return None if s is None else base64.b64decode(s.replace("\n", ""))


def zip_of(entries: dict[str, bytes], symlink: str | None = None) -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, "/etc/passwd")
    return base64.b64encode(buf.getvalue()).decode()


# --- the official Judge0 SDK, unchanged -------------------------------------------


def test_sdk_connects_and_reads_languages_statuses_config(client: judge0.Client) -> None:
    ids = {lang.id for lang in client.languages}
    assert {46, 48, 49, 50, 52, 53, 54, 60, 62, 63, 71, 73} <= ids
    assert client.version == "1.13.1"
    assert client.config.max_submission_batch_size == 20 and client.config.enable_network is False
    assert [s["id"] for s in client.get_statuses()] == list(range(1, 15))
    lang = client.get_language(71)
    assert lang.source_file == "main.py" and lang.compile_cmd is None and "python3" in (lang.run_cmd or "")
    assert client.get_language(50).compile_cmd.endswith(" %s")  # type: ignore[union-attr]


@pytest.mark.parametrize("lang", list(SOURCES))
def test_sdk_single_submission(client: judge0.Client, lang: str) -> None:
    sub = judge0.run(client=client, source_code=SOURCES[lang], language=ALIASES[lang], stdin="2 3", expected_output="5")
    assert sub.status == judge0.base_types.Status.ACCEPTED, (sub.status, sub.stderr, sub.compile_output)
    assert sub.stdout == "5\n" and sub.time is not None and sub.memory is not None and sub.memory > 0
    assert sub.created_at is not None and sub.finished_at is not None and sub.finished_at >= sub.created_at


@pytest.mark.parametrize("lang", list(SOURCES))
def test_sdk_batch_with_test_cases(client: judge0.Client, lang: str) -> None:
    cases = [("1 2", "3"), ("10 20", "30"), ("-5 5", "1"), ("7 8", "15")]
    subs = judge0.run(client=client, source_code=SOURCES[lang], language=IDS[lang], test_cases=cases)
    assert [s.status.value for s in subs] == [3, 3, 4, 3]
    assert [s.stdout for s in subs] == ["3\n", "30\n", "0\n", "15\n"]


def test_sdk_compile_error_and_runtime_error(client: judge0.Client) -> None:
    sub = judge0.run(client=client, source_code="int main(){ retrn 0; }", language=judge0.CPP)
    assert sub.status == judge0.base_types.Status.COMPILATION_ERROR
    assert "retrn" in (sub.compile_output or "") and sub.stdout is None and sub.time is None
    sub = judge0.run(client=client, source_code="import sys\nprint('x', file=sys.stderr)\nsys.exit(3)", language=71)
    assert sub.status == judge0.base_types.Status.RUNTIME_ERROR_NZEC and sub.exit_code == 3 and sub.stderr == "x\n"


def test_sdk_additional_files_and_async_flow(client: judge0.Client) -> None:
    fs = judge0.Filesystem(content=[judge0.filesystem.File(name="helper.py", content="def f():\n    return 42\n")])
    sub = judge0.Submission(source_code="import helper\nprint(helper.f())", language=71, additional_files=fs)
    sub = judge0.async_run(client=client, submissions=sub)
    assert sub.token is not None
    judge0.wait(client=client, submissions=sub)
    assert sub.status == judge0.base_types.Status.ACCEPTED and sub.stdout == "42\n"


def test_sdk_implicit_client_from_the_environment(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUDGE0_CE_ENDPOINT", f"{server.http}/judge0")
    monkeypatch.setenv("JUDGE0_CE_AUTH_HEADERS", "{}")
    monkeypatch.setattr(judge0, "JUDGE0_IMPLICIT_CE_CLIENT", None)
    sub = judge0.run(source_code="print(input()[::-1])", language=judge0.PYTHON, stdin="abc", expected_output="cba")
    assert sub.status == judge0.base_types.Status.ACCEPTED and sub.stdout == "cba\n"


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


def test_judge_run_mapping_of_every_status() -> None:
    req = j0mod.Request(
        language_id=71, lang="python3", source_code=b"", stdin=None, expected_output=b"x", compiler_options=None,
        command_line_arguments=None, number_of_runs=1, cpu_time_limit=1.0, cpu_extra_time=0.5, wall_time_limit=3,
        memory_limit=128000, stack_limit=64000, max_processes_and_or_threads=60,
        enable_per_process_and_thread_time_limit=False, enable_per_process_and_thread_memory_limit=False,
        max_file_size=1024, redirect_stderr_to_stdout=False, callback_url=None, additional_files=None,
        enable_network=False,
    )  # fmt: skip
    cases = [
        (RunResult("ok", exit_code=0, stdout=b"x \n"), (3, 0, None, None)),
        (RunResult("ok", exit_code=0, stdout=b"y"), (4, 0, None, None)),
        (RunResult("ok", exit_code=0, stdout=b"x", cpu_time=1.2), (5, 0, None, "Time limit exceeded")),
        (RunResult("time_limit", signal=9, cpu_time=1.5), (5, 0, 9, "Time limit exceeded")),
        (RunResult("time_limit", signal=9, message="wall time limit"), (5, 0, 9, "Time limit exceeded (wall clock)")),
        (RunResult("signaled", signal=11), (7, 0, 11, "Caught fatal signal 11")),
        (RunResult("signaled", signal=25), (8, 0, 25, "Caught fatal signal 25")),
        (RunResult("signaled", signal=8), (9, 0, 8, "Caught fatal signal 8")),
        (RunResult("signaled", signal=6), (10, 0, 6, "Caught fatal signal 6")),
        (RunResult("signaled", signal=15), (12, 0, 15, "Caught fatal signal 15")),
        (RunResult("nonzero_exit", exit_code=2), (11, 2, None, "Exited with error status 2")),
        (RunResult("memory_limit", signal=9), (12, 0, 9, "Memory limit exceeded")),
        (RunResult("memory_limit", exit_code=1), (11, 1, None, "Memory limit exceeded")),
        (RunResult("output_limit", signal=9, stdout_truncated=True), (8, 0, 25, "Output limit exceeded")),
        (RunResult("output_limit"), (8, 0, 25, "Output limit exceeded")),
        (RunResult("bad_syscall", signal=31), (12, 0, 31, "Caught fatal signal 31 (a forbidden system call)")),
        (RunResult("internal_error", message="the box failed"), (13, None, None, "the box failed")),
        (
            RunResult("nonzero_exit", exit_code=127, message="cannot execute './main': Exec format error"),
            (14, 127, None, "cannot execute './main': Exec format error"),
        ),
    ]
    for r, want in cases:
        assert j0mod.judge_run(r, req) == want, r


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


# --- Judge0 over HTTP: fields, encodings, options ------------------------------------


def test_fields_selection_and_formats(server: Server) -> None:
    r = submit(server, source_code="print(1)", language_id=71)
    assert tuple(r) == j0mod.ATTRIBUTES
    assert r["cpu_time_limit"] == "5.0" and r["cpu_extra_time"] == "1.0" and r["wall_time_limit"] == "10.0"
    assert r["memory_limit"] == 128000 and r["stack_limit"] == 64000 and r["max_processes_and_or_threads"] == 60
    assert r["number_of_runs"] == 1 and r["max_file_size"] == 1024 and r["enable_network"] is False
    assert r["language"]["id"] == 71 and r["language"]["name"].startswith("Python")
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.fullmatch(stamp, r["created_at"]) and re.fullmatch(stamp, r["finished_at"])
    assert re.fullmatch(r"\d+\.\d+", r["time"]) and re.fullmatch(r"\d+\.\d+", r["wall_time"])
    assert isinstance(r["memory"], int)
    token = r["token"]
    st, body = http(server, "GET", f"/judge0/submissions/{token}")
    assert tuple(body) == ("stdout", "time", "memory", "stderr", "token", "compile_output", "message", "status")
    st, body = http(server, "GET", f"/judge0/submissions/{token}?fields=exit_code,token,status_id,stdout")
    assert list(body) == ["stdout", "status_id", "token", "exit_code"]  # the serializer's order
    st, body = http(server, "GET", f"/judge0/submissions/{token}?fields=token,bogus,nope")
    assert (st, body) == (400, {"error": "invalid fields: [bogus, nope]"})
    assert http(server, "GET", "/judge0/submissions/00000000-0000-0000-0000-000000000000") == (404, None)


def test_base64_both_ways(server: Server) -> None:
    src = "import sys\nsys.stdout.buffer.write(bytes(range(256)) * 2)\nsys.stderr.write('e' * 100)"
    r = submit(server, b64=True, source_code=b64(src), language_id=71, stdin=b64("in"))
    assert all(len(line) <= 60 for line in r["stdout"].split("\n")) and r["stdout"].endswith("\n")  # Ruby's encode64
    assert unb64(r["stdout"]) == bytes(range(256)) * 2 and unb64(r["stderr"]) == b"e" * 100
    assert unb64(r["source_code"]) == src.encode() and unb64(r["stdin"]) == b"in"
    st, body = http(server, "GET", f"/judge0/submissions/{r['token']}")
    assert st == 400 and body == {"error": j0mod.NOT_UTF8}
    st, body = http(server, "POST", "/judge0/submissions?wait=true", {"source_code": src, "language_id": 71})
    assert st == 201 and body["error"] == j0mod.NOT_UTF8 and "token" in body
    # Judge0 decodes requests leniently (Ruby's decode64): invalid base64 is not an error.
    r = submit(server, b64=True, fields="status,source_code", source_code="cHJpbnQo!!!MSk=", language_id=71)
    assert unb64(r["source_code"]) == b"print(1)" and r["status"]["id"] == 3
    st, body = http(
        server, "POST", "/judge0/submissions?base64_encoded=true", {"source_code": "!!!", "language_id": 71}
    )
    assert st == 422 and body == {"source_code": ["can't be blank"]}


def test_number_of_runs_redirect_and_arguments(server: Server) -> None:
    r = submit(server, source_code="print(2)", language_id=71, number_of_runs=3, expected_output="2")
    assert r["status"]["id"] == 3 and r["number_of_runs"] == 3
    src = "import sys\nfor i in range(3):\n    print(i, flush=True)\n    print('e', i, file=sys.stderr, flush=True)"
    r = submit(server, source_code=src, language_id=71, redirect_stderr_to_stdout=True)
    assert r["stdout"] == "0\ne 0\n1\ne 1\n2\ne 2\n" and r["stderr"] is None and r["redirect_stderr_to_stdout"]
    src = "import sys\nprint(sys.argv[1:])"
    r = submit(server, source_code=src, language_id=71, command_line_arguments="a 'b c' x;y $HOME")
    assert r["stdout"] == "['a', 'b c', 'xy', 'HOME']\n"
    assert r["command_line_arguments"] == "a 'b c' x;y $HOME"
    r = submit(server, source_code=src, language_id=71, command_line_arguments="'unclosed")
    assert r["status"]["id"] == 11 and r["exit_code"] == 2 and "No closing quotation" in r["stderr"]
    r = submit(server, source_code="int main(){}", language_id=50, compiler_options='-D"X')
    assert r["status"]["id"] == 6 and "No closing quotation" in r["compile_output"]


def test_compiler_options(server: Server) -> None:
    src = '#include <stdio.h>\nint main(void){\n#ifdef FOO\nputs("foo");\n#else\nputs("bar");\n#endif\n}'
    assert submit(server, source_code=src, language_id=50, compiler_options="-DFOO")["stdout"] == "foo\n"
    assert submit(server, source_code=src, language_id=50)["stdout"] == "bar\n"
    cpp20 = "#include <iostream>\n#include <span>\nint main(){int a[]{1,2};std::span s{a};std::cout<<s.size();}"
    assert submit(server, source_code=cpp20, language_id=54, compiler_options="-std=c++20")["stdout"] == "2"
    st, body = http(
        server, "POST", "/judge0/submissions", {"source_code": "1", "language_id": 71, "compiler_options": "-O2"}
    )
    assert (st, body) == (
        422,
        {"compiler_options": ["setting compiler options is only allowed for compiled languages"]},
    )


def test_additional_files(server: Server) -> None:
    files = zip_of({"helper.py": b"X = 41\n", "data/in.txt": b"1\n"})
    src = "import helper\nprint(helper.X + int(open('data/in.txt').read()))"
    r = submit(server, source_code=src, language_id=71, additional_files=files)
    assert r["stdout"] == "42\n" and unb64(r["additional_files"]) == base64.b64decode(files)
    # A compiled program finds them at run time too (headers at compile time).
    files = zip_of({"v.h": b"#define V 7\n", "n.txt": b"5"})
    src = (
        '#include <stdio.h>\n#include "v.h"\n'
        'int main(void){int n;FILE*f=fopen("n.txt","r");fscanf(f,"%d",&n);printf("%d",n*V);}'
    )
    assert submit(server, source_code=src, language_id=50, additional_files=files)["stdout"] == "35"
    # The source file wins over an entry of the same name (unzip -n).
    r = submit(server, source_code="print('mine')", language_id=71, additional_files=zip_of({"main.py": b"print(0)"}))
    assert r["stdout"] == "mine\n"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (zip_of({"../escape.txt": b"x"}), "must stay inside /box"),
        (zip_of({"/etc/x": b"x"}), "must be relative to /box"),
        (zip_of({"ok.txt": b"x"}, symlink="link"), "'link' is not a regular file"),
        (zip_of({"big": b"\0" * (11 << 20)}), "declares 11264 KB uncompressed, more than 10240 KB"),
        (zip_of({"a": b"x", "a/b": b"y"}), "'a' is both a file and a directory"),
        (b64("not a zip"), "is not a valid zip archive"),
    ],
)
def test_additional_files_refused(server: Server, files: str, message: str) -> None:
    st, body = http(
        server, "POST", "/judge0/submissions", {"source_code": "1", "language_id": 71, "additional_files": files}
    )
    assert st == 422 and list(body) == ["additional_files"] and message in body["additional_files"][0], body


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


def test_oversize_body(server: Server) -> None:
    st, body = http(server, "POST", "/judge0/submissions", b"x" * (5 << 20))
    assert st == 413 and "larger than" in body["error"]
    st, body = http(server, "POST", "/piston/api/v2/execute", b"x" * (5 << 20))
    assert st == 400 and body["stack"].startswith("PayloadTooLargeError")


def test_compat_jobs_are_native_jobs(server: Server) -> None:
    token = submit(server, fields="token", source_code="print(1)", language_id=71, number_of_runs=2)["token"]
    st, job = http(server, "GET", f"/v1/jobs/{token}")
    assert st == 200 and job["kind"] == "submission" and job["result"]["verdict"] == "AC", job
    # Every run's times are kept (Judge0 averages them), only the last one's output.
    runs = job["result"]["runs"]
    assert [unb64(r["stdout"]) for r in runs] == [b"", b"1\n"] and all(r["cpu_time"] > 0 for r in runs)
    assert job["finished_at"] >= job["created_at"] > 0
    _, status = http(server, "GET", "/v1/status")
    assert status["jobs"].get("done", 0) >= 1
    host = server if isinstance(server, Daemon) else server.host
    assert host is not None
    _, metrics = http(host, "GET", "/metrics")
    assert 'sandboxd_verdicts_total{scope="submission",verdict="AC"}' in metrics


@pytest.mark.parametrize("mode", ["daemon", "fleet"])
def test_callback_is_a_put_of_the_default_fields_and_prefixes_are_configurable(mode: str) -> None:
    """Through a fleet, a coordinator PUTs it once Redis has the result, whatever
    made the job final (here: a result, then a cancel)."""
    sink = CallbackSink()
    env = {"SANDBOXD_CALLBACK_ALLOW_PRIVATE": "true", "SANDBOXD_JUDGE0_PREFIX": "/j0", "SANDBOXD_PISTON_PREFIX": ""}
    d: Server = (
        Daemon(inst("-compat-cb"), pool_size=1, env=env) if mode == "daemon" else FleetStack(inst("-compat-cb"), 1, env)
    )
    try:
        url = sink.url
        st, body = http(
            d, "POST", "/j0/submissions", {"source_code": "print('hi')", "language_id": 71, "callback_url": url}
        )
        assert st == 201
        [(method, payload)] = sink.wait(1)
        cb = json.loads(payload)
        assert method == "PUT" and tuple(cb) == (
            "stdout",
            "time",
            "memory",
            "stderr",
            "token",
            "compile_output",
            "message",
            "status",
        )
        assert cb["token"] == body["token"] and cb["stdout"] == "aGkK\n" and cb["status"]["id"] == 3
        # Delivered after the result was stored: what the callback said is what a GET reads.
        st, now = http(d, "GET", f"/j0/submissions/{body['token']}?base64_encoded=true")
        assert st == 200 and now == cb
        # A job that never gets a result (cancelled through the native API) still calls back.
        sleeper = {"source_code": "import time; time.sleep(30)", "language_id": 71, "callback_url": url}
        st, body = http(d, "POST", "/j0/submissions", sleeper)
        assert st == 201
        deadline = time.monotonic() + 30
        while http(d, "GET", f"/j0/submissions/{body['token']}?fields=status_id")[1]["status_id"] != 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert http(d, "DELETE", f"/v1/jobs/{body['token']}")[0] == 200
        cb = json.loads(sink.wait(2)[1][1])
        assert cb["token"] == body["token"] and cb["status"] == {"id": 13, "description": "Internal Error"}, cb
        assert base64.b64decode(cb["message"]) == b"cancelled" and len(sink.got) == 2
        assert http(d, "GET", "/judge0/about")[0] == 404 and http(d, "GET", "/piston/api/v2/runtimes")[0] == 404
    finally:
        d.stop()
        sink.close()


@pytest.mark.parametrize("mode", ["daemon", "fleet"])
def test_apis_on_listeners_of_their_own_with_the_bearer_token(mode: str) -> None:
    ports = {"judge0": free_port(), "piston": free_port()}
    own = {
        "SANDBOXD_JUDGE0_HTTP": f"127.0.0.1:{ports['judge0']}",
        "SANDBOXD_PISTON_HTTP": f"127.0.0.1:{ports['piston']}",
    }
    env = {"SANDBOXD_HTTP_TOKEN": "s3cret"}
    d: Server = (
        Daemon(inst("-compat-own"), pool_size=1, env={**env, **own})
        if mode == "daemon"
        else FleetStack(inst("-compat-own"), 1, env, first_coord_env=own)
    )
    auth = {"Authorization": "Bearer s3cret"}
    j0, pis = (f"http://127.0.0.1:{ports[api]}" for api in ("judge0", "piston"))
    try:
        assert http(j0, "GET", "/about")[0] == 401 and http(pis, "GET", "/api/v2/runtimes")[0] == 401
        st, about = http(j0, "GET", "/about", headers=auth)
        assert st == 200 and about["version"] == "1.13.1"
        client = judge0.Client(j0, headers=auth)  # a base URL without a path
        sub = judge0.run(client=client, source_code="print(6 * 7)", language=judge0.PYTHON)
        assert sub.status == judge0.base_types.Status.ACCEPTED and sub.stdout == "42\n"
        ex = {"language": "python", "version": "*", "files": [{"content": "print('OK')"}]}
        st, res = http(pis, "POST", "/api/v2/execute", ex, headers=auth)
        assert st == 200 and res["run"]["stdout"] == "OK\n", res
        # The main listener keeps its prefixes.
        assert http(d, "GET", "/judge0/about", headers=auth)[0] == 200
    finally:
        assert d.stop() == 0, d.output()


# --- through the fleet only ------------------------------------------------------

fleet_only = pytest.mark.parametrize("server", ["fleet"], indirect=True)


@fleet_only
def test_fleet_records_live_in_redis_and_any_coordinator_reads_them(server: FleetStack) -> None:
    subs = [{"source_code": f"print({i})", "language_id": 71} for i in range(3)]
    st, body = http(server, "POST", "/judge0/submissions/batch", {"submissions": subs})
    assert st == 201
    tokens = [t["token"] for t in body]
    other = server.coords[1].http  # not the coordinator that took them
    deadline = time.monotonic() + 30
    while True:
        req = urllib.request.Request(
            f"{other}/judge0/submissions/batch?tokens={','.join(tokens)}&fields=token,stdout,status_id"
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            got = json.loads(r.read())["submissions"]
        if all(g["status_id"] == 3 for g in got) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert got == [{"token": t, "stdout": f"{i}\n", "status_id": 3} for i, t in enumerate(tokens)]
    r = server.redis.client()
    assert r.hget(f"{{sandboxd}}:job:{tokens[0]}", "kind") == b"compat"
    st, _ = http(server, "DELETE", f"/judge0/submissions/{tokens[0]}")
    assert st == 200 and not r.exists(f"{{sandboxd}}:job:{tokens[0]}")
    assert http(server, "GET", f"/judge0/submissions/{tokens[0]}") == (404, None)
    assert http(server, "DELETE", f"/judge0/submissions/{tokens[0]}") == (404, None)
    # Language definitions travel in the host's entry, not in the operators' listing.
    hosts = http(server, "GET", "/v1/hosts")[1]
    assert hosts[0]["id"] == "compat-host" and "definitions" not in hosts[0]


@fleet_only
def test_fleet_compat_jobs_wait_in_queues_of_their_own(server: FleetStack) -> None:
    """In Queue while no host takes them, in a queue an older host never claims from."""
    assert http(server, "POST", "/v1/hosts/compat-host/drain")[0] == 200
    try:
        st, body = http(server, "POST", "/judge0/submissions", {"source_code": "print(5)", "language_id": 71})
        assert st == 201
        token = body["token"]
        st, seen = http(server, "GET", f"/judge0/submissions/{token}?fields=status,finished_at,created_at")
        assert seen["status"] == {"id": 1, "description": "In Queue"} and seen["finished_at"] is None
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", seen["created_at"])
        r = server.redis.client()
        assert r.zrange("{sandboxd}:q:python3||compat", 0, -1) == [token.encode()]
        assert r.zcard("{sandboxd}:q:python3|") == 0
    finally:
        assert http(server, "POST", "/v1/hosts/compat-host/undrain")[0] == 200
    deadline = time.monotonic() + 30
    while (got := http(server, "GET", f"/judge0/submissions/{token}?fields=status_id,stdout"))[1]["status_id"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert got == (200, {"stdout": "5\n", "status_id": 3})


# --- Piston ------------------------------------------------------------------------

OK_PROGRAMS = {
    "bash": "echo OK",
    "c": '#include <stdio.h>\nint main(void){printf("OK");return 0;}',
    "c++": '#include <iostream>\nint main(){std::cout<<"OK";}',
    "c++20": '#include <iostream>\n#include <span>\nint main(){int a[]{1};std::span s{a};std::cout<<"OK";}',
    "go": 'package main\nimport "fmt"\nfunc main(){fmt.Println("OK")}',
    "java": 'public class Main{public static void main(String[] a){System.out.println("OK");}}',
    "javascript": 'console.log("OK")',
    "python": 'print("OK")',
    "rust": 'fn main(){println!("OK");}',
}


def execute(d: Server, **body: Any) -> tuple[int, Any]:
    return http(d, "POST", "/piston/api/v2/execute", body)


def test_piston_runtimes_cover_every_language(server: Server) -> None:
    st, rts = http(server, "GET", "/piston/api/v2/runtimes")
    assert st == 200 and {rt["language"] for rt in rts} == set(OK_PROGRAMS)
    assert all(set(rt) <= {"language", "version", "aliases", "runtime"} for rt in rts)


@pytest.mark.parametrize("language", list(OK_PROGRAMS))
def test_piston_ok_program_per_language(server: Server, language: str) -> None:
    st, res = execute(server, language=language, version="*", files=[{"content": OK_PROGRAMS[language]}])
    assert st == 200 and "OK" in res["run"]["stdout"], res
    assert res["language"] == language and res["run"]["code"] == 0 and res["run"]["status"] is None
    assert list(res["run"]) == [
        "signal",
        "stdout",
        "stderr",
        "code",
        "output",
        "memory",
        "message",
        "status",
        "cpu_time",
        "wall_time",
    ]
    compiled = language in ("c", "c++", "c++20", "go", "java", "rust")
    assert ("compile" in res) == compiled and (not compiled or res["compile"]["code"] == 0)


def test_piston_with_ultra_piston_client(server: Server) -> None:
    client = PistonClient(base_url=f"{server.http}/piston/api/v2/", rate_limit=0.01)
    rts = client.get_runtimes()
    py = next(rt for rt in rts if rt.language == "python")
    out = client.post_execute(
        "python", py.version, PistonFile(content="import sys\nprint(sys.argv[1], input())"), stdin="x", args=["arg"]
    )
    assert out.run.stdout == "arg x\n" and out.run.code == 0 and out.compile is None and out.language == "python"
    out = client.post_execute("c", "*", PistonFile(name="main.c", content="int main(void){return 3;}"))
    assert out.compile is not None and out.compile.code == 0 and out.run.code == 3
    out = client.post_execute("cpp", "*", PistonFile(content="int main( {"))
    assert out.compile is not None and out.compile.code != 0 and out.run.model_dump() == out.compile.model_dump()


def test_piston_with_piston_rspy_client(server: Server) -> None:
    async def scenario() -> tuple[list[Any], Any]:
        client = piston_rspy.Client.with_url(f"{server.http}/piston/api/v2")
        rts = await client.fetch_runtimes()
        ex = piston_rspy.Executor(language="js", version="*", files=[piston_rspy.File(content="console.log(1+1)")])
        return rts, await client.execute(ex)

    rts, res = asyncio.run(scenario())
    assert any(rt.language == "javascript" for rt in rts)
    assert res.is_ok() and res.run.stdout == "2\n" and res.run.code == 0 and res.language == "javascript"


def test_piston_statuses(server: Server) -> None:
    def run(src: str, lang: str = "python", **kw: Any) -> dict[str, Any]:
        st, res = execute(server, language=lang, version="*", files=[{"content": src}], **kw)
        assert st == 200, res
        return res["run"]  # type: ignore[no-any-return]

    r = run("import sys\nprint('o')\nprint('e', file=sys.stderr)\nsys.exit(3)")
    assert (r["status"], r["code"], r["signal"], r["message"]) == ("RE", 3, None, "Exited with error status 3")
    assert r["output"] == "o\ne\n"
    r = run("int main(void){volatile int*p=0;*p=1;}", "c")
    assert (r["status"], r["code"], r["signal"]) == ("SG", None, "SIGSEGV")
    r = run("while True: pass", run_cpu_time=300)
    assert (r["status"], r["signal"], r["message"]) == ("TO", "SIGKILL", "Time limit exceeded")
    r = run("import time\ntime.sleep(3)", run_timeout=500)
    assert (r["status"], r["message"]) == ("TO", "Time limit exceeded (wall clock)")
    r = run("print('x' * (2 << 20))")
    assert (r["status"], r["signal"], r["message"]) == ("OL", "SIGKILL", "stdout length exceeded")
    r = run("import sys\nsys.stderr.write('x' * (2 << 20))")
    assert r["status"] == "EL"
    src = (
        "#include <stdlib.h>\n#include <string.h>\n"
        "int main(void){for(;;){char*p=malloc(1<<20);if(!p)return 3;memset(p,1,1<<20);}}"
    )
    r = run(src, "c", run_memory_limit=32 << 20)
    assert (r["status"], r["signal"], r["message"]) == ("SG", "SIGKILL", "Memory limit exceeded")
    assert r["memory"] >= 30 << 20


def test_piston_request_details(server: Server) -> None:
    st, res = execute(
        server, language="py", version="*", files=[{"content": "import sys\nprint(repr(sys.stdin.read()))"}], stdin="a"
    )
    assert res["run"]["stdout"] == "'a\\n'\n"  # Piston adds the trailing newline
    files = [
        {"name": "main.py", "content": "import util\nprint(util.X, open('d.bin','rb').read(), open('h.txt').read())"},
        {"name": "util.py", "content": b64("X = 5\n"), "encoding": "base64"},
        {"name": "d.bin", "content": "00ff", "encoding": "hex"},
        {"name": "/h.txt", "content": "h"},
    ]
    st, res = execute(server, language="python3", version="*", files=files)
    assert res["run"]["stdout"] == "5 b'\\x00\\xff' h\n", res
    st, res = execute(server, language="python", version="0.x || >=3", files=[{"content": "print(1)"}], args=["a"])
    assert st == 200
    st, res = execute(
        server,
        language="python",
        version="*",
        files=[{"content": "print(1)"}],
        run_memory_limit=-1,
        compile_memory_limit=-1,
    )
    assert st == 200 and res["run"]["stdout"] == "1\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "language is required as a string"),
        ({"language": "python"}, "version is required as a string"),
        ({"language": "python", "version": "*"}, "files is required as an array"),
        ({"language": "python", "version": "*", "files": [{}]}, "files[0].content is required as a string"),
        ({"language": "cobol", "version": "*", "files": [{"content": ""}]}, "cobol-* runtime is unknown"),
        ({"language": "python", "version": "99.x", "files": [{"content": ""}]}, "python-99.x runtime is unknown"),
        (
            {"language": "python", "version": "*", "files": [{"content": "", "encoding": "base64"}]},
            "files must include at least one utf8 encoded file",
        ),
        (
            {"language": "python", "version": "*", "files": [{"content": ""}], "run_timeout": 10**9},
            "run_timeout cannot exceed the configured limit of 61000",
        ),
        (
            {"language": "c", "version": "*", "files": [{"content": ""}], "compile_cpu_time": 10**9},
            "compile_cpu_time cannot exceed the configured limit of 10000",
        ),
        (
            {"language": "python", "version": "*", "files": [{"content": ""}], "run_cpu_time": -5},
            "run_cpu_time must be non-negative",
        ),
        (
            {"language": "python", "version": "*", "files": [{"content": ""}], "run_timeout": "1"},
            "If specified, run_timeout must be a number",
        ),
        (
            {"language": "python", "version": "*", "files": [{"content": ""}, {"name": "../x", "content": ""}]},
            'File path "../x" tries to escape parent directory: ../x',
        ),
    ],
)
def test_piston_errors(server: Server, body: dict[str, Any], message: str) -> None:
    st, res = http(server, "POST", "/piston/api/v2/execute", body)
    assert (st, res["message"]) == (400, message)


def test_piston_content_type_and_unknown_routes(server: Server) -> None:
    body = json.dumps({"language": "python", "version": "*", "files": [{"content": "1"}]}).encode()
    st, res = http(server, "POST", "/piston/api/v2/execute", body, ctype="text/plain")
    assert (st, res) == (415, {"message": "requests must be of type application/json"})
    st, res = http(server, "POST", "/piston/api/v2/execute", b"{nope")
    assert st == 400 and res["stack"].startswith("SyntaxError")
    assert http(server, "GET", "/piston/api/v2/nothing") == (404, {"message": "Not Found"})


def test_semver_selectors() -> None:
    yes = ["*", "3", "3.11", "3.11.2", "3.x", ">=3.10", "^3.1", "~3.11", "<4", "3.11.x", ">3.11.1", "1.x || 3.x", ""]
    no = ["2", "3.10", "3.11.3", ">3.11.2", "<3", "^3.12", "~3.10", "4.x", "x.y"]
    assert all(pmod.satisfies("3.11.2", s) for s in yes), [s for s in yes if not pmod.satisfies("3.11.2", s)]
    assert not any(pmod.satisfies("3.11.2", s) for s in no), [s for s in no if pmod.satisfies("3.11.2", s)]
    assert pmod.satisfies("0.2.5", "^0.2.1") and not pmod.satisfies("0.3.0", "^0.2.1")


def test_encodings_helpers() -> None:
    assert (
        j0mod.encode64(b"x" * 50)
        == base64.b64encode(b"x" * 50).decode()[:60] + "\n" + base64.b64encode(b"x" * 50).decode()[60:] + "\n"
    )
    assert j0mod.decode64("aGkK") == b"hi\n" and j0mod.decode64("aG!k\nK") == b"hi\n" and j0mod.decode64("aGk") == b"hi"
    assert j0mod.decimal(5) == "5.0" and j0mod.decimal(0.016) == "0.016" and j0mod.decimal(None) is None
    assert msgspec.json.decode(msgspec.json.encode(j0mod.CONFIG)) == j0mod.CONFIG
