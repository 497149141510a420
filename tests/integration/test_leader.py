"""bot.leader on the real API server: two or more Electors on one short Lease.

Bounds are the elector's own (takeover within the lease + one retry after a kill, one retry
after a release) plus generous slack for this noisy machine; safety (never two leaders) is
checked on the timeline of callbacks, which records exactly when each side acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from bot.kubeapi import LEASES, KubeApi
from bot.leader import Elector, LeaseRef, micro_time, utcnow
from tests.rig.kube import KubeRig

pytestmark = pytest.mark.rig

LEASE_SECONDS = 2.0
RETRY = LEASE_SECONDS / 6
SLACK = 3.0  # scheduling and request latency on a loaded 2-core machine
NAMESPACE = "default"


class Timeline:
    """When each elector started and stopped leading, in the order it happened."""

    def __init__(self) -> None:
        self.entries: list[tuple[float, str, str]] = []
        self._changed = asyncio.Condition()

    def callbacks(
        self, who: str
    ) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
        async def started() -> None:
            await self._note(who, "started")

        async def stopped() -> None:
            await self._note(who, "stopped")

        return started, stopped

    async def _note(self, who: str, what: str) -> None:
        async with self._changed:
            self.entries.append((asyncio.get_running_loop().time(), who, what))
            self._changed.notify_all()

    def times(self, who: str | None, what: str) -> list[float]:
        return [t for t, w, x in self.entries if who in (w, None) and x == what]

    async def wait(self, who: str | None, what: str, count: int = 1, within: float = 30.0) -> float:
        """When `who` (None: anyone) did `what` for the count-th time, waiting for it."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: len(self.times(who, what)) >= count)
        return self.times(who, what)[count - 1]

    def leaders(self) -> set[str]:
        """Who leads now, after checking that no two ever led at once."""
        leading: set[str] = set()
        for _, who, what in self.entries:
            if what == "started":
                assert not leading, f"{who} started leading while {leading} still led"
                leading.add(who)
            else:
                leading.discard(who)
        return leading


class Partitionable(KubeApi):
    """A KubeApi that can be cut off from the API server, as a network partition would."""

    cut = False

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if self.cut:
            raise aiohttp.ClientConnectionError("partitioned")
        return await super().request(method, path, **kwargs)


@dataclass
class Election:
    """Candidates for one Lease, each with its own client (as separate pods would be)."""

    kube: KubeRig
    lease: LeaseRef
    timeline: Timeline = field(default_factory=Timeline)
    electors: dict[str, Elector] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    apis: dict[str, Partitionable] = field(default_factory=dict)

    def start(self, who: str, lease_seconds: float = LEASE_SECONDS) -> Elector:
        api = Partitionable(self.kube.kubeapi().config)
        elector = Elector(api, self.lease, who, lease_seconds)
        self.apis[who], self.electors[who] = api, elector
        self.tasks[who] = asyncio.create_task(elector.run(*self.timeline.callbacks(who)))
        return elector

    async def kill(self, who: str) -> None:
        """Stop a candidate without releasing, as if its pod were killed."""
        self.tasks[who].cancel()
        await asyncio.gather(self.tasks[who], return_exceptions=True)

    async def stop(self) -> None:
        for who in self.tasks:
            await self.kill(who)
        for api in self.apis.values():
            await api.close()

    async def read(self, admin: KubeApi) -> dict[str, Any]:
        spec: dict[str, Any] = (
            await admin.get(LEASES.path(self.lease.namespace, self.lease.name))
        )["spec"]
        return spec


@pytest.fixture
async def election(kube: KubeRig, admin_api: KubeApi) -> AsyncIterator[Election]:
    lease = LeaseRef(NAMESPACE, f"test-{secrets.token_hex(4)}")
    election = Election(kube, lease)
    try:
        yield election
    finally:
        await election.stop()
        with contextlib.suppress(Exception):
            await admin_api.delete(LEASES.path(lease.namespace, lease.name))


async def test_of_two_candidates_exactly_one_leads(election: Election, admin_api: KubeApi) -> None:
    a, b = election.start("pod-a"), election.start("pod-b")
    await election.timeline.wait(None, "started")
    # Several renewals later, still the same single leader.
    await asyncio.sleep(LEASE_SECONDS * 1.5)
    (leader,) = election.timeline.leaders()
    assert [e.is_leader for e in (a, b)] == [leader == "pod-a", leader == "pod-b"]
    spec = await election.read(admin_api)
    assert spec["holderIdentity"] == leader
    assert spec["leaseDurationSeconds"] == 2
    assert spec["renewTime"].endswith("Z") and len(spec["renewTime"]) == 27  # MicroTime
    assert a.holder == b.holder == leader


async def test_a_killed_leader_is_replaced_within_the_lease(election: Election) -> None:
    election.start("pod-a")
    await election.timeline.wait("pod-a", "started")
    election.start("pod-b")
    await asyncio.sleep(RETRY * 2)  # pod-b has seen pod-a hold the Lease
    killed_at = asyncio.get_running_loop().time()
    await election.kill("pod-a")
    assert election.tasks["pod-a"].cancelled()  # the caller's cancellation goes through
    taken_at = await election.timeline.wait("pod-b", "started")
    assert taken_at - killed_at <= LEASE_SECONDS + RETRY + SLACK
    assert election.timeline.leaders() == {"pod-b"}


async def test_a_released_lease_is_taken_at_once(election: Election, admin_api: KubeApi) -> None:
    # A long lease: a takeover sooner than it can only come from the release.
    lease_seconds = 12.0
    a = election.start("pod-a", lease_seconds)
    await election.timeline.wait("pod-a", "started")
    election.start("pod-b", lease_seconds)
    await asyncio.sleep(0.5)
    released_at = asyncio.get_running_loop().time()
    await a.release()
    assert election.tasks["pod-a"].done()  # release ends the campaign: run() returns
    assert election.tasks["pod-a"].result() is None
    assert election.timeline.times("pod-a", "stopped")[0] <= released_at + SLACK
    taken_at = await election.timeline.wait("pod-b", "started")
    assert taken_at - released_at <= lease_seconds / 6 + SLACK < lease_seconds
    assert election.timeline.leaders() == {"pod-b"}
    spec = await election.read(admin_api)
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("pod-b", 1)


async def test_release_by_a_non_holder_changes_nothing(
    election: Election, admin_api: KubeApi
) -> None:
    election.start("pod-a")
    await election.timeline.wait("pod-a", "started")
    b = election.start("pod-b")
    await asyncio.sleep(RETRY * 2)
    await b.release()
    spec = await election.read(admin_api)
    assert spec["holderIdentity"] == "pod-a"
    assert election.electors["pod-a"].is_leader
    assert election.timeline.leaders() == {"pod-a"}


async def test_a_partitioned_leader_stops_before_anyone_takes_over(election: Election) -> None:
    """It cannot renew: it stops at 2/3 of the lease; the other takes over at its expiry.
    Healed, it campaigns again and leads once the other releases."""
    election.start("pod-a")
    await election.timeline.wait("pod-a", "started")
    b = election.start("pod-b")
    await asyncio.sleep(RETRY * 2)
    cut_at = asyncio.get_running_loop().time()
    election.apis["pod-a"].cut = True
    stopped_at = await election.timeline.wait("pod-a", "stopped")
    taken_at = await election.timeline.wait("pod-b", "started")
    assert stopped_at < taken_at
    assert taken_at - cut_at <= LEASE_SECONDS + RETRY + SLACK
    assert election.timeline.leaders() == {"pod-b"}

    election.apis["pod-a"].cut = False
    await asyncio.sleep(RETRY * 3)  # pod-a campaigns, sees pod-b hold it
    assert election.timeline.leaders() == {"pod-b"}
    await b.release()
    await election.timeline.wait("pod-a", "started", count=2)
    assert election.timeline.leaders() == {"pod-a"}


async def test_a_foreign_lease_is_taken_only_once_expired(
    election: Election, admin_api: KubeApi
) -> None:
    """A Lease another tool wrote: respected while renewed, taken once renewTime + duration
    is past (judged on the wall clock, like the brief's rule)."""
    fresh = micro_time(utcnow() + timedelta(seconds=60))  # still held for a minute
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": election.lease.name},
        "spec": {
            "holderIdentity": "other-tool",
            "leaseDurationSeconds": 2,
            "renewTime": fresh,
            "leaseTransitions": 4,
        },
    }
    path = LEASES.path(NAMESPACE, election.lease.name)
    await admin_api.create(LEASES.path(NAMESPACE), body)
    a = election.start("pod-a")
    await asyncio.sleep(RETRY * 3)
    assert not a.is_leader
    assert a.holder == "other-tool"
    # The other tool stops renewing: its last renewal was long ago.
    stale = micro_time(utcnow() - timedelta(seconds=60))
    await admin_api.merge_patch(path, {"spec": {"renewTime": stale}})
    await election.timeline.wait("pod-a", "started", within=RETRY + SLACK)
    spec = await election.read(admin_api)
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("pod-a", 5)
