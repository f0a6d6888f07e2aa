"""`sandboxd` command line: one-shot runs over the same engine the daemon uses.

Each command imports what it needs: `sandboxd coordinator` runs no box, so its
process loads no sandbox, engine or rootfs module (tests/app/test_layers.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import uvloop

from sandboxd import __version__, config
from sandboxd.app import listeners
from sandboxd.config import COORDINATOR_PATH as COORDINATOR_CONFIG
from sandboxd.config import DEFAULT_PATH as DEFAULT_CONFIG
from sandboxd.languages import load_dir
from sandboxd.schema import Limits, MiB, RunRequest, RunResult, SchemaError

if TYPE_CHECKING:
    from sandboxd.engine.engine import SourceResult

EXIT_OK, EXIT_NOT_OK, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own exit code is 2 too; keep the contract explicit
        self.print_usage(sys.stderr)
        print(f"sandboxd: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sandboxd", description="Run untrusted code in warm Linux sandboxes.")
    p.add_argument("--version", action="version", version=f"sandboxd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser(
        "run",
        help="run one program in a fresh box",
        description="Run CMD (after --) or, with --lang, a source FILE (compiled first when the language needs "
        "it). Standard input passes to the program. Exit status: 0 if the run's status is ok, 1 otherwise, "
        "2 for bad usage.",
    )
    r.add_argument("--lang", help="language id (c, cpp, python3, ...): run a source FILE")
    r.add_argument("--time", type=float, help="CPU time limit, seconds (default 2)")
    r.add_argument("--wall", type=float, help="wall time limit, seconds (default 2 x time + 1)")
    r.add_argument("--memory", type=int, help="memory limit, MiB (default 256)")
    r.add_argument("--procs", type=int, help="process/thread limit (default 64)")
    r.add_argument("--output", type=int, help="output limit per stream, bytes (default 1 MiB)")
    r.add_argument("--json", action="store_true", help="print the result as one JSON object")
    r.add_argument("--instance", default=f"cli-{os.getpid()}", help=argparse.SUPPRESS)
    r.add_argument("argv", nargs=argparse.REMAINDER, metavar="[FILE] [-- CMD ARGS...]")
    s = sub.add_parser(
        "serve",
        help="run the daemon (Unix socket + HTTP)",
        description="Serve jobs until SIGTERM. Settings: the config file, then SANDBOXD_<KEY> env, then these flags.",
    )
    s.add_argument("--config", type=Path, help=f"TOML config file (default {DEFAULT_CONFIG} if it exists)")
    s.add_argument("--instance", help="instance name (cgroups, locks)")
    s.add_argument("--socket", help="Unix socket path ('' disables)")
    s.add_argument("--http", help="HTTP host:port ('' disables)")
    s.add_argument("--pool-size", type=int, dest="pool_size", help="warm boxes per rootfs")
    s.add_argument("--run-dir", dest="run_dir", help="runtime directory (boxes' mount point, pid file)")
    s.add_argument("--pid-file", dest="pid_file", help="pid file (default run_dir/sandboxd.pid)")
    s.add_argument("--log-format", choices=["text", "json"], dest="log_format")
    s.add_argument("--fleet", help="join the fleet at this Redis URL (claim jobs while boxes are free)")
    s.add_argument("--fleet-host-id", dest="fleet_host_id", help="this host's id in the fleet (default: hostname)")
    co = sub.add_parser(
        "coordinator",
        help="serve the daemon's API in front of a fleet of hosts (Redis)",
        description="Balance jobs across hosts that joined with `serve` and `fleet` set. Settings: the config file "
        f"(default {COORDINATOR_CONFIG} if it exists), then SANDBOXD_<KEY> env, then these flags.",
    )
    co.add_argument("--config", type=Path, help="TOML config file")
    co.add_argument("--fleet", help="the fleet's Redis URL (redis://host:port/db)")
    co.add_argument("--socket", help="Unix socket path ('' disables; default in /run/sandboxd-coordinator/)")
    co.add_argument("--http", help="HTTP host:port ('' disables; default 127.0.0.1:7080)")
    co.add_argument("--log-format", choices=["text", "json"], dest="log_format")
    try:
        from sandboxd_client import submit  # the client package adds `submit`; optional for the daemon

        submit.add_parser(sub)
    except ImportError:
        pass
    rf = sub.add_parser("rootfs", help="build and list per-language rootfs trees")
    rsub = rf.add_subparsers(dest="rootfs_command", required=True, parser_class=_Parser)
    b = rsub.add_parser("build", help="build a minimal Debian 12 tree for a language and switch it live")
    b.add_argument("lang")
    b.add_argument("--state-dir", type=Path, default=Path(config.DEFAULT.state_dir))
    b.add_argument("--recipes", type=Path, default=None, help="recipe directory (default: the checkout's rootfs/)")
    ls = rsub.add_parser("list", help="trees, sizes, and which are live")
    ls.add_argument("--state-dir", type=Path, default=Path(config.DEFAULT.state_dir))
    c = sub.add_parser("config", help="show the configuration")
    c.add_argument("--defaults", action="store_true", help="print every setting with its default, as TOML")
    c.add_argument("--config", type=Path, help="check this file and print the effective settings")
    return p


def _start(
    ns: argparse.Namespace,
    keys: tuple[str, ...],
    main: Callable[[config.Config], Coroutine[Any, Any, int]],
    require: tuple[str, ...] = (),
    **load: Any,
) -> int:
    """Load the configuration (flags over env over file), set up logging, run `main` on uvloop."""
    try:
        cfg = config.load(ns.config, {k: getattr(ns, k) for k in keys}, **load)
        for key in require:  # flat names, as the flags and variables spell them
            if not config.get(cfg, key):
                raise config.ConfigError(f"{key}: required here (--{key.replace('_', '-')} or SANDBOXD_{key.upper()})")
    except config.ConfigError as e:
        print(f"sandboxd: {e}", file=sys.stderr)
        return EXIT_USAGE
    listeners.setup_logging(cfg)
    try:
        return uvloop.run(main(cfg))
    except (OSError, RuntimeError, ValueError) as e:  # (engine.InstanceBusy is a RuntimeError)
        logging.getLogger("sandboxd").error("cannot start: %s", e)
        return EXIT_NOT_OK


def _serve(ns: argparse.Namespace) -> int:
    from sandboxd.app import daemon

    keys = ("instance", "socket", "http", "pool_size", "run_dir", "pid_file", "log_format", "fleet", "fleet_host_id")
    return _start(ns, keys, daemon.serve)


def _coordinator(ns: argparse.Namespace) -> int:
    from sandboxd.app import coordinator

    keys = ("fleet", "socket", "http", "log_format")
    return _start(
        ns, keys, coordinator.serve, ("fleet",), defaults=config.COORDINATOR_DEFAULTS, default_path=COORDINATOR_CONFIG
    )


def _rootfs(ns: argparse.Namespace) -> int:
    from sandboxd.app import rootfs_build  # only this command needs it
    from sandboxd.rootfs import store

    if ns.rootfs_command == "build":
        return rootfs_build.main_build(ns.lang, ns.state_dir, ns.recipes or rootfs_build.RECIPES)
    rows = store.listing(ns.state_dir)
    if not rows:
        print("no rootfs trees built; every language runs on the host's /usr")
    for r in rows:
        size = int(str(r["size"])) / (1 << 20)
        print(f"{r['lang']:<12} {r['tree']}  {size:7.1f} MiB  {'live' if r['live'] else ''}")
    return EXIT_OK


def _config(ns: argparse.Namespace) -> int:
    if ns.defaults:
        sys.stdout.write(config.defaults_toml())
        return EXIT_OK
    try:
        cfg = config.load(ns.config)
    except config.ConfigError as e:
        print(f"sandboxd: {e}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(msgspec.json.encode(cfg).decode() + "\n")
    return EXIT_OK


def _limits(ns: argparse.Namespace) -> Limits:
    given: dict[str, Any] = {}
    for flag, key, scale in (
        ("time", "cpu_time", 1),
        ("wall", "wall_time", 1),
        ("memory", "memory", MiB),
        ("procs", "procs", 1),
        ("output", "output", 1),
    ):
        v = getattr(ns, flag)
        if v is not None:
            given[key] = v * scale
    try:
        return msgspec.convert(given, Limits)
    except msgspec.ValidationError as e:
        raise SchemaError(f"limits: {e}") from None


def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


def _as_json(res: RunResult) -> dict[str, Any]:
    d: dict[str, Any] = msgspec.to_builtins(res)
    # Output as text (invalid UTF-8 replaced): what a person piping to jq wants.
    d["stdout"], d["stderr"] = _text(res.stdout), _text(res.stderr)
    d.pop("files", None)
    return d


def _summary(res: RunResult, what: str = "") -> str:
    parts = [f"sandboxd: {what}{res.status}"]
    if res.exit_code is not None:
        parts.append(f"exit {res.exit_code}")
    if res.signal is not None:
        parts.append(f"signal {res.signal}")
    parts.append(f"cpu {res.cpu_time:.3f}s wall {res.wall_time:.3f}s mem {res.memory / MiB:.1f}MiB")
    if res.stdout_truncated or res.stderr_truncated:
        parts.append("output truncated")
    if res.message:
        parts.append(f"({res.message})")
    return "  ".join(parts)


async def _run(ns: argparse.Namespace, stdin: bytes) -> tuple[RunResult, RunResult | None]:
    """Returns (final result, compile result if there was a compile step)."""
    argv = list(ns.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise SchemaError("nothing to run: give -- CMD ARGS..., or --lang L FILE")
    limits = _limits(ns)
    source = b""
    if ns.lang is not None:
        # Usage errors first: no box is built for a run that cannot happen.
        known = load_dir()
        if ns.lang not in known:
            raise SchemaError(f"language: unknown {ns.lang!r}; known: {', '.join(sorted(known))}")
        try:
            source = Path(argv[0]).read_bytes()
        except OSError as e:
            raise SchemaError(f"cannot read source {argv[0]!r}: {e.strerror}") from None
    from sandboxd.engine.engine import Engine, EngineConfig

    # One box serves a one-shot run; a compile step hands it back and takes it again after a reset.
    async with await Engine.start(EngineConfig(instance=ns.instance, pool_size=1)) as eng:
        if ns.lang is None:
            return await eng.run(RunRequest(cmd=argv, stdin=stdin, limits=limits)), None
        sr: SourceResult = await eng.run_source(ns.lang, source, stdin=stdin, limits=limits, args=argv[1:])
        if sr.run is None:
            assert sr.compile is not None
            return sr.compile, sr.compile
        return sr.run, sr.compile


IN_SCOPE_ENV = "SANDBOXD_IN_SCOPE"


def _delegate_or_continue() -> None:
    """On a cgroup v2 host, a one-shot run from a login shell sits in a cgroup
    systemd owns; it may not create box cgroups there.  Re-run in a transient
    scope with Delegate=yes (stdin, stdout and the exit status pass through),
    as `systemd-run --scope` would by hand."""
    if os.environ.get(IN_SCOPE_ENV) == "1" or shutil.which("systemd-run") is None:
        return
    from sandboxd.sandbox import cgroups

    try:
        probe = cgroups.detect("cli-probe", create=False)
    except cgroups.CgroupError:
        return  # reported properly when the engine starts
    if isinstance(probe, cgroups.V2) and probe.foreign:
        argv = ["systemd-run", "--scope", "--quiet", "--collect", "-p", "Delegate=yes", f"--setenv={IN_SCOPE_ENV}=1"]
        os.environ[IN_SCOPE_ENV] = "1"
        os.execvp(argv[0], [*argv, "--", sys.executable, "-m", "sandboxd", *sys.argv[1:]])


def main(args: list[str] | None = None) -> int:
    ns = _parser().parse_args(args)
    if ns.command == "serve":
        return _serve(ns)
    if ns.command == "config":
        return _config(ns)
    if ns.command == "coordinator":
        return _coordinator(ns)
    if ns.command == "rootfs":
        return _rootfs(ns)
    if ns.command == "submit":
        from sandboxd_client import submit

        return submit.main(ns)
    from sandboxd.engine.engine import InstanceBusy

    logging.basicConfig(format="sandboxd: %(message)s", level=logging.WARNING)
    _delegate_or_continue()
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    try:
        res, comp = uvloop.run(_run(ns, stdin))
    except SchemaError as e:
        print(f"sandboxd: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (InstanceBusy, PermissionError) as e:
        print(f"sandboxd: cannot start: {e}", file=sys.stderr)
        return EXIT_NOT_OK
    compile_failed = comp is not None and res is comp
    if ns.json:
        d = _as_json(res)
        if ns.lang is not None:
            d["stage"] = "compile" if compile_failed else "run"
            d["compile"] = _as_json(comp) if comp is not None else None
        sys.stdout.write(msgspec.json.encode(d).decode() + "\n")
    else:
        if compile_failed:
            sys.stderr.write(_text(res.stdout + res.stderr))
            print(_summary(res, "compile failed: "), file=sys.stderr)
        else:
            sys.stdout.buffer.write(res.stdout)
            sys.stdout.flush()
            sys.stderr.buffer.write(res.stderr)
            print(_summary(res), file=sys.stderr)
    return EXIT_OK if res.status == "ok" and not compile_failed else EXIT_NOT_OK


if __name__ == "__main__":
    sys.exit(main())
