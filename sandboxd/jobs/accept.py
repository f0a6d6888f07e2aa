"""A durable job's acceptance (sandboxd.jobs.service): from the request to
the acknowledgement, and what the job holds from then to its end (its tenant
charge, its admission, its file pins).

The per-run path, kept lean (issue 18): a keyed request's idempotency key is
looked up in memory only; the job store is asked about it only when the job
would be refused (a full queue, the memory budget, a tenant's limit, the
store's bytes), so that such a refusal never hits a retry of a job that
exists, while an accepted retry is found by the store's INSERT itself (its
unique key index: `_committed`, held).  A keyed spec is encoded once: its
canonical msgpack is both what its fingerprint hashes and what the store keeps.

Work proportional to a request's size runs off the event loop (issue 13): a
spec of INLINE_BYTES or more (its admission's estimate) is encoded and hashed
in a thread (hashlib releases the GIL over a big buffer), so that `/healthz`
and small jobs are not held up behind a 40 MiB stdin; smaller ones stay
inline, where the hop would cost more.  A large stdin is not copied into the
encoding at all (msgspec's encode holds the GIL, in any thread): the spec is
encoded in pieces that hold the request's own stdin (sandboxd.jobs.specpieces).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, NamedTuple

import msgspec

from sandboxd.engine.budget import Admission, nbytes
from sandboxd.errors import ServiceError, error
from sandboxd.jobs.fingerprint import Op, Spec, canonical_pieces, fingerprint, fingerprint_of
from sandboxd.jobs.frontend import Operations, Progress, check_idempotency_key, conflict
from sandboxd.jobs.specpieces import Piece, pieces, total
from sandboxd.jobs.store import INLINE_BYTES, JobIdInUse, JobStore, NewJob, Stored, StoreFull
from sandboxd.jobs.table import Job, JobTable, encode_spec
from sandboxd.jobs.tenants import Charge
from sandboxd.schema import JobInfo, RunRequest, Submission

if TYPE_CHECKING:
    from sandboxd.jobs.files import HostFiles


class Encoded(NamedTuple):
    pieces: list[Piece]  # what the store keeps, in pieces never joined (sandboxd.jobs.specpieces)
    fingerprint: bytes | None  # a keyed request's (sandboxd.jobs.fingerprint)

    @property
    def size(self) -> int:
        return total(self.pieces)

    def row(self, job: Job, op: Op) -> NewJob:
        first, *more = self.pieces
        return NewJob(job.id, op, bytes(first), job.created_at, job.callback_url, job.key, job.fingerprint, more)


def encoded(op: Op, spec: Spec, callback_url: str | None, keyed: bool) -> Encoded:
    """The spec's stored bytes and, keyed, its fingerprint from the same bytes;
    a large stdin in neither is copied (sandboxd.jobs.specpieces)."""
    if not keyed:
        return Encoded(pieces(spec, encode_spec), None)
    data = canonical_pieces(spec)
    return Encoded(data, fingerprint_of(op, data, callback_url))


async def encode(op: Op, spec: Spec, callback_url: str | None, keyed: bool, size: int) -> Encoded:
    """encoded(), in a thread for a spec of INLINE_BYTES or more (size: its estimate, nbytes)."""
    if size < INLINE_BYTES:
        return encoded(op, spec, callback_url, keyed)
    return await asyncio.to_thread(encoded, op, spec, callback_url, keyed)


class Acceptance(Operations):
    """Service's acceptance of durable jobs (the steps that are its own are declared here)."""

    table: JobTable
    store: JobStore
    files: HostFiles | None

    def _admit(self, lang: str, spec: Spec, force: bool = False) -> Admission:
        raise NotImplementedError

    async def _check_files(self, spec: Spec) -> None:
        raise NotImplementedError

    def _hold(self, job: Job, spec: Spec) -> None:
        raise NotImplementedError

    def _start(self, job: Job, op: Op, spec: Spec) -> None:
        raise NotImplementedError

    def _finish(self, job: Job) -> None:
        raise NotImplementedError

    async def _accept(
        self,
        job: Job,
        op: Op,
        spec: Spec,
        key: str | None,
        progress: Progress | None = None,
        waited: bool = False,
    ) -> JobInfo:
        """Commit the job to the store, then start it; returns what its sender
        is told (another job's, if its idempotency key already names one).
        waited (its sender hears of it only by its result): started at once,
        its one row written at its end (_start_waited)."""
        job.durable = True
        if check_idempotency_key(key) is not None:
            other = self.table.keys.get(str(key))
            if other is not None:
                fp = (await encode(op, spec, job.callback_url, True, nbytes(spec))).fingerprint
                assert fp is not None
                return await self._replay(other, str(key), fp, progress, waited)
        asked: list[int | None] = []  # the priority as sent, if the tenant's maximum clamped it
        try:
            enc = await self._take(job, op, spec, key, asked, waited)
        except ServiceError:
            held = None if key is None else await self._held(job, op, spec, key, asked)
            if held is None:
                raise
            return held
        if key is not None:
            taken = await self._taken(job, key, waited, progress)
            if taken is not None:
                return taken
        if progress is not None:
            job.listeners.append(progress)
        if waited:
            return self._start_waited(job, op, spec)
        assert enc is not None
        self.table.add(job)
        self._hold(job, spec)
        acc: asyncio.Future[JobInfo] = asyncio.get_running_loop().create_future()
        job.accepted = acc
        if key is not None:  # (others may wait for it: retrieved even if its sender has gone)
            acc.add_done_callback(lambda f: f.cancelled() or f.exception())
        job.spec_size = enc.size
        self.store.add(enc.row(job, op), lambda ok, val: self._committed(job, op, spec, ok, val))
        # Unkeyed, not shielded (it costs): if its sender goes, `acc` is cancelled, and the
        # commit starts the job all the same.  Keyed, others may be waiting for `acc` too.
        return await (asyncio.shield(acc) if key is not None else acc)

    def _start_waited(self, job: Job, op: Op, spec: Spec) -> JobInfo:
        """A job its sender hears of only by its result (issue 14 promises to
        finish what was acknowledged: this is acknowledged by its result
        alone): not in the store while it runs, so no INSERT and commit before
        it starts; table.save writes its one, final row (result, key and
        fingerprint) when it ends.  A daemon that dies meanwhile leaves nothing
        of it, and its client's keyed retry runs it again."""
        if self.draining:  # (the stop began while it was admitted: nothing acknowledged, its client retries)
            self._let_go(job)
            self.refuse_if_draining()
        job.waited = True
        if job.key is not None:  # (a keyed retry may acknowledge it: _acknowledge stores it)
            job.request = spec  # (no copy: its task holds it anyway)
        self.table.add(job)
        self._hold(job, spec)
        self._start(job, op, spec)
        return job.info()

    async def _take(
        self, job: Job, op: Op, spec: Spec, key: str | None, asked: list[int | None], waited: bool
    ) -> Encoded | None:
        """What the job holds once accepted (its files named, its tenant's charge, its
        queue places and bytes, its room in the store), and its encoded spec (None for
        an unkeyed waited job: no spec is stored for it, nothing runs it again); or the
        refusal, with nothing held."""
        await self._check_files(spec)
        job.charge = self._tenant_admit(job, spec, asked)
        try:
            job.admission = self._admit(job.lang, spec)
            job.admission.ticket.tenant, job.admission.ticket.weight = job.charge.name, job.charge.weight
            size = job.admission.hold.n
            enc = None if waited and key is None else await self._encoded(op, spec, job.callback_url, key, size, asked)
            # (jobs.store_max_bytes: refused, never dropped later.  A waited job is
            # checked as any, by its request's size: its result needs room too.)
            self.store.check_room(size if enc is None else enc.size)
        except StoreFull as e:
            self._let_go(job)
            self.metrics.rejections.labels("queue_full").inc()
            raise error("queue_full", str(e), e.retry_after) from None
        except BaseException:
            self._let_go(job)
            raise
        if key is not None:
            assert enc is not None
            job.key, job.fingerprint = key, enc.fingerprint
        return enc

    async def _taken(self, job: Job, key: str, waited: bool, progress: Progress | None) -> JobInfo | None:
        """After _take's awaits, before the job takes its key (nothing awaited in
        between, so no other request slips in): the job the key names by now, in
        memory (accepted meanwhile), or, for a waited job, in the store (saved
        and out of memory: a durable job's INSERT meets it itself), as this
        sender's answer; None if the key is free."""
        other = self.table.keys.get(key)
        held = self.store.by_key(key) if other is None and waited else None
        if other is None and held is None:
            return None
        self._let_go(job)  # (neither in the table nor pinning files yet)
        fp = job.fingerprint
        assert fp is not None
        if other is not None:
            return await self._replay(other, key, fp, progress, waited)
        assert held is not None
        if held.fingerprint != fp:
            raise conflict(key, held.id)
        return self.table.held_info(held)

    @staticmethod
    def _let_go(job: Job) -> None:
        if job.admission is not None:
            job.admission.close()
        if job.charge is not None:
            job.charge.close()
        job.admission = job.charge = None

    @staticmethod
    async def _encoded(
        op: Op, spec: Spec, cb: str | None, key: str | None, size: int, asked: list[int | None]
    ) -> Encoded:
        enc = await encode(op, spec, cb, key is not None, size)
        if key is not None and asked:  # the key binds the request as it was sent, not as clamped
            enc = enc._replace(fingerprint=fingerprint(op, msgspec.structs.replace(spec, priority=asked[0]), cb))
        return enc

    async def _held(self, job: Job, op: Op, spec: Spec, key: str, asked: list[int | None]) -> JobInfo | None:
        """On the refusal path only: the job the key already names in the store, if any."""
        held = self.store.by_key(key)
        if held is None:
            return None
        fp = (await self._encoded(op, spec, job.callback_url, key, nbytes(spec), asked)).fingerprint
        if held.fingerprint != fp:
            raise conflict(key, held.id)
        return self.table.held_info(held)

    def _tenant_admit(self, job: Job, spec: Spec, asked: list[int | None]) -> Charge:
        """The calling tenant's limits (sandboxd.jobs.tenants); its priority clamped to the tenant's maximum."""
        priority = getattr(spec, "priority", None)
        charge, allowed = self.tenants.admit(job.lang, priority)
        if allowed is not None and allowed != priority and isinstance(spec, RunRequest | Submission):
            spec.priority = allowed
            asked.append(priority)
        return charge

    async def _replay(self, other: Job, key: str, fp: bytes, progress: Progress | None, waited: bool) -> JobInfo:
        """A keyed request naming a job in memory: that job (waited: this
        request's answer is that job's result; not waited: its answer is the
        job id, so a waited job is first put in the store, _acknowledge)."""
        if other.fingerprint != fp:
            raise conflict(key, other.id)
        if progress is not None:
            other.listeners.append(progress)
        if other.waited and not waited:
            # (a retry that began before a stop: the job may be dropped by it, and told
            # nothing, its client retries on the next daemon, which finds what was saved)
            self.refuse_if_draining()
            await self._acknowledge(other)
        if other.accepted is None:  # (restored at start: committed long ago; or waited: its result answers)
            return other.info()
        info = await asyncio.shield(other.accepted)
        return other.info() if info.job == other.id else info

    async def _acknowledge(self, job: Job) -> None:
        """A waited job a keyed retry is about to acknowledge (with its id: a
        202, an SSE or socket `accepted`): in the store before that answer, as
        every acknowledged job.  Running: inserted now as an unfinished job
        (its request as accepted), and its end updates that row; ended: its
        final row, once written, is the acknowledgement (JobTable._saved settles
        `job.accepted`; a stop that dropped it, Service._finish)."""
        if job.accepted is not None:  # (being acknowledged already)
            return
        if job.done.is_set() and self.table.jobs.get(job.id) is not job:
            return  # (its final row is written)
        acc: asyncio.Future[JobInfo] = asyncio.get_running_loop().create_future()
        acc.add_done_callback(lambda f: f.cancelled() or f.exception())  # (its waiters may all go)
        job.accepted = acc
        spec = job.request
        if job.done.is_set() or spec is None or job.handler is None:
            return  # (ended: its final row, queued, settles acc)
        op = job.handler.op
        # (its request as the job holds it: the tenant's clamped priority; files it names
        # possibly resolved into it already, which a restart runs the same way)
        enc = await encode(op, spec, job.callback_url, True, nbytes(spec))
        if job.done.is_set():  # (ended while it was encoded: as above)
            return
        job.waited, job.request, job.spec_size = False, None, enc.size
        self.store.add(enc.row(job, op), lambda ok, val: self._acknowledged(acc, job, ok, val))

    @staticmethod
    def _acknowledged(acc: asyncio.Future[JobInfo], job: Job, ok: bool, val: Stored | Exception | None) -> None:
        if acc.done():
            return
        if ok and val is None:
            acc.set_result(job.info())
        else:  # (its key held in the store, or the store refused it: its end still writes its row)
            acc.set_exception(error("internal", f"the job store refused job {job.id}: {val}"))

    def _committed(self, job: Job, op: Op, spec: Spec, ok: bool, val: Stored | Exception | None) -> None:
        acc = job.accepted
        assert acc is not None

        def settle(info: JobInfo | None = None, exc: BaseException | None = None) -> None:
            if acc.done():  # (cancelled: its sender has gone)
                return
            if exc is not None:
                acc.set_exception(exc)
            elif info is not None:
                acc.set_result(info)

        exc = None if ok else val
        held = val if isinstance(val, Stored) else None
        if exc is not None or held is not None:
            self._dropped(job)
        if isinstance(exc, JobIdInUse):
            settle(exc=error("bad_request", f"job id {job.id!r} is in use"))
        elif exc is not None:
            settle(exc=error("internal", f"the job store refused the job: {exc}"))
        elif held is not None:
            if held.fingerprint != job.fingerprint:
                settle(exc=conflict(job.key or "", held.id))
            else:
                try:
                    settle(self.table.held_info(held))
                except ServiceError as e:
                    settle(exc=e)
        elif self.draining:  # (accepted as the stop began: the next start runs it)
            settle(job.info())
            job.requeue, job.state = True, "cancelled"
            self._finish(job)
        else:
            settle(job.info())
            self._start(job, op, spec)

    def _dropped(self, job: Job) -> None:
        """Not accepted after all (the store refused it, or its key names another job): what it holds back."""
        self.table.drop(job)
        self._let_go(job)
        if self.files is not None:
            self.files.release(job.id)
