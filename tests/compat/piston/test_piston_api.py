"""Piston v2 over HTTP and through the `ultra-piston` and `piston_rspy` clients from
PyPI: runtimes, one program per language, stage statuses, request details, errors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import piston_rspy
import pytest
from daemon_util import Daemon, free_port
from instances import inst
from ultra_piston import File as PistonFile
from ultra_piston import PistonClient

from compat.util import BODY_ENV, Server, b64, http

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


def test_piston_java_runs_any_public_class(server: Server) -> None:
    # Piston's own package test for Java (packages/java/*/test.java), under its file name.
    src = 'public class HelloWorld {\n  public static void main(String[] args) {\n    System.out.println("OK");\n  }\n}'
    st, res = execute(server, language="java", version="*", files=[{"name": "test.java", "content": src}])
    assert st == 200 and res["compile"]["code"] == 0 and res["run"]["stdout"] == "OK\n", res
    pkg = "package judge.sol;\n// public class Decoy {}\npublic final class Sol { public static void main(String[] a) {"
    st, res = execute(server, language="java", version="*", files=[{"content": pkg + ' System.out.print("P"); } }'}])
    assert st == 200 and res["run"]["stdout"] == "P", res


def test_piston_packages_and_index(server: Server) -> None:
    st, rts = http(server, "GET", "/piston/api/v2/runtimes")
    for path in ("/piston/api/v2/packages", "/piston/api/v2/packages/"):
        st, pkgs = http(server, "GET", path)
        assert st == 200 and all(list(p) == ["language", "language_version", "installed"] for p in pkgs), pkgs
        assert {(p["language"], p["language_version"]) for p in pkgs} == {(r["language"], r["version"]) for r in rts}
        assert all(p["installed"] is True for p in pkgs)
    assert http(server, "GET", "/piston/") == (200, {"message": "Piston v3.1.1"})


def test_piston_text_plain_body_is_opt_in() -> None:
    body = json.dumps({"language": "python", "version": "*", "files": [{"content": "print(6*7)"}]}).encode()
    own, j0 = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {
        **BODY_ENV,
        "SANDBOXD_HTTP_PISTON_ACCEPT_TEXT_PLAIN": "true",
        "SANDBOXD_PISTON_HTTP": own,
        "SANDBOXD_JUDGE0_HTTP": j0,
    }
    d = Daemon(inst("-compat-textplain"), pool_size=1, env=env)
    try:
        # under the prefix and on Piston's own listener
        for base, path in ((d.http, "/piston/api/v2/execute"), (f"http://{own}", "/api/v2/execute")):
            st, res = http(base, "POST", path, body, ctype="text/plain;charset=UTF-8")
            assert st == 200 and res["run"]["stdout"] == "42\n", res
            # (anything else still gets Piston's 415)
            st, res = http(base, "POST", path, body, ctype="application/x-www-form-urlencoded")
            assert (st, res) == (415, {"message": "requests must be of type application/json"})
        # an API alone on its listener answers every unknown route in its own shape
        assert http(f"http://{own}", "GET", "/v1/status") == (404, {"message": "Not Found"})
        st, res = http(f"http://{j0}", "GET", "/v1/status")
        assert st == 404 and set(res) == {"error"} and "/v1/status" in res["error"], res
    finally:
        assert d.stop() == 0, d.output()
