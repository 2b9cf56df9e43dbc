"""The certificate reconciler: keeps HAProxy's memory and the certificate directory equal to the desired state.

Start-up: observe (state file, directory, `show ssl cert`), fingerprint only the suspects in HAProxy, plan, apply.
Then: whenever the desired certificates change, or a retry falls due, plan against the state and apply.

Apply is ordered for crash safety: check the material, write the file (atomic), inject it (new/set/commit/add), and
only then record it in the state file. A crash anywhere leaves a state file that lags, never one that lies, and the
next start-up's observation repairs or merely records what it finds. For speed the installs go in groups: while
HAProxy takes one group, the next one is checked (on the loop, between HAProxy's replies) and written (one thread,
parallel fsyncs); the order above holds for every certificate. One failure does not stop the others: a
failed name waits on the retry schedule; material rejected for a fingerprint waits for a new fingerprint.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import dataclasses
import datetime as dt
import functools
import gc
import hashlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from agent.metrics import AgentMetrics
from agent.runtime import (
    BadArgument,
    PayloadTooLarge,
    RuntimeApiError,
    RuntimeClient,
    Upload,
)
from agent.sync.errors import FingerprintNotCurrent, NotFound, SyncError
from agent.sync.model import CertRef

from . import files
from .errors import CertFileError
from .material import (
    Material,
    MaterialRejected,
    cert_file_name,
    check_material,
    name_from_file_name,
)
from .plan import (
    Action,
    DiskEntry,
    Install,
    Record,
    Remove,
    have_from_state,
    observe,
    plan,
    suspects,
)
from .state import AgentState, AppliedCert, load_state, save_state

__all__ = ["CertReconciler", "CertSettings", "MaterialSource"]

logger = logging.getLogger(__name__)


class MaterialSource(Protocol):
    async def materials(self, wanted: Sequence[tuple[str, str]]) -> dict[str, str | SyncError]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class CertSettings:
    cert_dir: Path
    admin_socket: str  # unix socket path or host:port
    state_file: Path
    https_addr: str | None = None  # where to handshake after a commit; None disables verification
    retry_s: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0, 600.0)  # per failed name, then the last value
    material_batch: int = 200  # certificates per material request (the protocol allows 500)
    fetch_concurrency: int = 2  # material requests in flight while HAProxy works on earlier certificates
    inject_group: int = 16  # certificates checked and written while HAProxy takes the previous as many
    parallel_fsyncs: int = 8  # a group's files are fsynced this many at a time
    state_flush_every: int = 500  # actions between state-file writes during a long apply, at least...
    state_flush_share: float = 0.05  # ...and at most this share of its time spent on them (a write is O(state))
    verify_concurrency: int = 4
    verify_timeout_s: float = 5.0
    full_check_s: float = 600.0  # re-observe disk and HAProxy memory this often (and after an HAProxy restart)


@dataclasses.dataclass(frozen=True, slots=True)
class _Prepared:
    """A certificate checked and written, with its runtime-API requests built: ready for HAProxy."""

    material: Material
    upload: Upload


class _GroupWriter:
    """Writes certificate files atomically a group at a time (`files.write_atomic_many`), in one worker thread
    whose fsyncs go out in parallel (they wait for the disk, not the CPU, and concurrent ones share its cache
    flushes). Everything else stays off threads: Python work in a thread only contends for the GIL with the event
    loop (measured: docs/PERFORMANCE.md)."""

    def __init__(self, *, parallel_fsyncs: int) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cert-writer")
        self._fsyncs = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel_fsyncs),
                                                             thread_name_prefix="cert-fsync")

    async def write_many(self, entries: list[tuple[Path, bytes]]) -> list[CertFileError | None]:
        if not entries:
            return []
        write = functools.partial(files.write_atomic_many, entries, fsync_pool=self._fsyncs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, write)

    def close(self) -> None:
        self._executor.shutdown(wait=True)  # a group already handed to the thread finishes: no half-done write
        self._fsyncs.shutdown(wait=True)


@dataclasses.dataclass(slots=True)
class _Failure:
    fingerprint: str
    reason: str
    attempts: int
    retry_at: float | None  # monotonic; None = permanent for this fingerprint (material rejected)


RELEASE_AFTER_INSTALLS = 1000


def release_freed_memory() -> None:
    """After a large apply, give the heap it freed back to the system. The PEMs, requests and replies of a bulk
    apply are freed, but glibc keeps the pages (the agent's RSS stayed ~125 MB above its working set after 100k
    installs, bench/memory.py); `malloc_trim` returns free pages, including those between live chunks."""
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


class CertReconciler:
    def __init__(
        self,
        *,
        settings: CertSettings,
        desired: Callable[[], Mapping[str, CertRef]],
        revision: Callable[[], int | None],
        source: MaterialSource,
        runtime: RuntimeClient,
        metrics: AgentMetrics,
        now: Callable[[], dt.datetime],
        monotonic: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._settings = settings
        self._desired = desired
        self._revision = revision
        self._source = source
        self._runtime = runtime
        self._metrics = metrics
        self._now = now
        self._monotonic = monotonic
        self._sleep = sleep
        self._wake = asyncio.Event()
        self._desired_changed = False  # set by wake(): the next cycle plans
        self._state = AgentState(revision=None, certificates={})
        self._failures: dict[str, _Failure] = {}
        self._unsaved = 0
        self._next_flush = 0.0  # monotonic: no periodic state write before this
        self._haproxy_start: float | None = None
        self._last_full_check = 0.0
        self.ready = asyncio.Event()  # start-up reconciliation done
        self.set_ssl_cert_commands = 0  # pushes of material to HAProxy since start (a restart should cause none)
        self._verify_queue: collections.deque[tuple[str, str]] = collections.deque()
        # One context for every verification handshake: building one loads the system trust store (~ms each).
        # No trust store and no hostname check: we compare fingerprints; trust is the control plane's business.
        self._verify_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._verify_ctx.check_hostname = False
        self._verify_ctx.verify_mode = ssl.CERT_NONE
        self._verify_tasks: set[asyncio.Task[None]] = set()
        # Verification handshakes cost CPU in this process; they wait while an apply runs, so a bulk apply is not
        # slowed by checking its own earlier commits, and catch up as soon as it is done.
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer = _GroupWriter(parallel_fsyncs=settings.parallel_fsyncs)

    # -- public --------------------------------------------------------------------------------------------------

    @property
    def applied(self) -> Mapping[str, AppliedCert]:
        return self._state.certificates

    @property
    def failures(self) -> dict[str, tuple[str, str]]:
        """name -> (fingerprint, reason) for everything not applied right now."""
        return {n: (f.fingerprint, f.reason) for n, f in self._failures.items()}

    def wake(self) -> None:
        """The desired certificates changed (called by the sync loop's sink)."""
        self._desired_changed = True
        self._wake.set()

    async def run(self) -> None:
        # Until the first snapshot the desired set is unknown, and planning against an empty one would remove
        # everything: HAProxy keeps serving its files meanwhile.
        while self._revision() is None:
            await self._wake.wait()
            self._wake.clear()
        # HAProxy may start after us, or restart: wait for its runtime API instead of failing.
        await self._retry_unavailable(self.startup, steady_s=1.0)
        while True:
            timeout = self._next_timeout()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            await self._retry_unavailable(self._cycle)

    async def _cycle(self) -> None:
        full = await self._haproxy_restarted() or (
            self._monotonic() - self._last_full_check >= self._settings.full_check_s)
        # Only when something can have changed: an idle wake-up (the 10 s `show info` poll) costs one command, not a
        # plan over every certificate (214 ms at 100k: bench/memory.py's idle-CPU row).
        if not (full or self._desired_changed or self._retry_due()):
            return
        self._desired_changed = False  # a change arriving while we plan sets it again
        try:
            await (self.full_check() if full else self.reconcile())
        except BaseException:
            self._desired_changed = True  # HAProxy unreachable mid-way: the retry must plan again
            raise

    def _retry_due(self) -> bool:
        now = self._monotonic()
        return any(f.retry_at is not None and f.retry_at <= now for f in self._failures.values())

    async def _retry_unavailable(self, step: Callable[[], Awaitable[None]], *, steady_s: float | None = None) -> None:
        """Run `step` until HAProxy's runtime API answers it (per-certificate failures are handled inside).

        `steady_s`: retry at this fixed interval instead of backing off — at start-up, where the agent usually comes
        up before HAProxy (it writes files HAProxy needs) and a backoff would delay the first sync by tens of seconds.
        """
        table = (steady_s,) if steady_s is not None else self._settings.retry_s
        attempt = 0
        while True:
            try:
                await step()
                return
            except RuntimeApiError as exc:
                delay = table[min(attempt, len(table) - 1)]
                attempt += 1
                self._metrics.runtime_api_errors.labels(type(exc).__name__).inc()
                logger.warning("HAProxy runtime API unavailable (%s); retrying in %.0f s", exc, delay)
                await self._sleep(delay)

    async def startup(self) -> None:
        self._state = load_state(self._settings.state_file, now=self._now())
        removed = files.clean_temp_files(self._settings.cert_dir)
        if removed:
            logger.info("removed %d temporary files left by a crash", removed)
        await self.full_check()
        self.ready.set()

    async def full_check(self) -> None:
        """Observe disk and HAProxy memory, repair drift, and re-push nothing that is already right."""
        self._last_full_check = self._monotonic()
        with contextlib.suppress(RuntimeApiError):
            self._haproxy_start = (await self._runtime.info()).start_time_s
        disk = self._scan_disk()
        stores, served = await self._memory_names()
        # A store HAProxy holds but no crt-list entry points at serves nothing (an agent killed between commit
        # and `add ssl crt-list`, or between the two halves of a removal): never trust it, re-install or remove.
        unused = stores - served
        doubtful = suspects(self._state.certificates, disk, served)
        memory_sha1: dict[str, str | None] = dict.fromkeys(unused)
        for name in sorted(doubtful):
            try:
                details = await self._runtime.certificate_info(self._path(name))
                memory_sha1[name] = details.sha1_fingerprint
            except RuntimeApiError:
                memory_sha1[name] = None
        have = observe(self._state.certificates, disk, stores, memory_sha1)
        # Entries the state file holds but nothing backs any more are dropped before planning.
        for name in list(self._state.certificates):
            if name not in have:
                self._state = self._state.without(name)
        actions = plan(self._desired(), have, skip=self._skipped(), recorded=self._state.certificates)
        if actions:
            logger.info("start-up/full check: %d actions (%d suspects fingerprinted)", len(actions), len(doubtful))
        await self._apply(actions)

    async def reconcile(self) -> None:
        actions = plan(self._desired(), have_from_state(self._state.certificates), skip=self._skipped(),
                       recorded=self._state.certificates)
        await self._apply(actions)

    async def aclose(self) -> None:
        for task in list(self._verify_tasks):
            task.cancel()
        for task in list(self._verify_tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._flush_state(force=True)
        self._writer.close()

    # -- observation ---------------------------------------------------------------------------------------------

    def _path(self, name: str) -> str:
        return str(self._settings.cert_dir / cert_file_name(name))

    def _scan_disk(self) -> dict[str, DiskEntry]:
        return {name: DiskEntry(entry.fingerprint, entry.sha1_hex)
                for name, entry in files.scan_cert_dir(self._settings.cert_dir).items()}

    async def _memory_names(self) -> tuple[set[str], set[str]]:
        """(names HAProxy holds a store for, names its crt-list serves), inside our certificate directory."""
        listing = await self._runtime.list_certificates()
        if listing.transaction is not None:
            logger.warning("HAProxy has an open transaction on %s (a crashed writer): aborting it",
                           listing.transaction)
            await self._runtime.abort_transaction(listing.transaction)
        crt_list = await self._runtime.crt_list()
        return self._ours(listing.names), self._ours(crt_list.certs)

    def _ours(self, paths: Iterable[str]) -> set[str]:
        prefix = str(self._settings.cert_dir) + "/"
        names = set()
        for path in paths:
            if path.startswith(prefix):
                name = name_from_file_name(path[len(prefix):])
                if name is not None:
                    names.add(name)
        return names

    async def _haproxy_restarted(self) -> bool:
        try:
            start = (await self._runtime.info()).start_time_s
        except RuntimeApiError:
            return False
        if self._haproxy_start is not None and start != self._haproxy_start:
            logger.warning("HAProxy restarted (start time %s -> %s): full check", self._haproxy_start, start)
            return True
        self._haproxy_start = start
        return False

    # -- retries -------------------------------------------------------------------------------------------------

    def _skipped(self) -> set[str]:
        desired = self._desired()
        now = self._monotonic()
        out = set()
        for name, failure in list(self._failures.items()):
            ref = desired.get(name)
            if ref is None or ref.fingerprint != failure.fingerprint:
                del self._failures[name]  # a new fingerprint (or removal) starts afresh
                continue
            if failure.retry_at is None or failure.retry_at > now:
                out.add(name)
        return out

    def _next_timeout(self) -> float:
        now = self._monotonic()
        waits = [f.retry_at - now for f in self._failures.values() if f.retry_at is not None]
        waits.append(self._settings.full_check_s - (now - self._last_full_check))
        waits.append(10.0)  # poll `show info` for an HAProxy restart
        return max(0.05, min(waits))

    def _fail(self, name: str, fingerprint: str, reason: str, *, permanent: bool = False) -> None:
        previous = self._failures.get(name)
        attempts = previous.attempts + 1 if previous and previous.fingerprint == fingerprint else 1
        table = self._settings.retry_s
        retry_at = None if permanent else self._monotonic() + table[min(attempts - 1, len(table) - 1)]
        self._failures[name] = _Failure(fingerprint, reason, attempts, retry_at)

    # -- apply ---------------------------------------------------------------------------------------------------

    async def _apply(self, actions: list[Action]) -> None:
        installs = [a for a in actions if isinstance(a, Install)]
        loop = asyncio.get_running_loop()
        pending: dict[str, asyncio.Future[str]] = {a.name: loop.create_future() for a in installs}
        sem = asyncio.Semaphore(self._settings.fetch_concurrency)

        async def fetch(batch: list[Install]) -> None:
            async with sem:
                try:
                    got = await self._source.materials([(a.name, a.ref.fingerprint) for a in batch])
                except SyncError as exc:
                    got = {a.name: exc for a in batch}
            for a in batch:
                result = got[a.name]
                future = pending[a.name]
                if future.done():
                    continue
                if isinstance(result, str):
                    future.set_result(result)
                else:
                    future.set_exception(result)

        self._idle.clear()
        # Material downloads run ahead of HAProxy (batched, bounded), so the network and the runtime API overlap;
        # only `fetch_concurrency` batches ahead of the certificate being prepared, so a 100k apply never holds
        # 100k PEMs in memory at once.
        size = self._settings.material_batch
        batches = [installs[i:i + size] for i in range(0, len(installs), size)]
        fetchers: list[asyncio.Task[None]] = []

        def ensure_fetching(index: int) -> None:
            horizon = index + size * self._settings.fetch_concurrency
            while len(fetchers) < len(batches) and len(fetchers) * size <= horizon:
                fetchers.append(asyncio.create_task(fetch(batches[len(fetchers)])))

        group = max(1, self._settings.inject_group)
        groups = [installs[i:i + group] for i in range(0, len(installs), group)]
        injecting: asyncio.Task[list[RuntimeApiError | None]] | None = None
        try:
            # Records and removals touch no certificate being installed (plan() yields each name once).
            for action in actions:
                if isinstance(action, Record):
                    self._record(action.name, action.ref, None, sha1_hex=action.sha1_hex)
                    self._metrics.cert_operations.labels("record").inc()
            # Installs go group by group: while HAProxy takes one group (`add_many`, two requests in flight), the
            # loop checks the next group's material between its replies and the writer thread puts those files on
            # disk. Every file is on disk before its certificate is sent, and recorded only after HAProxy took it.
            ready = await self._prepare_group(groups[0], pending, ensure_fetching, 0) if groups else []
            for index in range(len(groups)):
                current = ready
                injecting = asyncio.create_task(self._runtime.add_many([p.upload for _, p in current]))
                ready = (await self._prepare_group(groups[index + 1], pending, ensure_fetching, (index + 1) * group)
                         if index + 1 < len(groups) else [])
                errors, injecting = await injecting, None
                for (action, prepared), error in zip(current, errors, strict=True):
                    self._installed(action, prepared, error)
                for action in groups[index]:
                    pending.pop(action.name, None)  # its PEM is in HAProxy and on disk now (or failed): let it go
                self._flush_state()
            for action in actions:
                if isinstance(action, Remove):
                    await self._remove(action.name)
                    self._flush_state()
        finally:
            if injecting is not None:
                injecting.cancel()
                with contextlib.suppress(asyncio.CancelledError, RuntimeApiError):
                    await injecting
            for fetcher in fetchers:
                fetcher.cancel()
            for future in pending.values():
                if future.done() and not future.cancelled():
                    future.exception()  # mark retrieved: results of skipped installs must not warn
                future.cancel()
            self._flush_state(force=True)
            self._update_gauges()
            self._idle.set()
            self._start_verifiers()
            if len(installs) >= RELEASE_AFTER_INSTALLS:
                release_freed_memory()

    def _check(self, name: str, ref: CertRef, pem: str) -> _Prepared:
        """Everything before the disk and HAProxy are touched: the material checks and the runtime API's own
        argument checks (building the requests once). CPU only, so it runs on the event loop while HAProxy works
        on the previous group: in worker threads it would only contend for the GIL with the loop (measured
        slower: docs/PERFORMANCE.md)."""
        material = check_material(name, pem, expected_fingerprint=ref.fingerprint, now=self._now())
        return _Prepared(material, self._runtime.prepare(self._path(name), material.pem))

    async def _prepare_group(self, group: list[Install], pending: Mapping[str, asyncio.Future[str]],
                             ensure_fetching: Callable[[int], None], first: int) -> list[tuple[Install, _Prepared]]:
        """Check a group's material one certificate at a time (yielding in between, so the replies of the group
        being injected are read without delay) and write its files as one group. Returns what is ready for
        HAProxy; every other certificate is recorded as failed (or skipped: superseded)."""
        checked: list[tuple[Install, _Prepared]] = []
        for offset, action in enumerate(group):
            ensure_fetching(first + offset)
            prepared = await self._prepare(action, pending[action.name])
            if prepared is not None:
                checked.append((action, prepared))
            await asyncio.sleep(0)
        # The directory is fsynced once per state flush (`_flush_state`), not per file: each file's content is
        # durable before its rename, and a rename lost to a power cut is found and repaired by the next start-up
        # observation.
        errors = await self._writer.write_many([(Path(p.upload.name), p.material.pem.encode()) for _, p in checked])
        ready = []
        for (action, prepared), error in zip(checked, errors, strict=True):
            if error is None:
                ready.append((action, prepared))
            else:
                logger.error("certificate %s: cannot write its file: %s", action.name, error)
                self._fail(action.name, action.ref.fingerprint, "disk")
        return ready

    async def _prepare(self, action: Install, fetch: asyncio.Future[str]) -> _Prepared | None:
        name, ref = action.name, action.ref
        try:
            return self._check(name, ref, await fetch)
        except MaterialRejected as exc:
            logger.error("certificate %s rejected (%s): %s; the current one keeps serving", name, exc.reason,
                         exc.detail)
            self._fail(name, ref.fingerprint, exc.reason, permanent=True)
        except BadArgument as exc:
            # Refused before sending (e.g. a certificate part over HAProxy's CLI buffer): retrying cannot help.
            logger.error("certificate %s cannot be injected: %s; the current one keeps serving", name, exc)
            self._fail(name, ref.fingerprint, "too_large" if isinstance(exc, PayloadTooLarge) else "bad_argument",
                       permanent=True)
        except (FingerprintNotCurrent, NotFound):
            pass  # a newer reference (or a removal) is already in the change stream
        except SyncError as exc:
            logger.warning("certificate %s: material not fetched: %s", name, exc)
            self._fail(name, ref.fingerprint, "control_plane_unavailable")
        return None

    def _installed(self, action: Install, prepared: _Prepared, error: RuntimeApiError | None) -> None:
        name, ref = action.name, action.ref
        if error is not None:
            logger.warning("certificate %s: runtime API failed: %s", name, error)
            self._metrics.runtime_api_errors.labels(type(error).__name__).inc()
            self._fail(name, ref.fingerprint, "runtime_api")
            return
        self.set_ssl_cert_commands += 1
        self._failures.pop(name, None)
        self._record(name, ref, prepared.material)
        self._metrics.cert_operations.labels("replace" if action.replace else "add").inc()
        self._schedule_verify(name, prepared.material)

    async def _remove(self, name: str) -> None:
        path = Path(self._path(name))
        try:
            await self._runtime.remove_certificate(str(path))
        except RuntimeApiError as exc:
            logger.warning("certificate %s: removal failed: %s", name, exc)
            self._metrics.runtime_api_errors.labels(type(exc).__name__).inc()
            self._fail(name, "", "runtime_api")
            return
        files.remove(path)
        self._state = self._state.without(name)
        self._unsaved += 1
        self._metrics.cert_operations.labels("remove").inc()

    def _record(self, name: str, ref: CertRef, material: Material | None, *, sha1_hex: str = "") -> None:
        sha1 = material.sha1_hex if material else sha1_hex
        self._state = self._state.with_applied(AppliedCert(
            name=name, fingerprint=ref.fingerprint, sha1_hex=sha1,
            not_after=material.not_after if material else ref.not_after,
            revision=self._revision() or 0, file=cert_file_name(name),
        ))
        self._unsaved += 1

    def _flush_state(self, *, force: bool = False) -> None:
        if not self._unsaved:
            return
        started = self._monotonic()
        if not force and (self._unsaved < self._settings.state_flush_every or started < self._next_flush):
            return
        files.fsync_dir(self._settings.cert_dir)  # the renames the state is about to vouch for are durable
        save_state(self._settings.state_file, self._state)
        self._unsaved = 0
        # Writing the state costs O(certificates) (~40 ms at 10k, ~0.4 s at 100k): a fixed cadence would make a
        # long apply quadratic. Spaced by their own cost, the writes take a bounded share of the apply, and a
        # crash leaves a lag of at most a few seconds' work (recorded, not re-pushed, at the next start).
        self._next_flush = started + (self._monotonic() - started) / self._settings.state_flush_share

    def _update_gauges(self) -> None:
        desired = self._desired()
        applied = sum(1 for n, a in self._state.certificates.items()
                      if n in desired and desired[n].fingerprint == a.fingerprint)
        self._metrics.certs_applied.set(applied)
        self._metrics.certs_pending.set(len(desired) - applied)
        reasons: dict[str, int] = {}
        for failure in self._failures.values():
            reasons[failure.reason] = reasons.get(failure.reason, 0) + 1
        self._metrics.certs_failed.clear()
        for reason, n in reasons.items():
            self._metrics.certs_failed.labels(reason).set(n)
        if self._state.certificates:
            soonest = min(a.not_after for a in self._state.certificates.values())
            self._metrics.soonest_expiry.set(soonest.timestamp())

    # -- verification --------------------------------------------------------------------------------------------

    def _schedule_verify(self, name: str, material: Material) -> None:
        """Queue a verification handshake: a (name, fingerprint) pair, not the material, so a long apply holds
        nothing per certificate; the workers start once the apply is over."""
        if self._settings.https_addr is None:
            return
        self._verify_queue.append((name, material.fingerprint))
        if self._idle.is_set():
            self._start_verifiers()

    def _start_verifiers(self) -> None:
        while self._verify_queue and len(self._verify_tasks) < self._settings.verify_concurrency:
            task = asyncio.create_task(self._verify_worker())
            self._verify_tasks.add(task)
            task.add_done_callback(self._verify_tasks.discard)

    async def _verify_worker(self) -> None:
        while self._verify_queue:
            await self._idle.wait()
            if not self._verify_queue:
                return
            name, fingerprint = self._verify_queue.popleft()
            await self._verify(name, fingerprint)

    async def _verify(self, name: str, fingerprint: str) -> None:
        """Handshake with the node using this SNI and compare the served leaf with what we committed."""
        assert self._settings.https_addr is not None
        sni = "lockstep-verify." + name[2:] if name.startswith("*.") else name
        host, _, port = self._settings.https_addr.rpartition(":")
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port), ssl=self._verify_ctx, server_hostname=sni),
                self._settings.verify_timeout_s)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            logger.warning("verify %s: handshake failed: %s", name, exc)
            return
        try:
            ssl_obj = writer.get_extra_info("ssl_object")
            der = ssl_obj.getpeercert(binary_form=True) if ssl_obj else None
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
        served = "sha256:" + hashlib.sha256(der).hexdigest() if der else None
        current = self._state.certificates.get(name)
        if current is None or current.fingerprint != fingerprint:
            return  # superseded meanwhile
        if served == fingerprint:
            self._metrics.verify_ok.inc()
            return
        self._metrics.verify_mismatches.inc()
        logger.error("verify %s: HAProxy serves %s, committed %s; will re-push", name, served, fingerprint)
        self._state = self._state.without(name)
        self._unsaved += 1
        self._fail(name, fingerprint, "verify_mismatch")
