"""Result callbacks: POST a finished job's JobInfo (JSON) to a client's URL.

A callback makes the daemon an HTTP client of whoever submitted the job, so
it must not become a way to reach the daemon's own network (CVE-2024-29021 in
Judge0 was exactly that).  The host is resolved once, every address must be
public unless the config allows private targets, and the connection goes to
the checked address (no second lookup that DNS rebinding could change).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
from aiohttp.abc import AbstractResolver, ResolveResult

from sandboxd.errors import error

log = logging.getLogger(__name__)


class CallbackRefused(ValueError):
    pass


def check_url(url: str) -> tuple[str, int]:
    """Syntax check at submission time (no DNS yet): (host, port)."""
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise CallbackRefused(f"callback_url: {url!r} must be an http(s) URL with a host")
    if u.username or u.password:
        raise CallbackRefused("callback_url: credentials in the URL are not accepted")
    try:
        port = u.port or (443 if u.scheme == "https" else 80)
    except ValueError:
        raise CallbackRefused(f"callback_url: {url!r} has a bad port") from None
    return u.hostname, port


def _public(ip: str) -> bool:
    a = ipaddress.ip_address(ip)
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return a.is_global and not a.is_multicast


async def resolve(host: str, port: int, allow_private: bool) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addrs = sorted({str(i[4][0]) for i in infos})
    if not addrs:
        raise CallbackRefused(f"callback_url: {host!r} does not resolve")
    if not allow_private:
        bad = [a for a in addrs if not _public(a)]
        if bad:
            raise CallbackRefused(f"callback_url: {host!r} resolves to non-public {', '.join(bad)}")
    return addrs


async def check(url: str, allow_private: bool) -> None:
    """Refuse a callback target before accepting the job (delivery checks it again),
    as the bad_request ServiceError every frontend answers with."""
    try:
        host, port = check_url(url)
        await resolve(host, port, allow_private)
    except CallbackRefused as e:
        raise error("bad_request", str(e)) from None
    except OSError as e:
        raise error("bad_request", f"callback_url: cannot resolve: {e}") from None


class _Pinned(AbstractResolver):
    """Hands aiohttp the addresses we already checked."""

    def __init__(self, host: str, addrs: list[str]) -> None:
        self.host, self.addrs = host, addrs

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_UNSPEC) -> list[ResolveResult]:
        if host != self.host:
            raise OSError(f"unexpected host {host!r}")
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for a in self.addrs
        ]

    async def close(self) -> None:
        pass


async def deliver(
    url: str,
    payload: Any,
    allow_private: bool,
    attempts: int = 3,
    timeout: float = 10.0,
    method: str = "POST",
    retry_on_http_error: bool = True,
) -> bool:
    """Send payload as JSON; a few retries with backoff; never raises.

    Judge0's callbacks are a PUT that stops at any HTTP answer
    (method="PUT", retry_on_http_error=False); ours POST and retry on errors."""
    body = payload if isinstance(payload, bytes) else msgspec.json.encode(payload)
    for attempt in range(attempts):
        try:
            host, port = check_url(url)
            addrs = await resolve(host, port, allow_private)
            conn = aiohttp.TCPConnector(resolver=_Pinned(host, addrs), use_dns_cache=False)
            async with (
                aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=timeout)) as s,
                s.request(
                    method, url, data=body, headers={"Content-Type": "application/json"}, allow_redirects=False
                ) as r,
            ):
                if r.status < 300:
                    return True
                log.warning("callback %s: HTTP %d", url, r.status)
                if not retry_on_http_error:
                    return True
        except CallbackRefused as e:
            log.warning("%s", e)
            return False
        except (OSError, aiohttp.ClientError, TimeoutError) as e:
            log.warning("callback %s: %s", url, e)
        await asyncio.sleep(0.5 * 2**attempt)
    return False
