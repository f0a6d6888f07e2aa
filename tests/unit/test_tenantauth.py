"""sandboxd.api.tenantauth: who a request is from, and whom a proxied
session's CPU is billed to (the X-Sandboxd-Tenant a coordinator sends)."""

from __future__ import annotations

from pathlib import Path

from aiohttp.test_utils import make_mocked_request

from sandboxd.api import tenantauth
from sandboxd.jobs.tenants import Tenants
from sandboxd.tenancy import Tenant


def test_the_billed_tenant_is_believed_only_from_the_bearer_tokens_holder(tmp_path: Path) -> None:
    t = Tenants(tmp_path / "tenants.json")
    key = t.create(Tenant(name="a"))
    admin = tenantauth.identify(["tok"], "tok", t, "b")
    assert admin is not None and admin.admin and admin.billed == "b"
    # A tenant's key cannot bill its sessions to another tenant.
    tenant = tenantauth.identify([key], "tok", t, "b")
    assert tenant is not None and tenant.tenant is not None and tenant.billed == ""
    # No token set: everyone is the admin, so nobody is believed.
    open_host = tenantauth.identify([], "", t, "b")
    assert open_host is not None and open_host.admin and open_host.billed == ""


def test_the_billed_header_must_be_a_tenant_name() -> None:
    def billed(value: str) -> str:
        return tenantauth.billed(make_mocked_request("GET", "/", headers={tenantauth.BILLED_HEADER: value}))

    assert billed("team-1.x_y") == "team-1.x_y"
    assert billed("") == billed("a b") == billed("x" * 65) == billed("a\nb") == ""
    assert tenantauth.billed(make_mocked_request("GET", "/")) == ""
