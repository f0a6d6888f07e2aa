"""The CORS policy's decisions and its configuration (sandboxd/api/cors.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxd.api.cors import Policy
from sandboxd.config import ConfigError, load


def test_default_config_sends_no_cors_on_the_native_api_and_any_origin_on_judge0() -> None:
    cfg = load(env={}, default_path=Path("/nonexistent"))
    assert cfg.http.cors_origins == [] and cfg.http.judge0_cors_origins == ["*"]
    assert Policy.of(cfg.http.cors_origins).allow_origin("https://a.example") is None
    assert Policy.of(cfg.http.judge0_cors_origins).allow_origin("https://a.example") == "*"


def test_exact_origins_only() -> None:
    p = Policy.of(["https://ide.example.org", "http://localhost:5173"])
    assert p.allow_origin("https://ide.example.org") == "https://ide.example.org"
    assert p.allow_origin("http://localhost:5173") == "http://localhost:5173"
    for other in ("https://ide.example.org.evil.com", "http://ide.example.org", "null", "", None):
        assert p.allow_origin(other) is None


def test_env_sets_origins_and_a_bad_one_is_refused() -> None:
    cfg = load(env={"SANDBOXD_HTTP_CORS_ORIGINS": '["https://a.example:8443"]'}, default_path=Path("/x"))
    assert cfg.http.cors_origins == ["https://a.example:8443"]
    with pytest.raises(ConfigError, match="cors_origins"):
        load(env={"SANDBOXD_HTTP_CORS_ORIGINS": '["https://a.example/path"]'}, default_path=Path("/x"))
