"""What the compat tests share: the fleet stack both APIs are tested through, and
HTTP helpers (raw requests, a Judge0 submission that waits, base64, zips)."""

from __future__ import annotations

import base64
import io
import json
import stat
import time
import urllib.error
import urllib.request
import zipfile
from typing import Any

from daemon_util import Daemon
from fleet_util import Coordinator, Redis
from instances import inst


class FleetStack:
    """Both APIs through the fleet: a redis-server, one host daemon, two coordinators.
    `http` is the first coordinator's; the host is reached only through Redis."""

    def __init__(
        self,
        instance: str = inst("-compat-fleet"),
        pool_size: int = 4,
        env: dict[str, str] | None = None,
        first_coord_env: dict[str, str] | None = None,
    ) -> None:
        self.redis = Redis()
        self.coords: list[Coordinator] = []
        self.host: Daemon | None = None
        env = {**BODY_ENV, **(env or {})}
        try:
            host_env = {**env, "SANDBOXD_FLEET": self.redis.url, "SANDBOXD_FLEET_HOST_ID": "compat-host"}
            self.host = Daemon(instance, pool_size=pool_size, env=host_env)
            self.coords = [Coordinator(self.redis.url, {**env, **(first_coord_env or {})})]
            self.coords.append(Coordinator(self.redis.url, env))
            self.http = self.coords[0].http
            deadline = time.monotonic() + 20
            token = env.get("SANDBOXD_HTTP_TOKEN")
            auth = {"Authorization": f"Bearer {token}"} if token else {}
            while http(self, "GET", "/v1/hosts", headers=auth)[1] in ([], None):
                assert time.monotonic() < deadline, "the host did not join the fleet"
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> int:
        rc = 0
        for c in self.coords:
            rc |= c.stop()
        if self.host is not None:
            rc |= self.host.stop()
        self.redis.stop()
        return rc

    def output(self) -> str:
        return "\n".join(x.output() for x in (self.host, *self.coords) if x is not None)


Server = Daemon | FleetStack
BODY_ENV = {"SANDBOXD_MAX_BODY": str(4 << 20)}


def http(
    d: Server | str,
    method: str,
    path: str,
    body: Any = None,
    ctype: str = "application/json",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    base = d if isinstance(d, str) else d.http
    req = urllib.request.Request(
        base + path, data=data, method=method, headers={"Content-Type": ctype, **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            raw, st = r.read(), r.status
    except urllib.error.HTTPError as e:
        raw, st = e.read(), e.code
    try:
        return st, json.loads(raw) if raw else None
    except ValueError:
        return st, raw.decode()


def submit(d: Server, fields: str = "*", b64: bool = False, **sub: Any) -> dict[str, Any]:
    q = f"?wait=true&fields={fields}" + ("&base64_encoded=true" if b64 else "")
    st, body = http(d, "POST", "/judge0/submissions" + q, sub)
    assert st == 201, body
    return body  # type: ignore[no-any-return]


def b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def unb64(s: str | None) -> bytes | None:
    return None if s is None else base64.b64decode(s.replace("\n", ""))


def zip_of(entries: dict[str, bytes], symlink: str | None = None) -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, "/etc/passwd")
    return base64.b64encode(buf.getvalue()).decode()
