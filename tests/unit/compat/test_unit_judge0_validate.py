"""Judge0's model, pure: defaults, casts and the 422 messages, in its order."""

from __future__ import annotations

import base64
import io
import zipfile
from typing import Any

from compat_unit_util import VERSION, Languages, run

from sandboxd.compat import judge0 as j0mod
from sandboxd.compat.judge0.validate import build
from sandboxd.schema import FileIn


def _build(b64: bool = False, **params: Any) -> Any:
    return run(build(Languages(), params, b64))  # type: ignore[arg-type]


def test_a_minimal_submission_takes_judge0s_defaults() -> None:
    req = _build(source_code="print(1)", language_id=71)
    assert isinstance(req, j0mod.Request)
    assert (req.lang, req.source_code, req.stdin, req.expected_output) == ("python3", b"print(1)", None, None)
    assert (req.number_of_runs, req.cpu_time_limit, req.cpu_extra_time, req.wall_time_limit) == (1, 5.0, 1.0, 10.0)
    assert (req.memory_limit, req.stack_limit, req.max_processes_and_or_threads, req.max_file_size) == (
        128000, 64000, 60, 1024,
    )  # fmt: skip
    assert req.language_name == f"Python ({VERSION})" and req.extras == [] and not req.redirect_stderr_to_stdout
    assert (
        _build(source_code="int main(){}", language_id=52).language_name
        == f"C++ (GCC {VERSION}, in place of GCC 7.4.0)"
    )


def test_casts_as_rails_makes_them() -> None:
    req = _build(
        source_code="1", language_id="71", cpu_time_limit="2", number_of_runs=0.5, memory_limit=100000.9,
        redirect_stderr_to_stdout="1", stdin=[1], compiler_options=None, command_line_arguments=7,
    )  # fmt: skip
    assert isinstance(req, j0mod.Request)
    assert (req.language_id, req.cpu_time_limit, req.number_of_runs, req.memory_limit) == (71, 2.0, 1, 100000)
    assert req.redirect_stderr_to_stdout and req.stdin is None and req.command_line_arguments == "7"


def test_base64_requests_are_decoded_leniently_and_zips_always() -> None:
    req = _build(True, source_code="cHJpbnQo!!!MSk=", language_id=71, stdin="aGk=")
    assert isinstance(req, j0mod.Request) and req.source_code == b"print(1)" and req.stdin == b"hi"
    assert _build(True, source_code="!!!", language_id=71) == {"source_code": ["can't be blank"]}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("data/in.txt", b"5")
    req = _build(source_code="1", language_id=71, additional_files=base64.b64encode(buf.getvalue()).decode())
    assert req.extras == [FileIn("data/in.txt", b"5")] and req.additional_files == buf.getvalue()


def test_422_keys_and_messages_in_the_models_order() -> None:
    errors = _build(
        source_code=" ", language_id="", max_file_size=-1, stack_limit=True, enable_network="true",
        compiler_options="x" * 513, callback_url="http://10.0.0.1/cb", additional_files="bm90IGEgemlw",
        enable_per_process_and_thread_memory_limit=1,
    )  # fmt: skip
    assert list(errors) == [
        "source_code", "language_id", "stack_limit", "enable_per_process_and_thread_memory_limit", "max_file_size",
        "compiler_options", "callback_url", "additional_files", "enable_network",
    ]  # fmt: skip
    assert errors["language_id"] == ["can't be blank", "language with id  doesn't exist"]
    assert errors["stack_limit"] == ["is not a number"]
    assert errors["max_file_size"] == ["must be greater than or equal to 0"]
    assert errors["compiler_options"] == ["is too long (maximum is 512 characters)"]
    assert errors["callback_url"][0].startswith("'10.0.0.1' resolves to non-public")
    assert errors["additional_files"] == ["is not a valid zip archive"]
    assert errors["enable_network"] == ["enabling network is not allowed"]


def test_bounds_say_rubys_numbers() -> None:
    assert _build(source_code="1", language_id=71, cpu_extra_time=-0.5, number_of_runs=0, wall_time_limit=21) == {
        "number_of_runs": ["must be greater than 0"],
        "cpu_extra_time": ["must be greater than or equal to 0"],
        "wall_time_limit": ["must be less than or equal to 20.0"],
    }
    assert _build(source_code="1", language_id=71, compiler_options=" -O2") == {
        "compiler_options": ["setting compiler options is only allowed for compiled languages"]
    }
    assert _build(source_code="1", language_id=89) == {"language_id": ["language with id 89 doesn't exist"]}
