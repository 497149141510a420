"""Leader election on a coordination.k8s.io/v1 Lease, so that one replica of several acts."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bot.config import Settings
from bot.kubeapi import LEASES, SERVICE_ACCOUNT_DIR, ApiError, KubeApi, unavailable

log = logging.getLogger(__name__)

Callback = Callable[[], Awaitable[None]]
Clock = Callable[[], datetime]
# Fractions of the lease: the leader renews every third of it, and stops acting when it could
# not renew for two thirds of it, which leaves a third for clock skew and for stopping.
RENEW_EVERY = 1 / 3
RENEW_DEADLINE = 2 / 3
# Candidates (and a leader whose renewal failed) try again after a sixth.
RETRY_EVERY = 1 / 6


def utcnow() -> datetime:
    return datetime.now(UTC)


def micro_time(moment: datetime) -> str:
    """A Kubernetes MicroTime: UTC, microseconds, `Z` (2026-12-03T09:18:59.123456Z)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> datetime | None:
    """A MicroTime or Time as the API server returns it; None when absent or unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    # Some writers (kubernetes_asyncio's elector) leave out the zone: they mean UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def default_identity(environ: Mapping[str, str] | None = None) -> str:
    """Who campaigns: POD_NAME (unique per pod), else this host and process.

    The process id is added outside a pod because two bots on one host with the same
    identity would each believe the Lease is theirs.
    """
    env = os.environ if environ is None else environ
    return env.get("POD_NAME") or f"{socket.gethostname()}_{os.getpid()}"


def lease_namespace(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    account_dir: Path = SERVICE_ACCOUNT_DIR,
) -> str:
    """The `lease_namespace` setting, else the pod's namespace (POD_NAMESPACE, else its
    service account's), else `argocd_namespace`."""
    if settings.lease_namespace:
        return settings.lease_namespace
    env = os.environ if environ is None else environ
    if env.get("POD_NAMESPACE"):
        return env["POD_NAMESPACE"]
    with contextlib.suppress(OSError):
        namespace = (account_dir / "namespace").read_text().strip()
        if namespace:
            return namespace
    return settings.argocd_namespace


@dataclass(frozen=True)
class LeaseRef:
    """Which Lease the candidates compete for."""

    namespace: str
    name: str


def _spec(lease: dict[str, Any] | None) -> dict[str, Any]:
    return dict((lease or {}).get("spec") or {})


class Elector:
    """Campaigns for a Lease forever; calls back when this process starts and stops leading.

    Guarantees, for a Lease of L = lease_seconds (written as leaseDurationSeconds, rounded up):

    - No two leaders act at once. A candidate takes the Lease only when it is free, released
      (holderIdentity empty) or expired (renewTime + leaseDurationSeconds is past), and only
      by a write conditional on the resourceVersion it read, so of two candidates one wins and
      the other gets 409. The leader renews every L/3; when it has not renewed for 2L/3
      (measured on its monotonic clock from before the last successful request was sent) it
      awaits `on_stopped_leading` before anyone may take over at L. This assumes the
      candidates' wall clocks agree within L/3 minus the time `on_stopped_leading` takes, and
      an event loop never blocked for as long: keep that callback prompt.
    - After a leader is killed, another candidate leads within L + one retry (L/6) of its last
      renewal, so at most that long after the kill.
    - After `release()` (a clean shutdown) another candidate leads within one retry (L/6).
    - A leader that loses the Lease (it could not renew, or finds another holder) stops,
      then campaigns again.

    `on_started_leading` and `on_stopped_leading` are awaited in turn, never overlapping, and
    should only start or stop the work (no renewal happens while they run); if
    `on_started_leading` raises, `on_stopped_leading` runs and `run` ends with the error.
    RBAC: get, create and update on Leases (get and update can be limited to the name).
    """

    def __init__(
        self,
        api: KubeApi,
        lease: LeaseRef,
        identity: str,
        lease_seconds: float = 15.0,
        clock: Clock = utcnow,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, not {lease_seconds}")
        self.api = api
        self.lease = lease
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.retry_seconds = lease_seconds * RETRY_EVERY
        self.clock = clock
        self._path = LEASES.path(lease.namespace, lease.name)
        self._last: dict[str, Any] | None = None  # the Lease as last read or written
        self._renewed_at = 0.0  # loop time before sending the last successful write
        self._leading = False
        self._task: asyncio.Task[None] | None = None
        self._last_error = ""

    @property
    def is_leader(self) -> bool:
        return self._leading

    @property
    def holder(self) -> str | None:
        """Who held the Lease when this elector last looked (None: nobody)."""
        return _spec(self._last).get("holderIdentity") or None

    async def run(self, on_started_leading: Callback, on_stopped_leading: Callback) -> None:
        """Campaign, lead while the Lease is renewed, campaign again after losing it: until
        `release()` (then this returns) or cancellation (the Lease is then left to expire)."""
        if self._task is not None:
            raise RuntimeError(f"the elector for Lease {self._where()} is already running")
        # Its own task, so that release() stops the campaign and never its caller's task.
        campaign = asyncio.create_task(self._elect(on_started_leading, on_stopped_leading))
        self._task = campaign
        try:
            await campaign
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # our caller was cancelled (and the campaign with it)
            # else release() stopped the campaign: done
        finally:
            self._task = None

    async def release(self) -> None:
        """Stop campaigning and, if this process still holds the Lease, give it up (empty
        holderIdentity, leaseDurationSeconds 1) so that a successor takes over at once.

        Stops `run` first, so `on_stopped_leading` has returned before the Lease is free.
        Never raises for the API server's sake: if it cannot be reached, the Lease expires.
        Not from a callback: it waits for the campaign that runs them.
        """
        campaign = self._task
        if campaign is not None:
            if campaign is asyncio.current_task():
                raise RuntimeError("release() from a leadership callback would wait for itself")
            campaign.cancel()
            await asyncio.wait([campaign])
        try:
            await self._give_up()
        except Exception as exc:
            if not _expected(exc):
                raise
            log.warning("could not release Lease %s (it will expire): %s", self._where(), exc)

    async def _elect(self, on_started_leading: Callback, on_stopped_leading: Callback) -> None:
        while True:
            await self._campaign()
            self._leading = True
            log.info("leading: %s holds Lease %s", self.identity, self._where())
            try:
                await on_started_leading()
                await self._hold()
            finally:
                self._leading = False
                log.info("stopped leading (Lease %s)", self._where())
                await on_stopped_leading()

    # ---- campaigning ---------------------------------------------------------------------

    async def _campaign(self) -> None:
        """Return once this process holds the Lease."""
        while True:
            try:
                if await self._try_acquire():
                    return
            except Exception as exc:
                if not _expected(exc):
                    raise
                self._note_error("campaigning for", exc)
            await asyncio.sleep(self.retry_seconds)

    async def _try_acquire(self) -> bool:
        try:
            self._last = await self.api.get(self._path)
        except ApiError as exc:
            if exc.status != 404:
                raise
            return await self._create()
        spec = _spec(self._last)
        holder = spec.get("holderIdentity")
        if holder and holder != self.identity and not self._expired(spec):
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (holder != self.identity)
        started = asyncio.get_running_loop().time()
        return await self._write(self._taken(self._last, transitions), started)

    async def _create(self) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.lease.name, "namespace": self.lease.namespace},
        }
        started = asyncio.get_running_loop().time()
        try:
            self._last = await self.api.create(
                LEASES.path(self.lease.namespace), self._taken(body, 0)
            )
        except ApiError as exc:
            if exc.status == 409:  # another candidate created it first
                return False
            raise
        self._renewed_at = started
        return True

    def _expired(self, spec: dict[str, Any]) -> bool:
        renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
        if renewed is None:
            return True
        duration = float(spec.get("leaseDurationSeconds") or self.lease_seconds)
        return self.clock() > renewed + timedelta(seconds=duration)

    def _taken(self, lease: dict[str, Any], transitions: int) -> dict[str, Any]:
        """The Lease as this process holds it from now."""
        now = micro_time(self.clock())
        body = copy.deepcopy(lease)
        body["spec"] = {
            **_spec(lease),
            "holderIdentity": self.identity,
            "leaseDurationSeconds": math.ceil(self.lease_seconds),
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        return body

    # ---- leading -------------------------------------------------------------------------

    async def _hold(self) -> None:
        """Renew every L/3; return when the Lease is lost or could not be renewed in time."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._renewed_at + self.lease_seconds * RENEW_EVERY - loop.time())
            if not await self._renew_before_deadline():
                return

    async def _renew_before_deadline(self) -> bool:
        """Try to renew until 2L/3 after the last renewal; False when that failed."""
        loop = asyncio.get_running_loop()
        deadline = self._renewed_at + self.lease_seconds * RENEW_DEADLINE
        while (remaining := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(remaining):
                    return await self._renew()
            except Exception as exc:
                if not _expected(exc):
                    raise
                self._note_error("renewing", exc)
            await asyncio.sleep(min(self.retry_seconds, max(0.0, deadline - loop.time())))
        log.warning("could not renew Lease %s in time: stepping down", self._where())
        return False

    async def _renew(self) -> bool:
        """One renewal; False when someone else holds the Lease now."""
        started = asyncio.get_running_loop().time()
        body = copy.deepcopy(self._last or {})
        body["spec"] = {**_spec(self._last), "renewTime": micro_time(self.clock())}
        if await self._write(body, started):
            return True
        # 409 (or 404): someone wrote it since. Still ours (our write whose answer was lost)?
        try:
            self._last = await self.api.get(self._path)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        if self.holder != self.identity:
            log.warning("Lease %s was taken by %s", self._where(), self.holder)
            return False
        return await self._renew()

    async def _write(self, body: dict[str, Any], started: float) -> bool:
        """PUT the Lease, conditional on the resourceVersion in `body`; False when it changed
        (409) or is gone (404). `started`: loop time taken before the body's times were."""
        try:
            self._last = await self.api.replace(self._path, body)
        except ApiError as exc:
            if exc.status in (404, 409):
                return False
            raise
        self._renewed_at = started
        self._last_error = ""
        return True

    async def _give_up(self) -> None:
        for _ in range(2):  # once more after a 409 that was our own renewal
            if self._last is None or self.holder != self.identity:
                return
            body = copy.deepcopy(self._last)
            now = micro_time(self.clock())
            body["spec"] = {
                **_spec(self._last),
                "holderIdentity": "",
                "leaseDurationSeconds": 1,
                "renewTime": now,
            }
            try:
                self._last = await self.api.replace(self._path, body)
            except ApiError as exc:
                if exc.status not in (404, 409):
                    raise
                self._last = None if exc.status == 404 else await self.api.get(self._path)
                continue
            log.info("released Lease %s", self._where())
            return

    # ---- helpers -------------------------------------------------------------------------

    def _where(self) -> str:
        return f"{self.lease.namespace}/{self.lease.name}"

    def _note_error(self, doing: str, exc: BaseException) -> None:
        # Once per distinct error: a candidate retries every L/6 while the API is down.
        text = f"{type(exc).__name__}: {exc}"
        level = logging.DEBUG if text == self._last_error else logging.WARNING
        log.log(level, "%s Lease %s failed: %s", doing, self._where(), text)
        self._last_error = text


def _expected(exc: BaseException) -> bool:
    """Failures a campaign outlives: the API server unreachable or answering an error."""
    return isinstance(exc, ApiError) or unavailable(exc)


def elector_for(api: KubeApi, settings: Settings) -> Elector:
    """The Elector the settings describe: lease_name in lease_namespace(), this pod's name."""
    lease = LeaseRef(lease_namespace(settings), settings.lease_name)
    return Elector(api, lease, default_identity(), settings.lease_seconds)
