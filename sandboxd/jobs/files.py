"""The file store as operations: uploads, reads, the check of the hashes a job
names, pins while it is queued or running, and what a fleet host fetches.

`FileOps` is what the transports serve (sandboxd.api.files) for a host daemon
(`HostFiles`, over its own disk store) and for the coordinator
(sandboxd.fleet.files, over Redis).  A host of a fleet fetches a hash its
disk lacks from the fleet (`Remote`), checks it, and keeps it; the coordinator
has refused a job naming an unknown hash before it was queued.  Imports no
engine code (a coordinator loads this module).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

from sandboxd.errors import ServiceError, error
from sandboxd.filestore import CHUNK, FileStore, HashMismatch, StoreFull, TooLarge, Writer
from sandboxd.schema import RunRequest, SchemaError, Submission, file_refs, resolve_refs

UPLOAD_HINT = "upload it first with PUT /v1/files/{sha256} (or the socket's files op)"


@runtime_checkable
class FileOps(Protocol):
    """The store as every transport serves it (`PUT/HEAD/GET /v1/files/{sha256}`, the `files` op)."""

    max_file: int

    async def file_size(self, sha: str) -> int | None: ...

    async def put_file(self, sha: str, body: AsyncIterator[bytes]) -> bool:
        """Store the body under `sha` (checked); True if it was not stored before."""
        ...

    def file_chunks(self, sha: str) -> AsyncIterator[bytes]:
        """Its bytes, chunk by chunk; not_found if not stored."""
        ...

    async def check_refs(self, spec: object) -> None:
        """bad_request naming the field and hash of a file the spec names that is not stored."""
        ...


class Remote(Protocol):
    """The fleet's store, as a host uses it (sandboxd.fleet.files.RedisFiles)."""

    async def fetch(self, name: str, w: Writer) -> bool:
        """Write the named object's bytes into `w`; False if the fleet has none."""
        ...

    async def push(self, name: str, data: bytes) -> None: ...


@contextmanager
def mapped() -> Iterator[None]:
    """The store's refusals as the client's errors."""
    try:
        yield
    except HashMismatch as e:
        raise error("bad_request", f"sha256: {e}") from None
    except TooLarge as e:
        raise error("too_large", f"body: {e}") from None
    except StoreFull as e:
        raise error("queue_full", str(e)) from None


def refs_of(spec: object) -> list[tuple[str, str]]:
    """(field, hash) of each stored file a native job names; none for other kinds."""
    return file_refs(spec) if isinstance(spec, (RunRequest, Submission)) else []


def unknown(field: str, sha: str, more: int) -> ServiceError:
    also = f" (and {more} more unknown)" if more else ""
    return error("bad_request", f"{field}: no file {sha} in the store{also}; {UPLOAD_HINT}")


async def receive(w: Writer, sha: str, body: AsyncIterator[bytes]) -> str:
    try:
        async for chunk in body:
            w.write(chunk)
        return w.commit(sha)
    except BaseException:
        w.abort()
        raise


class HostFiles:
    """A host daemon's store (state_dir/files/INSTANCE) and, in a fleet, the fleet's behind it."""

    def __init__(self, store: FileStore, remote: Remote | None = None) -> None:
        self.store = store
        self.remote = remote
        self.max_file = store.max_file
        self._held: dict[str, list[str]] = {}  # job id -> the names it pins
        self.fetched = 0  # files (and compiled programs) fetched from the fleet

    # --- FileOps --------------------------------------------------------------

    async def file_size(self, sha: str) -> int | None:
        return self.store.size(sha)

    async def put_file(self, sha: str, body: AsyncIterator[bytes]) -> bool:
        if self.store.size(sha) is not None:
            async for _ in body:  # (read to the end: the client sent it; nothing kept)
                pass
            return False
        with mapped():
            await receive(self.store.writer(), sha, body)
        return True

    async def file_chunks(self, sha: str) -> AsyncIterator[bytes]:
        try:
            fd = self.store.open(sha)
        except FileNotFoundError:
            raise error("not_found", f"no file {sha} in the store") from None
        try:
            while b := os.read(fd, CHUNK):
                yield b
        finally:
            os.close(fd)

    async def check_refs(self, spec: object) -> None:
        """A job the daemon accepts itself names only stored files (a fleet host's
        jobs were checked by the coordinator, and are fetched as they start)."""
        missing = [(f, h) for f, h in refs_of(spec) if self.store.size(h) is None]
        if missing:
            raise unknown(*missing[0], len(missing) - 1)

    # --- jobs -----------------------------------------------------------------

    def hold(self, job_id: str, spec: object) -> None:
        """Pinned while the job is queued or running: eviction keeps them."""
        names = [h for _, h in refs_of(spec)]
        if names:
            self.store.pin(names)
            self._held[job_id] = names

    def release(self, job_id: str) -> None:
        names = self._held.pop(job_id, None)
        if names:  # (most jobs name no file: nothing to unpin)
            self.store.unpin(names)

    async def resolve(self, spec: object) -> None:
        """As the job starts: fetch what this host lacks from the fleet, then put
        the bytes where the hashes are (SchemaError naming one that is nowhere)."""
        if not isinstance(spec, (RunRequest, Submission)):
            return
        for field, sha in refs_of(spec):
            if self.store.size(sha) is None and not await self._fetch(sha, check=True):
                raise SchemaError(f"{field}: no file {sha} in the store or the fleet's; {UPLOAD_HINT}")
        # (The tests' bytes: read by the judge as each test starts, not all held at once.)
        resolve_refs(spec, self.store.read, tests=False)

    async def _fetch(self, name: str, check: bool) -> bool:
        if self.remote is None:
            return False
        w = self.store.writer()
        try:
            if not await self.remote.fetch(name, w):
                w.abort()
                return False
            w.commit(name) if check else w.commit_as(name)
        except BaseException:
            w.abort()
            raise
        self.fetched += 1
        return True

    # --- the compile cache (sandboxd.engine.compiled.CompileStore) ------------

    # (Stored behind their own SHA-256, 32 bytes: a copy cut short or spliced
    # is read as a miss, never run.  Their names are compile keys, not hashes.)

    async def load(self, key: str) -> bytes | None:
        name = "c-" + key
        if self.store.size(name) is None:
            try:
                with mapped():
                    if not await self._fetch(name, check=False):
                        return None
            except ServiceError:
                return None
        blob = self.store.read(name)
        if hashlib.sha256(blob[32:]).digest() != blob[:32]:
            self.store.remove(name)
            return None
        return blob[32:]

    async def save(self, key: str, data: bytes) -> None:
        name, blob = "c-" + key, hashlib.sha256(data).digest() + data
        try:
            self.store.put(blob, name)
        except (StoreFull, TooLarge):
            return  # (a cache: not keeping it costs a compile later)
        if self.remote is not None:
            await self.remote.push(name, blob)
