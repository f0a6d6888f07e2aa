"""Piston's translation, pure: version selectors, stage objects for each way a run
ends, constraints, files, and request validation."""

from __future__ import annotations

import re
from typing import Any

import pytest
from compat_unit_util import Languages, run

from sandboxd.compat import piston as pmod
from sandboxd.compat.piston import request
from sandboxd.languages import load_dir
from sandboxd.schema import Error, FileIn, JobInfo, RunResult, SubmissionResult

LANGS = load_dir()


def test_semver_selectors() -> None:
    yes = ["*", "3", "3.11", "3.11.2", "3.x", ">=3.10", "^3.1", "~3.11", "<4", "3.11.x", ">3.11.1", "1.x || 3.x", ""]
    no = ["2", "3.10", "3.11.3", ">3.11.2", "<3", "^3.12", "~3.10", "4.x", "x.y"]
    assert all(pmod.satisfies("3.11.2", s) for s in yes), [s for s in yes if not pmod.satisfies("3.11.2", s)]
    assert not any(pmod.satisfies("3.11.2", s) for s in no), [s for s in no if pmod.satisfies("3.11.2", s)]
    assert pmod.satisfies("0.2.5", "^0.2.1") and not pmod.satisfies("0.3.0", "^0.2.1")


def test_runtimes_named_as_piston_names_them() -> None:
    served = run(Languages().compat_languages())
    rts = {rt.language: rt for rt in pmod.runtimes(served)}
    assert rts["python"].aliases == ["py", "py3", "python3"] and rts["c++"].runtime == "gcc"
    assert pmod.find_runtime(served, "js", "1.x") == rts["javascript"]
    assert pmod.find_runtime(served, "python", "2") is None and pmod.find_runtime(served, "cobol", "*") is None


@pytest.mark.parametrize(
    ("r", "want"),
    [
        (RunResult("ok", exit_code=0), (None, 0, None, None)),
        (RunResult("nonzero_exit", exit_code=3), ("RE", 3, None, "Exited with error status 3")),
        (RunResult("signaled", signal=11), ("SG", None, "SIGSEGV", "Caught fatal signal 11")),
        (RunResult("bad_syscall", signal=31), ("SG", None, "SIGSYS", "Caught fatal signal 31")),
        (RunResult("time_limit", signal=9), ("TO", None, "SIGKILL", "Time limit exceeded")),
        (RunResult("time_limit", message="wall time"), ("TO", None, "SIGKILL", "Time limit exceeded (wall clock)")),
        (RunResult("output_limit", stdout_truncated=True), ("OL", None, "SIGKILL", "stdout length exceeded")),
        (RunResult("output_limit", stderr_truncated=True), ("EL", None, "SIGKILL", "stderr length exceeded")),
        (RunResult("output_limit", signal=25), ("SG", None, "SIGXFSZ", "Caught fatal signal 25")),
        (RunResult("memory_limit", signal=9), ("SG", None, "SIGKILL", "Memory limit exceeded")),
        (RunResult("memory_limit", exit_code=1), ("RE", 1, None, "Memory limit exceeded")),
        (RunResult("internal_error", message="the box failed"), ("XX", None, None, "the box failed")),
        (RunResult("internal_error"), ("XX", None, None, "internal error")),
    ],
)
def test_stage_of_every_status(r: RunResult, want: tuple[Any, ...]) -> None:
    s = pmod.stage(r)
    assert (s["status"], s["code"], s["signal"], s["message"]) == want


def test_stage_fields_and_output() -> None:
    r = RunResult("ok", exit_code=0, stdout=b"o\xff", stderr=b"e", cpu_time=0.0124, wall_time=0.5, memory=7)
    assert pmod.stage(r) == {
        "signal": None, "stdout": "o\ufffd", "stderr": "e", "code": 0, "output": "o\ufffde", "memory": 7,
        "message": None, "status": None, "cpu_time": 12, "wall_time": 500,
    }  # fmt: skip


def test_response_repeats_a_failed_compile_as_run_and_maps_failed_jobs() -> None:
    job = pmod.Job("c", "c", "1.2.3", FileIn("main.c", b""), [], b"\n", [], LANGS["c"].default_limits)
    ce = RunResult("nonzero_exit", exit_code=1, stderr=b"error")
    info = JobInfo("j", "submission", "done", result=SubmissionResult("CE", compile=ce))
    out = pmod.response(job, info)
    assert list(out) == ["compile", "run", "language", "version"] and out["run"] == out["compile"]
    for code, status in (("queue_full", 503), ("bad_request", 400), ("internal", 500)):
        with pytest.raises(pmod.PistonError) as e:
            pmod.response(job, JobInfo("j", "submission", "failed", error=Error(code, "why")))
        assert (e.value.status, e.value.body) == (status, {"message": "why"})


def test_constraints_defaults_and_bounds() -> None:
    py = LANGS["python3"]
    comp, r = pmod.limits(py, {"run_memory_limit": -1, "compile_memory_limit": 0})
    assert comp is None and (r.cpu_time, r.wall_time, r.memory) == (3.0, 5.0, py.default_limits.memory)
    comp, r = pmod.limits(py, {"compile_timeout": 1000, "run_cpu_time": 500, "run_memory_limit": 1})
    assert comp is not None and comp.wall_time == 1.0 and (r.cpu_time, r.memory) == (0.5, 4 << 20)
    conf = pmod.configured(py)
    with pytest.raises(
        pmod.PistonError, match=f"run_timeout cannot exceed the configured limit of {conf['timeout']['run']}"
    ):
        pmod.limits(py, {"run_timeout": conf["timeout"]["run"] + 1})
    with pytest.raises(pmod.PistonError, match="If specified, compile_cpu_time must be a number"):
        pmod.limits(py, {"compile_cpu_time": True})


def test_files_encodings_and_names() -> None:
    c = LANGS["c"]
    files = [
        {"content": "AP8", "encoding": "base64"},  # not utf8: not the entry
        {"name": "main.py", "content": "int main(){}"},
        {"name": "/inc/v.h", "content": "00ffzz", "encoding": "hex"},
        {"name": "inc/v.h", "content": "#define V 1"},
    ]
    entry, others = pmod.files_of(c, files)
    assert entry == FileIn("main.c", b"int main(){}")
    assert others == [FileIn("file0.code", b"\x00\xff"), FileIn("inc/v.h", b"#define V 1")]
    with pytest.raises(pmod.PistonError, match=re.escape('File path "a/../../x" tries to escape parent directory')):
        pmod.files_of(c, [{"content": ""}, {"name": "a/../../x", "content": ""}])
    with pytest.raises(pmod.PistonError, match="is where the entry file is saved for c"):
        pmod.files_of(c, [{"content": ""}, {"name": "main.c", "content": ""}])


def _build(**body: Any) -> Any:
    return run(request.build(Languages(), body))  # type: ignore[arg-type]


def test_request_validation() -> None:
    job = _build(language="py", version="*", files=[{"content": "print(1)"}], args=[1, "a"], stdin=5)
    assert (job.lang, job.language, job.version, job.args, job.stdin) == (
        "python3",
        "python",
        "1.2.3",
        ["1", "a"],
        b"5\n",
    )
    assert job.entry == FileIn("main.py", b"print(1)") and job.compile_limits is None
    for body, message in [
        ({}, "language is required as a string"),
        ({"language": "python", "version": 3}, "version is required as a string"),
        ({"language": "python", "version": "*", "files": {}}, "files is required as an array"),
        ({"language": "python", "version": "*", "files": ["x"]}, "files[0].content is required as a string"),
        ({"language": "python", "version": "9", "files": []}, "python-9 runtime is unknown"),
        ({"language": "python", "version": "*", "files": []}, "files must include at least one utf8 encoded file"),
        ({"language": "python", "version": "*", "files": [{"content": ""}], "args": "a"}, "args must be an array"),
    ]:
        with pytest.raises(pmod.PistonError) as e:
            _build(**body)
        assert (e.value.status, e.value.body["message"]) == (400, message)
