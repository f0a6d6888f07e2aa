"""A Judge0 submission once validated: the job's spec, and its limits as ours."""

from __future__ import annotations

import msgspec

from sandboxd.compat.judge0.tables import CONFIG, MIN_MEMORY, KiB
from sandboxd.schema import FileIn, Limits


class Request(msgspec.Struct, tag="judge0", tag_field="api"):
    """A validated submission: every field with its value or Judge0's default.  It is
    the job's spec (kept with the job, in Redis in a fleet), so GET can show it.
    Unknown fields are ignored, so that a spec written by a newer version still
    runs on an older host during a rolling upgrade."""

    language_id: int
    lang: str
    source_code: bytes
    stdin: bytes | None
    expected_output: bytes | None
    compiler_options: str | None
    command_line_arguments: str | None
    number_of_runs: int
    cpu_time_limit: float
    cpu_extra_time: float
    wall_time_limit: float
    memory_limit: int
    stack_limit: int
    max_processes_and_or_threads: int
    enable_per_process_and_thread_time_limit: bool
    enable_per_process_and_thread_memory_limit: bool
    max_file_size: int
    redirect_stderr_to_stdout: bool
    callback_url: str | None
    additional_files: bytes | None
    enable_network: bool
    extras: list[FileIn] = []
    language_name: str = ""  # as /languages named it when the submission was made

    def limits(self) -> Limits:
        """Judge0's isolate limits as ours.  cpu_extra_time: the program is killed at
        cpu_time_limit + cpu_extra_time but is over the limit (TLE) past cpu_time_limit;
        0 means no limit (isolate's convention) for CPU time, stack and file size."""
        wall = self.wall_time_limit
        cpu = self.cpu_time_limit + self.cpu_extra_time if self.cpu_time_limit > 0 else wall
        size = (self.max_file_size or CONFIG["max_max_file_size"]) * KiB
        return Limits(
            cpu_time=max(cpu, 0.001),
            wall_time=wall,
            memory=max(self.memory_limit * KiB, MIN_MEMORY),
            procs=self.max_processes_and_or_threads,
            output=size,
            file_size=size,
            stack=max(self.stack_limit * KiB, 64 * KiB) if self.stack_limit else None,
        )
