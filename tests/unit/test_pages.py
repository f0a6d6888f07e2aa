"""The shipped pages: no inline script or style (the CSP forbids them), every asset they name exists."""

from __future__ import annotations

import re

from sandboxd.api import pages


def test_no_inline_code_and_every_reference_exists() -> None:
    files = pages.assets()
    assert set(pages.PAGES.values()) <= set(files)
    for name, (body, _ctype) in files.items():
        text = body.decode()
        if name.endswith(".html"):
            assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), f"{name}: inline script"
            assert not re.search(r"\son[a-z]+=", text), f"{name}: inline event handler"
            assert "style=" not in text and "<style" not in text, f"{name}: inline style"
        for ref in re.findall(r"/web/([a-z0-9._-]+)", text):
            assert ref in files, f"{name} refers to /web/{ref}, which is not shipped"


def test_only_listed_names_are_public() -> None:
    assert pages.public("/") and pages.public("/dashboard") and pages.public("/web/common.js")
    assert not pages.public("/v1/status") and not pages.public("/v1/dashboard") and not pages.public("/openapi.json")
