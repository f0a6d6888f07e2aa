"""Judge0 over HTTP: field selection and formats, base64 both ways, runs, stderr
redirection, arguments, compiler options, additional files."""

from __future__ import annotations

import base64
import re

import pytest

from compat.util import Server, b64, http, submit, unb64, zip_of
from sandboxd.compat import judge0 as j0mod

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
    assert re.fullmatch(r"\d+\.\d{1,3}", r["time"]) and re.fullmatch(r"\d+\.\d{1,3}", r["wall_time"])  # Judge0: ms
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
