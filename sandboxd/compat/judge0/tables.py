"""Judge0 CE 1.13.1's tables, as data: language ids, status ids and names, config_info,
the model's numeric bounds and permitted parameters, the serializer's attributes.

Every other module of the Judge0 API reads its numbers and names from here, so
a default or a bound is declared once.
"""

from __future__ import annotations

from typing import Any

from sandboxd.schema import Verdict

# Judge0's auth headers (AUTHN_HEADER, AUTHZ_HEADER defaults): each accepted
# carrying the daemon's token, as an alternative to `Authorization: Bearer`.
AUTHN_HEADER, AUTHZ_HEADER = "X-Auth-Token", "X-Auth-User"
TOKEN_HEADERS = (AUTHN_HEADER, AUTHZ_HEADER)
VERSION = "1.13.1"
KiB = 1024
MIN_MEMORY = 4 << 20  # the engine's floor; Judge0 allows 2048 KB

# Judge0 language id -> (our language, display name, tool, the Judge0 compiler this id stood for).
# 48/49 and 52/53 are Judge0's older GCC ids (the SDK's CPP alias is 52): served by the same gcc.
LANGUAGES: dict[int, tuple[str, str, str, str]] = {
    46: ("bash", "Bash", "", ""),
    48: ("c", "C", "GCC", "GCC 7.4.0"),
    49: ("c", "C", "GCC", "GCC 8.3.0"),
    50: ("c", "C", "GCC", ""),
    52: ("cpp", "C++", "GCC", "GCC 7.4.0"),
    53: ("cpp", "C++", "GCC", "GCC 8.3.0"),
    54: ("cpp", "C++", "GCC", ""),
    60: ("go", "Go", "", ""),
    62: ("java", "Java", "OpenJDK", ""),
    63: ("javascript", "JavaScript", "Node.js", ""),
    71: ("python3", "Python", "", ""),
    73: ("rust", "Rust", "", ""),
}

STATUSES: dict[int, str] = {
    1: "In Queue",
    2: "Processing",
    3: "Accepted",
    4: "Wrong Answer",
    5: "Time Limit Exceeded",
    6: "Compilation Error",
    7: "Runtime Error (SIGSEGV)",
    8: "Runtime Error (SIGXFSZ)",
    9: "Runtime Error (SIGFPE)",
    10: "Runtime Error (SIGABRT)",
    11: "Runtime Error (NZEC)",
    12: "Runtime Error (Other)",
    13: "Internal Error",
    14: "Exec Format Error",
}
SIGNAL_STATUS = {11: 7, 25: 8, 8: 9, 6: 10}  # Status.find_runtime_error_by_status_code; others: 12
J0_VERDICT: dict[int, Verdict] = {3: "AC", 4: "WA", 5: "TLE", 14: "RE"}  # else from how the run ended

# What Judge0's config_info reports (and what we enforce), in its order.
CONFIG: dict[str, Any] = {
    "maintenance_mode": False,
    "enable_wait_result": True,
    "enable_compiler_options": True,
    "allowed_languages_for_compile_options": [],
    "enable_command_line_arguments": True,
    "enable_submission_delete": True,
    "enable_callbacks": True,
    "callbacks_max_tries": 3,
    "callbacks_timeout": 5.0,
    "enable_additional_files": True,
    "max_queue_size": 0,  # the backend's queue bound
    "cpu_time_limit": 5.0,
    "max_cpu_time_limit": 15.0,
    "cpu_extra_time": 1.0,
    "max_cpu_extra_time": 5.0,
    "wall_time_limit": 10.0,
    "max_wall_time_limit": 20.0,
    "memory_limit": 128000,
    "max_memory_limit": 512000,
    "stack_limit": 64000,
    "max_stack_limit": 128000,
    "max_processes_and_or_threads": 60,
    "max_max_processes_and_or_threads": 120,
    "enable_per_process_and_thread_time_limit": False,
    "allow_enable_per_process_and_thread_time_limit": False,
    "enable_per_process_and_thread_memory_limit": False,
    "allow_enable_per_process_and_thread_memory_limit": False,
    "max_file_size": 1024,
    "max_max_file_size": 4096,
    "number_of_runs": 1,
    "max_number_of_runs": 20,
    "redirect_stderr_to_stdout": False,
    "max_extract_size": 10240,
    "enable_batched_submissions": True,
    "max_submission_batch_size": 20,
    "submission_cache_duration": 0.0,
    "use_docs_as_homepage": False,
    "allow_enable_network": False,
    "enable_network": False,
}

# Numeric fields: (name, integer column?, default, lower bound, lower inclusive?, upper bound), in the
# order the model validates them (the order of keys in a 422 body).
NUMERIC: tuple[tuple[str, bool, float, float, bool, float], ...] = (
    ("number_of_runs", True, 1, 0, False, 20),
    ("cpu_time_limit", False, 5.0, 0, True, 15.0),
    ("cpu_extra_time", False, 1.0, 0, True, 5.0),
    ("wall_time_limit", False, 10.0, 1, True, 20.0),
    ("memory_limit", True, 128000, 2048, True, 512000),
    ("stack_limit", True, 64000, 0, True, 128000),
    ("max_processes_and_or_threads", True, 60, 0, False, 120),
)
PERMITTED = (
    "source_code",
    "language_id",
    "compiler_options",
    "command_line_arguments",
    "number_of_runs",
    "stdin",
    "expected_output",
    "cpu_time_limit",
    "cpu_extra_time",
    "wall_time_limit",
    "memory_limit",
    "stack_limit",
    "max_processes_and_or_threads",
    "enable_per_process_and_thread_time_limit",
    "enable_per_process_and_thread_memory_limit",
    "max_file_size",
    "redirect_stderr_to_stdout",
    "callback_url",
    "additional_files",
    "enable_network",
)
# The serializer's attributes, in its order (`fields=*`), and the default selection.
ATTRIBUTES = (
    "source_code",
    "language_id",
    "stdin",
    "expected_output",
    "stdout",
    "status_id",
    "created_at",
    "finished_at",
    "time",
    "memory",
    "stderr",
    "token",
    "number_of_runs",
    "cpu_time_limit",
    "cpu_extra_time",
    "wall_time_limit",
    "memory_limit",
    "stack_limit",
    "max_processes_and_or_threads",
    "enable_per_process_and_thread_time_limit",
    "enable_per_process_and_thread_memory_limit",
    "max_file_size",
    "compile_output",
    "exit_code",
    "exit_signal",
    "message",
    "wall_time",
    "compiler_options",
    "command_line_arguments",
    "redirect_stderr_to_stdout",
    "callback_url",
    "additional_files",
    "enable_network",
    "status",
    "language",
)
DEFAULT_FIELDS = ("token", "time", "memory", "stdout", "stderr", "compile_output", "message", "status")
TEXT_FIELDS = ("source_code", "stdin", "expected_output", "stdout", "stderr", "compile_output", "message")
NOT_UTF8 = "some attributes for this submission cannot be converted to UTF-8, use base64_encoded=true query parameter"
NOT_UTF8_BATCH = (
    "some attributes for one or more submissions cannot be converted to UTF-8, use base64_encoded=true query parameter"
)
UNSAFE_SHELL = str.maketrans("", "", "$&;<>|`")  # what Judge0 strips from options and arguments
