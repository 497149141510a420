"""A bounded, keyed, coalescing work queue: at most one pending and one running sync per PR.

Deliveries are hints that a key may be stale, so ten deliveries for one PR need one sync, not
ten. A key that is already waiting absorbs new deliveries; a key that is being synced is marked
dirty and queued again when its sync ends, so a push that lands mid-sync is always seen by a
later sync, and no two syncs of one PR ever run at once.

Two kinds of delayed work: a retry *holds* its key (deliveries that arrive during the backoff
join the pending retry and never start an attempt early: GitHub or the cluster is failing, or a
rate limit applies); a follow-up (check again in 30 s) does not hold it, and is dropped if the
key is synced before it fires. Every per-key structure holds only keys with work in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from bot.model import Work, WorkKey
from bot.webhooks import Outcome

log = logging.getLogger(__name__)


class KeyedQueue:
    """FIFO of keys; the stored Work for a key merges everything put for it."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._pending: OrderedDict[WorkKey, Work] = OrderedDict()
        self._running: set[WorkKey] = set()
        self._dirty: dict[WorkKey, Work] = {}
        self._held: dict[WorkKey, tuple[Work, asyncio.TimerHandle]] = {}  # retries in backoff
        self._followups: dict[WorkKey, asyncio.TimerHandle] = {}
        self._nonempty = asyncio.Event()

    def __len__(self) -> int:
        """Keys waiting for a sync: pending, running keys that must run again, held retries."""
        return len(self._pending) + len(self._dirty) + len(self._held)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def scheduled(self) -> int:
        """Retries and follow-ups waiting for their time."""
        return len(self._held) + len(self._followups)

    @property
    def held(self) -> int:
        """Keys whose deliveries wait for a pending retry (GitHub or the cluster failing)."""
        return len(self._held)

    def full(self) -> bool:
        return len(self) >= self.maxsize

    def put_nowait(self, work: Work) -> Outcome:
        """Queue `work`, coalescing with a waiting, held or running sync of the same key."""
        key = work.key
        # One lookup per structure (get, not `in` then [key]): this runs for every delivery.
        pending = self._pending.get(key)
        if pending is not None:
            self._pending[key] = pending.merged(work)
            return Outcome.COALESCED
        held = self._held.get(key)
        if held is not None:
            self._held[key] = (held[0].merged(work), held[1])
            return Outcome.COALESCED
        if key in self._running:
            if key not in self._dirty and self.full():
                return Outcome.QUEUE_FULL
            before = self._dirty.get(key)
            self._dirty[key] = before.merged(work) if before else work
            return Outcome.COALESCED
        if self.full():
            return Outcome.QUEUE_FULL
        self._pending[key] = work
        self._nonempty.set()
        return Outcome.QUEUED

    async def get(self) -> Work:
        """Wait for a key that is not running, and mark it running."""
        while not self._pending:
            self._nonempty.clear()
            await self._nonempty.wait()
        key, work = self._pending.popitem(last=False)
        self._running.add(key)
        # This sync sees the current state and schedules its own follow-up if it needs one.
        followup = self._followups.pop(key, None)
        if followup is not None:
            followup.cancel()
        return work

    def done(self, key: WorkKey) -> None:
        """The sync of `key` ended; queue it again if deliveries arrived meanwhile (or fold
        them into the retry the sync scheduled)."""
        self._running.discard(key)
        work = self._dirty.pop(key, None)
        if work is None:
            return
        if key in self._held:
            held, handle = self._held[key]
            self._held[key] = (held.merged(work), handle)
        elif key in self._pending:
            self._pending[key] = self._pending[key].merged(work)
        else:
            self._pending[key] = work
            self._nonempty.set()

    def put_later(self, work: Work, delay: float, *, hold: bool = False) -> None:
        """Queue `work` after `delay` seconds: a retry when `hold` (deliveries for the key wait
        with it), else a follow-up, dropped if the key is synced first."""
        loop = asyncio.get_running_loop()
        key = work.key
        if hold:
            previous = self._held.pop(key, None)
            if previous is not None:
                previous[1].cancel()
                work = previous[0].merged(work)
            self._held[key] = (work, loop.call_later(delay, self._release, key))
            return
        previous_followup = self._followups.pop(key, None)
        if previous_followup is not None:
            previous_followup.cancel()
        self._followups[key] = loop.call_later(delay, self._follow_up, work)

    def _release(self, key: WorkKey) -> None:
        work, _ = self._held.pop(key)
        if self.put_nowait(work) is Outcome.QUEUE_FULL:
            log.warning("queue full, retry of %s dropped; the resync will pick it up", key)

    def _follow_up(self, work: Work) -> None:
        self._followups.pop(work.key, None)
        if self.put_nowait(work) is Outcome.QUEUE_FULL:
            log.warning("queue full, follow-up of %s dropped; the resync will pick it up", work.key)

    def close(self) -> None:
        """Cancel scheduled retries and follow-ups (shutdown)."""
        for _, handle in self._held.values():
            handle.cancel()
        for handle in self._followups.values():
            handle.cancel()
        self._held.clear()
        self._followups.clear()

    def busy(self, repo: str) -> set[int]:
        """PRs of `repo` with a sync pending, running or waiting to retry."""
        keys = [*self._pending, *self._running, *self._dirty, *self._held]
        name = repo.lower()  # GitHub's names ignore case (see WorkKey)
        return {key.number for key in keys if key.repo.lower() == name}

    def sizes(self) -> dict[str, int]:
        """How many keys each per-key structure holds (tests prove they stay bounded)."""
        return {
            "pending": len(self._pending),
            "running": len(self._running),
            "dirty": len(self._dirty),
            "held": len(self._held),
            "followups": len(self._followups),
        }
