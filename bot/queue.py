"""A bounded, keyed, coalescing work queue: at most one pending and one running sync per PR.

Deliveries are hints that a key may be stale, so ten deliveries for one PR need one sync, not
ten. A key that is already waiting absorbs new deliveries; a key that is being synced is marked
dirty and queued again when its sync ends, so a push that lands mid-sync is always seen by a
later sync, and no two syncs of one PR ever run at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from bot.model import Work, WorkKey
from bot.webhooks import Outcome

log = logging.getLogger(__name__)


class KeyedQueue:
    """FIFO of keys; the stored Work for a key is the most recent one put."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._pending: OrderedDict[WorkKey, Work] = OrderedDict()
        self._running: set[WorkKey] = set()
        self._dirty: dict[WorkKey, Work] = {}
        self._nonempty = asyncio.Event()
        self._delayed: set[asyncio.TimerHandle] = set()
        # Syncs finished per key: a delayed put is dropped when the key was synced after it was
        # scheduled, since that later sync saw newer state and scheduled what it needed itself.
        self._finished: dict[WorkKey, int] = {}

    def __len__(self) -> int:
        """Keys waiting for a sync (including running keys that must run again)."""
        return len(self._pending) + len(self._dirty)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def scheduled(self) -> int:
        """Retries waiting for their time."""
        return len(self._delayed)

    def full(self) -> bool:
        return len(self) >= self.maxsize

    def put_nowait(self, work: Work) -> Outcome:
        """Queue `work`, coalescing with a waiting or running sync of the same key."""
        key = work.key
        if key in self._pending:
            self._pending[key] = work
            return Outcome.COALESCED
        if key in self._running:
            if key not in self._dirty and self.full():
                return Outcome.QUEUE_FULL
            self._dirty[key] = work
            return Outcome.COALESCED
        if self.full():
            return Outcome.QUEUE_FULL
        self._pending[key] = work
        self._notify()
        return Outcome.QUEUED

    def _notify(self) -> None:
        self._nonempty.set()

    async def get(self) -> Work:
        """Wait for a key that is not running, and mark it running."""
        while not self._pending:
            self._nonempty.clear()
            await self._nonempty.wait()
        key, work = self._pending.popitem(last=False)
        self._running.add(key)
        return work

    def done(self, key: WorkKey) -> None:
        """The sync of `key` ended; queue it again if deliveries arrived meanwhile."""
        self._running.discard(key)
        self._finished[key] = self._finished.get(key, 0) + 1
        work = self._dirty.pop(key, None)
        if work is not None and key not in self._pending:
            self._pending[key] = work
            self._notify()

    def put_later(self, work: Work, delay: float) -> None:
        """Queue `work` after `delay` seconds (a retry, a follow-up), unless it is synced first."""
        loop = asyncio.get_running_loop()
        key = work.key
        # The sync calling this is still running; its own end does not count.
        expected = self._finished.get(key, 0) + (1 if key in self._running else 0)

        def fire() -> None:
            self._delayed.discard(handle)
            if self._finished.get(key, 0) > expected:
                return
            if self.put_nowait(work) is Outcome.QUEUE_FULL:
                log.warning("queue full, retry of %s dropped; the resync will pick it up", work.key)

        handle = loop.call_later(delay, fire)
        self._delayed.add(handle)

    def close(self) -> None:
        """Cancel scheduled retries (shutdown)."""
        for handle in self._delayed:
            handle.cancel()
        self._delayed.clear()


Handler = Callable[[Work], Awaitable[None]]


async def run_worker(queue: KeyedQueue, handle: Handler) -> None:
    """Take keys one at a time and run `handle` on each; errors are the handler's to report."""
    while True:
        work = await queue.get()
        try:
            await handle(work)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The handler classifies and logs its own errors; this is the last line of defence
            # so that one bad PR never stops a worker.
            log.exception("sync crashed", extra={"repo": work.key.repo, "pr": work.key.number})
        finally:
            queue.done(work.key)
