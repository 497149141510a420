"""The keyed queue: coalescing, one sync per key at a time, bounded size, delayed re-puts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from bot.model import Command, Work, WorkKey
from bot.queue import KeyedQueue
from bot.webhooks import Outcome


def work(n: int, inst: int = 1) -> Work:
    return Work(WorkKey("o/r", n), inst)


async def test_a_key_arriving_while_it_runs_runs_again_after_with_the_latest_work() -> None:
    q = KeyedQueue(10)
    assert q.put_nowait(work(1, inst=1)) is Outcome.QUEUED
    taken = await q.get()
    assert q.put_nowait(work(1, inst=2)) is Outcome.COALESCED
    assert q.put_nowait(work(1, inst=3)) is Outcome.COALESCED
    assert len(q) == 1
    q.done(taken.key)
    again = await asyncio.wait_for(q.get(), 1)
    assert again.installation_id == 3


async def worker(q: KeyedQueue, handle: Callable[[Work], Awaitable[None]]) -> None:
    """What each of the Bot's workers does with the queue: take a key, sync it, say done."""
    while True:
        taken = await q.get()
        try:
            await handle(taken)
        finally:
            q.done(taken.key)


async def test_never_two_syncs_of_one_key_at_once() -> None:
    q = KeyedQueue(100)
    running: set[WorkKey] = set()
    overlaps = 0
    done = 0

    async def handle(w: Work) -> None:
        nonlocal overlaps, done
        if w.key in running:
            overlaps += 1
        running.add(w.key)
        await asyncio.sleep(0.01)
        running.discard(w.key)
        done += 1

    workers = [asyncio.create_task(worker(q, handle)) for _ in range(4)]
    for _ in range(5):
        for n in range(3):
            q.put_nowait(work(n))
        await asyncio.sleep(0.005)
    for _ in range(500):  # bounded wait for the workers to drain the queue
        if not (len(q) or q.running):
            break
        await asyncio.sleep(0.01)
    for t in workers:
        t.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    assert overlaps == 0
    assert 3 <= done < 15  # coalesced: far fewer syncs than puts


async def test_full_queue_refuses_new_keys_but_coalesces_known_ones() -> None:
    q = KeyedQueue(2)
    assert q.put_nowait(work(1)) is Outcome.QUEUED
    assert q.put_nowait(work(2)) is Outcome.QUEUED
    assert q.put_nowait(work(3)) is Outcome.QUEUE_FULL
    assert q.put_nowait(work(1)) is Outcome.COALESCED
    assert q.full()


async def test_delayed_put_is_dropped_when_the_key_was_synced_meanwhile() -> None:
    q = KeyedQueue(10)
    q.put_nowait(work(1))
    w = await q.get()
    q.put_later(w, 0.05)  # scheduled by the running sync
    q.done(w.key)
    await asyncio.sleep(0.08)
    assert len(q) == 1  # fired: nothing else synced the key
    w = await q.get()
    q.put_later(w, 0.05)
    q.done(w.key)
    q.put_nowait(work(1))  # an event arrives and is synced before the timer
    q.done((await q.get()).key)
    await asyncio.sleep(0.08)
    assert len(q) == 0
    assert q.scheduled == 0


async def test_a_held_retry_absorbs_deliveries_and_keeps_their_commands() -> None:
    q = KeyedQueue(10)
    key = WorkKey("o/r", 1)
    q.put_later(Work(key, 1, "first"), 0.05, hold=True)
    assert q.put_nowait(Work(key, 1, "d2", commands=(Command(7, "alice", ("approve",)),))) is (
        Outcome.COALESCED
    )
    assert q.put_nowait(Work(key, 1, "d3", label_actor="bob")) is Outcome.COALESCED
    assert len(q) == 1 and q.held == 1
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(q.get(), 0.02)  # no attempt before the backoff ends
    work = await asyncio.wait_for(q.get(), 1)
    assert (work.delivery, work.label_actor) == ("d3", "bob")
    assert [c.comment_id for c in work.commands] == [7]


async def test_deliveries_during_a_failing_sync_join_its_retry() -> None:
    q = KeyedQueue(10)
    key = WorkKey("o/r", 1)
    q.put_nowait(Work(key, 1, "a"))
    taken = await q.get()
    q.put_nowait(Work(key, 1, "during"))  # dirty while running
    q.put_later(taken, 0.05, hold=True)  # the sync failed and schedules its retry
    q.done(key)
    assert q.sizes()["pending"] == 0 and q.held == 1
    work = await asyncio.wait_for(q.get(), 1)
    assert work.delivery == "during"


async def test_a_follow_up_is_dropped_when_the_key_is_synced_first() -> None:
    q = KeyedQueue(10)
    key = WorkKey("o/r", 1)
    q.put_later(Work(key, 1, "followup"), 0.05)
    q.put_nowait(Work(key, 1, "event"))
    work = await q.get()
    assert work.delivery == "event" and q.scheduled == 0
    q.done(key)
    await asyncio.sleep(0.1)
    assert len(q) == 0


async def test_ten_thousand_keys_leave_nothing_behind() -> None:
    q = KeyedQueue(20_000)
    for n in range(10_000):
        q.put_nowait(Work(WorkKey("o/r", n + 1), 1))
    for _ in range(10_000):
        work = await q.get()
        if work.key.number % 2:
            q.put_later(work, 0.001, hold=True)  # half fail once, then succeed
        q.done(work.key)
    while len(q):
        work = await asyncio.wait_for(q.get(), 1)
        q.done(work.key)
    assert q.sizes() == {"pending": 0, "running": 0, "dirty": 0, "held": 0, "followups": 0}


def test_one_pr_is_one_key_whatever_the_case_of_its_repository() -> None:
    q = KeyedQueue(10)
    assert q.put_nowait(Work(WorkKey("Acme/Dex", 7), 1)) is Outcome.QUEUED
    # The watch keys a PR by its Application's annotation, spelled as before a rename of case.
    assert q.put_nowait(Work(WorkKey("acme/dex", 7), 1)) is Outcome.COALESCED
    assert len(q) == 1 and q.busy("ACME/DEX") == {7}


def test_a_waiting_key_keeps_every_command_oldest_first_and_the_newest_ids() -> None:
    from bot.model import MAX_COMMANDS

    q = KeyedQueue(10)
    key = WorkKey("o/r", 1)
    q.put_nowait(Work(key, 1, "d-0", "alice", (Command(1, "alice", ("approve",)),)))
    q.put_nowait(Work(key, 2, "d-1"))  # a delivery without a command or a label actor
    for n in range(MAX_COMMANDS + 3):
        q.put_nowait(Work(key, 3, f"d-{n + 2}", None, (Command(n + 2, "bob", ()),)))
    waiting = q._pending[key]
    assert (waiting.installation_id, waiting.delivery, waiting.label_actor) == (
        3,
        f"d-{MAX_COMMANDS + 4}",
        "alice",
    )
    ids = [c.comment_id for c in waiting.commands]
    assert ids == list(range(5, MAX_COMMANDS + 5))  # the newest MAX_COMMANDS, oldest first
