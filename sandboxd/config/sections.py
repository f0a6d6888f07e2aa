"""The configuration's sections: every setting and its default, declared once.

The rest of the code reads a default from here (`sandboxd.config.ENGINE.queue_depth`)
or takes the section itself; `sandboxd config --defaults` prints them all.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from sandboxd.config.host import default_pool_size
from sandboxd.schema import HostTag


class ConfigError(ValueError):
    pass


Prefix = Annotated[str, Meta(pattern=r"^(/[A-Za-z0-9._~-]+)*$")]
# A browser origin as it sends it ("https://ide.example.org", "http://localhost:5173"), or "*": any.
CorsOrigin = Annotated[
    str, Meta(pattern=r"^(\*|https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?)$")
]


class Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class LogSettings(Section, frozen=True):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"
    # A debugging aid, 0 = off: log each turn of the event loop longer than
    # this many ms, with the stacks that held it (sandboxd/app/stallwatch.py).
    stall_ms: Annotated[float, Meta(ge=0)] = 0.0


class SocketSettings(Section, frozen=True):
    # Unix socket for local judges and the Python client; "" disables it.
    path: str = "/run/sandboxd/sandboxd.sock"
    # Who may connect is who may run code: keep it to a group.
    mode: Annotated[str, Meta(pattern=r"^0?[0-7]{3}$")] = "0660"
    group: str = ""  # "" keeps root's group; e.g. "sandboxd"
    idle_timeout: Annotated[float, Meta(gt=0)] = 600.0  # socket connection with nothing in flight


class HttpSettings(Section, frozen=True):
    """HTTP listeners, and the limits on input every transport shares
    (sandboxd/api/inbound.py, httpguard.py; README "Limits on input")."""

    # Listen address "host:port"; "" disables HTTP.
    listen: str = "127.0.0.1:7070"
    # Bearer token; required when any listener is not a loopback address.
    token: str = ""
    max_body: Annotated[int, Meta(ge=1024)] = 64 << 20  # bytes, per HTTP body or socket frame
    # Seconds a connection has to deliver a request's headers (HTTP) or its
    # first frame (socket), from connecting or from its first byte after idling.
    header_timeout: Annotated[float, Meta(gt=0)] = 10.0
    # Seconds to receive one request body or socket frame, whatever the rate;
    # also how long a client may leave its reply unread.
    body_timeout: Annotated[float, Meta(gt=0)] = 60.0
    idle_timeout: Annotated[float, Meta(gt=0)] = 75.0  # keep-alive connection with no request
    max_connections: Annotated[int, Meta(ge=1)] = 4096  # all listeners and the socket; beyond: 503
    max_connections_per_listener: Annotated[int, Meta(ge=1)] = 1024
    # Bytes of request bodies and frames being received at once, daemon-wide
    # (reserved before reading); beyond: 503 + Retry-After (socket: waits).
    max_receiving_bytes: Annotated[int, Meta(ge=1024)] = 256 << 20
    # Submissions streaming their progress over HTTP at once (Server-Sent
    # Events, sandboxd/api/sse.py); beyond: 503 + Retry-After.
    max_event_streams: Annotated[int, Meta(ge=1)] = 256
    # Judge0 CE and Piston v2 compatible APIs on the listener, under these
    # path prefixes (sandboxd/compat); "" disables one.
    judge0_prefix: Prefix = "/judge0"
    piston_prefix: Prefix = "/piston"
    # ...and/or at the root of listeners of their own, "host:port" (Judge0's
    # port is 2358, Piston's 2000), for clients that cannot take a path in
    # their base URL; "" = none.  The token rule applies to each.
    judge0_listen: str = ""
    piston_listen: str = ""
    # Origins whose pages may call the native API (and Piston's) from a browser
    # (CORS, sandboxd/api/cors.py): exact origins or "*"; [] = no CORS headers.
    cors_origins: list[CorsOrigin] = msgspec.field(default_factory=list)
    # The same for the Judge0 API: any origin by default, as Judge0 itself allows.
    judge0_cors_origins: list[CorsOrigin] = msgspec.field(default_factory=lambda: ["*"])
    # Read a Piston request body sent as text/plain as JSON (the npm piston-client
    # does; Piston answers 415).  Off: a text/plain POST needs no CORS preflight,
    # so without a token any web page could run programs here (README "Compat").
    piston_accept_text_plain: bool = False


class EngineSettings(Section, frozen=True):
    """The warm pools and their queues (sandboxd.engine)."""

    pool_size: Annotated[int, Meta(ge=1, le=1024)] = msgspec.field(default_factory=default_pool_size)
    max_runs_per_box: Annotated[int, Meta(ge=1)] = 1000
    queue_depth: Annotated[int, Meta(ge=1)] = 10_000  # waiting runs per pool; beyond: rejected (429)
    # Priority points a waiting run gains per second; the coordinator's fleet queues age alike.
    aging: Annotated[float, Meta(ge=0)] = 1.0
    lang_capacity: dict[str, Annotated[int, Meta(ge=1)]] = msgspec.field(default_factory=dict)
    # Bytes the daemon may hold for jobs: queued and running requests, the compile
    # cache (sandboxd/engine/budget.py; results live in the job store).  Beyond it new jobs get
    # queue_full (429).  0: a quarter of the host's memory, 256 MiB to 8 GiB (config/host.py).
    memory_budget: Annotated[int, Meta(ge=0)] = 0
    # Run every language's self-test at start-up; serve only those that pass.
    selftest: bool = True
    languages_dir: str = ""  # "" = the packaged language files


class JobsSettings(Section, frozen=True):
    results_ttl: Annotated[float, Meta(gt=0)] = 600.0  # seconds a finished job's result stays readable
    # The durable job store (SQLite): accepted jobs and their results survive a
    # restart.  "" = STATE_DIR/jobs/INSTANCE.sqlite3 (one file per instance).
    store: str = ""
    # Bytes of specs and results the job store keeps (sandboxd/jobs/store.py): past it
    # the oldest results are evicted, then new jobs get queue_full (429).
    # 0: a tenth of the store's filesystem, 256 MiB to 16 GiB.
    store_max_bytes: Annotated[int, Meta(ge=0)] = 0
    # Result callbacks (HTTP ?callback_url=) to loopback/private/link-local
    # addresses are refused unless this is true (SSRF, CVE-2024-29021).
    callback_allow_private: bool = False


class FleetSettings(Section, frozen=True):
    """sandboxd/fleet.  `serve` joins the fleet (claims jobs while it has free
    boxes) when `url` is set; `coordinator` requires it."""

    url: str = ""  # the fleet's Redis, e.g. "redis://10.0.0.5:6379/0"
    prefix: Annotated[str, Meta(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = "sandboxd"  # several fleets per Redis
    host_id: str = ""  # "" = the hostname (plus "/instance" for a non-default instance)
    tags: list[HostTag] = msgspec.field(default_factory=list)  # jobs may require one (host_tag)
    only_tagged: bool = False  # reserved host: take only jobs that require one of the tags
    lease: Annotated[float, Meta(ge=1)] = 10.0  # seconds a claimed job stays with a silent host
    heartbeat: Annotated[float, Meta(gt=0)] = 1.0  # seconds between a host's lease renewals
    max_attempts: Annotated[int, Meta(ge=1)] = 3  # hosts lost running one job before it fails
    queue_depth: Annotated[int, Meta(ge=1)] = 100_000  # coordinator: waiting jobs per fleet queue; beyond: 429


class TenantsSettings(Section, frozen=True):
    """sandboxd/jobs/tenants.py (README "Tenants"): API keys with limits and fair-share weights."""

    # The tenants file (JSON, keys stored as SHA-256), written by the admin API
    # (POST /v1/tenants); "" = STATE_DIR/tenants/INSTANCE.json.
    file: str = ""
    # Fair-share weight of the unnamed tenant: the bearer token, no auth, the socket without api_key.
    unnamed_weight: Annotated[float, Meta(gt=0, le=1_000_000)] = 1.0


class SessionsSettings(Section, frozen=True):
    """Live sessions over WebSocket (GET /v1/sessions, Piston's /api/v2/connect;
    sandboxd/jobs/sessions.py, docs/sessions.md)."""

    # Sessions at once, daemon-wide (each holds a warm box for its life); beyond:
    # queue_full + retry_after.  0: half the pool (at least 1), so batch runs keep boxes.
    max_sessions: Annotated[int, Meta(ge=0)] = 0
    # Seconds a session lives at most: its run's wall time limit.
    max_length: Annotated[float, Meta(gt=0, le=3600)] = 600.0
    # Seconds with no stdin and no output before a session ends; a start message
    # may ask for less, never more.
    idle_timeout: Annotated[float, Meta(gt=0, le=3600)] = 60.0
    # Seconds the server waits for the start message after the upgrade.
    start_timeout: Annotated[float, Meta(gt=0)] = 5.0
    # Seconds a session waits for a box before it is refused (queue_full, retry_after).
    queue_wait: Annotated[float, Meta(gt=0)] = 5.0
    # Bytes of output waiting in a WebSocket's send buffer before the box's pipes
    # are no longer read (back-pressure; stdin is bounded by the pipe into the box).
    send_buffer: Annotated[int, Meta(ge=4096)] = 256 << 10
    # The http://host:port a fleet coordinator proxies this host's sessions to,
    # advertised in its heartbeat; "" = http://[http] listen.
    advertise: str = ""
    # Coordinator: the bearer token it sends the hosts' session endpoints; "" = its own [http] token.
    host_token: str = ""
    # Coordinator: sessions it proxies at once (both routes); beyond, queue_full (429 +
    # Retry-After) before the upgrade.  Each holds two sockets and up to a frame each
    # way (the start message up to 20 MiB), whatever the hosts' own caps allow.
    max_proxied: Annotated[int, Meta(ge=1)] = 512


class FilesSettings(Section, frozen=True):
    """The content-addressed file store (sandboxd/filestore.py; README "File store")."""

    dir: str = ""  # "" = STATE_DIR/files/INSTANCE (one directory per instance)
    # Bytes of files (uploads and compiled programs) a daemon keeps on disk in
    # state_dir/files/INSTANCE; past it the least recently used go, never one a
    # queued or running job names.
    max_bytes: Annotated[int, Meta(ge=1 << 20)] = 4 << 30
    max_file: Annotated[int, Meta(ge=1024, le=512 << 20)] = 256 << 20  # bytes of one file (upload)
    # Fleet: bytes of files the fleet's Redis holds (each file one Redis string);
    # past it the least recently named go, never one named in the last `fleet_keep` seconds.
    fleet_max_bytes: Annotated[int, Meta(ge=1 << 20)] = 2 << 30
    fleet_keep: Annotated[float, Meta(ge=0)] = 86400.0


class Config(Section, frozen=True):
    # Name of this daemon on the host: cgroups, locks and uid leases are per instance.
    instance: str = "default"
    state_dir: str = "/var/lib/sandboxd"
    run_dir: str = "/run/sandboxd"
    # `serve` writes its pid here once its socket is bound, and removes it on exit; "" = run_dir/sandboxd.pid.
    pid_file: str = ""
    drain_timeout: Annotated[float, Meta(ge=0)] = 30.0  # SIGTERM: seconds running jobs get to finish
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    socket: SocketSettings = msgspec.field(default_factory=SocketSettings)
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    engine: EngineSettings = msgspec.field(default_factory=EngineSettings)
    jobs: JobsSettings = msgspec.field(default_factory=JobsSettings)
    fleet: FleetSettings = msgspec.field(default_factory=FleetSettings)
    tenants: TenantsSettings = msgspec.field(default_factory=TenantsSettings)
    sessions: SessionsSettings = msgspec.field(default_factory=SessionsSettings)
    files: FilesSettings = msgspec.field(default_factory=FilesSettings)


# Section name -> its type, from Config's own fields (declared once, above).
SECTIONS: dict[str, type[Section]] = {
    f.name: f.type for f in msgspec.structs.fields(Config) if isinstance(f.type, type) and issubclass(f.type, Section)
}
