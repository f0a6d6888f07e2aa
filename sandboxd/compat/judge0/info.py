"""Judge0's information routes: languages, statuses, statistics, about, version, config, system, workers."""

from __future__ import annotations

import os
import platform

from aiohttp import web

from sandboxd.compat.judge0 import statistics
from sandboxd.compat.judge0.casts import int_cast
from sandboxd.compat.judge0.http import J0, handler, reply
from sandboxd.compat.judge0.tables import CONFIG, STATUSES, VERSION, KiB


@handler
async def languages(req: web.Request) -> web.Response:
    j0 = req.app[J0]
    out = [{"id": jid, "name": j0.language_name(jid, s.version)} for jid, s in (await j0.languages()).items()]
    return reply(sorted(out, key=lambda x: str(x["name"])))


@handler
async def languages_all(req: web.Request) -> web.Response:
    j0 = req.app[J0]
    langs = await j0.languages()
    out = [{"id": jid, "name": j0.language_name(jid, s.version), "is_archived": False} for jid, s in langs.items()]
    return reply(sorted(out, key=lambda x: str(x["name"])))


@handler
async def language(req: web.Request) -> web.Response:
    j0 = req.app[J0]
    jid = int_cast(req.match_info["id"])
    langs = await j0.languages()
    if jid is None or jid not in langs:
        return reply(None, 404)
    return reply(j0.language_detail(jid, langs[jid]))


@handler
async def statuses(req: web.Request) -> web.Response:
    return reply([{"id": i, "description": d} for i, d in STATUSES.items()])


@handler
async def statistics_(req: web.Request) -> web.Response:
    return reply(statistics.of(req.app[J0].backend).view())


@handler
async def about(req: web.Request) -> web.Response:
    return reply(
        {
            "version": VERSION,
            "homepage": "sandboxd: Judge0 CE compatible API",
            "source_code": "sandboxd/compat/judge0/",
            "maintainer": "sandboxd",
        }
    )


async def version(req: web.Request) -> web.Response:
    return web.Response(text=VERSION)


async def isolate(req: web.Request) -> web.Response:
    return web.Response(text="sandboxd: Linux namespaces, cgroups and seccomp (no isolate)\n")


async def license_(req: web.Request) -> web.Response:
    return web.Response(text="Apache-2.0 (sandboxd)\n")


@handler
async def config_info(req: web.Request) -> web.Response:
    load = await req.app[J0].backend.compat_load()
    return reply({**CONFIG, "max_queue_size": load.limit})


@handler
async def system_info(req: web.Request) -> web.Response:
    return reply(system_facts())


@handler
async def workers(req: web.Request) -> web.Response:
    return reply((await req.app[J0].backend.compat_load()).workers)


def system_facts() -> dict[str, str]:
    """What Judge0 reads from `lscpu` and `free -h`, from /proc."""
    facts = {"Architecture": platform.machine(), "CPU(s)": str(os.cpu_count() or 1)}
    model = _cpu_model()
    if model is not None:
        facts["Model name"] = model
    mem = _meminfo()
    for key, name in (("MemTotal", "Mem"), ("SwapTotal", "Swap")):
        if key in mem:
            facts[name] = f"{mem[key] / (1 << 30):.1f}Gi"
    return facts


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k.strip() == "model name":
                    return v.strip()
    except OSError:
        pass
    return None


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes; what was read before a line it cannot parse."""
    mem: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                mem[k] = int(v.split()[0]) * KiB
    except (OSError, ValueError, IndexError):
        pass
    return mem
