"""Judge0's submission model, message for message: Rails' permitted parameters and
casts, then each validation in the model's order (the order of a 422 body's keys
and of each key's messages), then the validated Request.

`additional_files` is a zip checked and unpacked by sandboxd.compat.archive; large
texts and zips are decoded off the event loop (up to max_body of base64).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sandboxd.api.inbound import offload
from sandboxd.compat import Backend
from sandboxd.compat.archive import decode64, extract_zip
from sandboxd.compat.judge0 import catalog
from sandboxd.compat.judge0.casts import boolean, int_cast, number, optional_str, ruby_num
from sandboxd.compat.judge0.request import Request
from sandboxd.compat.judge0.tables import CONFIG, NUMERIC, PERMITTED, KiB
from sandboxd.errors import ServiceError
from sandboxd.languages import Language
from sandboxd.schema import FileIn, SchemaError

Errors = dict[str, list[str]]  # field -> messages, as a 422 body


def _add(errors: Errors, name: str, msg: str) -> None:
    errors.setdefault(name, []).append(msg)


async def build(backend: Backend, params: Mapping[str, Any], b64: bool) -> Request | Errors:
    """The validated submission, or Judge0's 422 body."""
    raw: dict[str, Any] = {}
    for k in PERMITTED:
        v = params.get(k)
        raw[k] = None if isinstance(v, (list, dict)) else v  # Rails' permit drops non-scalars
    errors: Errors = {}
    texts = await offload(sum(len(v) for v in raw.values() if isinstance(v, str)), _texts, raw, b64)
    source, stdin, expected, additional = (texts[k] for k in _TEXTS)
    if source is None or not source.strip():
        _add(errors, "source_code", "can't be blank")
    language_id = _language_id(raw["language_id"], errors)
    values = _numbers(raw, errors)
    strings = {name: _string(raw, name, errors) for name in ("compiler_options", "command_line_arguments")}
    # The model's custom validations, in order.
    found = (await catalog.served(backend)).get(language_id) if language_id is not None else None
    lang = found.lang if found is not None else None
    _check_language(language_id, lang, strings["compiler_options"], errors)
    callback_url = await _callback_url(backend, raw["callback_url"], errors)
    extras = await _extras(additional, lang, errors)
    enable_network = boolean(raw["enable_network"], CONFIG["enable_network"])
    if enable_network and not CONFIG["allow_enable_network"]:
        _add(errors, "enable_network", "enabling network is not allowed")
    if errors:
        return errors
    assert found is not None and language_id is not None and source is not None
    return Request(
        language_id=language_id,
        lang=found.lang.id,
        source_code=source,
        stdin=stdin,
        expected_output=expected,
        compiler_options=strings["compiler_options"],
        command_line_arguments=strings["command_line_arguments"],
        redirect_stderr_to_stdout=boolean(raw["redirect_stderr_to_stdout"], CONFIG["redirect_stderr_to_stdout"]),
        callback_url=callback_url,
        additional_files=additional,
        enable_network=enable_network,
        extras=extras,
        language_name=catalog.language_name(language_id, found.version),
        **values,
    )


_TEXTS = ("source_code", "stdin", "expected_output", "additional_files")


def _texts(raw: Mapping[str, Any], b64: bool) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for name in _TEXTS:
        s = optional_str(raw[name])
        if s is None:
            out[name] = None
            continue
        decode = b64 or name == "additional_files"  # always base64, whatever base64_encoded says
        # (A str from a form or from msgspec is valid UTF-8; surrogatepass keeps any other safe.)
        out[name] = decode64(s) if decode else s.encode("utf-8", "surrogatepass")
    return out


def _language_id(v: Any, errors: Errors) -> int | None:
    if v is None or (isinstance(v, str) and not v.strip()):
        _add(errors, "language_id", "can't be blank")
    return int_cast(v)


def _numbers(raw: Mapping[str, Any], errors: Errors) -> dict[str, Any]:
    """The numeric and boolean limits, each its value or Judge0's default."""
    values: dict[str, Any] = {}
    for name, integer, default, lo, lo_incl, hi in NUMERIC:
        v = _bounded(name, raw[name], default, lo, lo_incl, hi, errors)
        values[name] = (int(v) if integer else float(v)) if v is not None else default
    values["number_of_runs"] = max(1, values["number_of_runs"])  # 0.5 passes "> 0"; runs at least once
    for name in ("enable_per_process_and_thread_time_limit", "enable_per_process_and_thread_memory_limit"):
        values[name] = boolean(raw[name], CONFIG[name])
        if values[name] and not CONFIG[f"allow_{name}"]:
            _add(errors, name, "this option cannot be enabled")
    values["max_file_size"] = _max_file_size(raw["max_file_size"], errors)
    return values


def _bounded(name: str, raw: Any, default: float, lo: float, lo_incl: bool, hi: float, errors: Errors) -> float | None:
    """Rails' numericality with the model's bounds; None: not a number (the default is used)."""
    v, bad = number(raw)
    if bad:
        _add(errors, name, "is not a number")
        return None
    if v is None:
        v = default
    if lo_incl and v < lo:
        _add(errors, name, f"must be greater than or equal to {ruby_num(lo)}")
    elif not lo_incl and v <= lo:
        _add(errors, name, f"must be greater than {ruby_num(lo)}")
    elif v > hi:
        _add(errors, name, f"must be less than or equal to {ruby_num(hi)}")
    return v


def _max_file_size(raw: Any, errors: Errors) -> int:
    v, bad = number(raw)
    if bad:
        _add(errors, "max_file_size", "is not a number")
    elif v is not None and v < 0:
        _add(errors, "max_file_size", "must be greater than or equal to 0")
    elif v is not None and v > CONFIG["max_max_file_size"]:
        _add(errors, "max_file_size", f"must be less than or equal to {CONFIG['max_max_file_size']}")
    return int(v) if v is not None else CONFIG["max_file_size"]


def _string(raw: Mapping[str, Any], name: str, errors: Errors) -> str | None:
    s = optional_str(raw[name])
    if s is not None and len(s) > 512:
        _add(errors, name, "is too long (maximum is 512 characters)")
    return s


def _check_language(language_id: int | None, lang: Language | None, options: str | None, errors: Errors) -> None:
    if lang is None:
        _add(errors, "language_id", f"language with id {'' if language_id is None else language_id} doesn't exist")
    if options and options.strip() and lang is not None and not lang.compile:
        _add(errors, "compiler_options", "setting compiler options is only allowed for compiled languages")


async def _callback_url(backend: Backend, raw: Any, errors: Errors) -> str | None:
    """The URL as given; one the backend would not call (private, not http) is refused."""
    url = optional_str(raw)
    if url and url.strip():
        try:
            await backend.check_callback(url)
        except ServiceError as e:
            _add(errors, "callback_url", e.err.message.removeprefix("callback_url: "))
    return url


async def _extras(additional: bytes | None, lang: Language | None, errors: Errors) -> list[FileIn]:
    """The files of the `additional_files` zip, safe to put in a box (or the 422's reason)."""
    if not additional:
        return []
    try:
        max_bytes, source_file = CONFIG["max_extract_size"] * KiB, lang.source if lang else ""
        return await offload(len(additional), extract_zip, additional, max_bytes, source_file)
    except SchemaError as e:
        _add(errors, "additional_files", str(e))
        return []
