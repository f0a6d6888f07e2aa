"""The official `judge0` SDK from PyPI, unchanged, against a host daemon's /judge0
and a coordinator's (the `server` fixture of tests/compat/conftest.py)."""

from __future__ import annotations

import judge0
import pytest

from compat.util import Server

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
