"""A clock tests move by hand: shared by the bot's GitHub adapter and the GitHub fake."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class FakeClock:
    """Wall-clock seconds that pass only when a test calls `advance`.

    `sleep` waits until the clock has been advanced past its end, so concurrent sleepers wake
    in the order of their deadlines, as they would in real time.
    """

    def __init__(self, start: float | None = None) -> None:
        # Whole seconds, so that t + 17 - t is exactly 17.
        self.value = float(int(time.time() if start is None else start))
        self.slept: list[float] = []
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += seconds
        waiting = []
        for deadline, woken in self._sleepers:
            if woken.done():
                continue  # its sleeper was cancelled
            if deadline <= self.value:
                woken.set_result(None)
            else:
                waiting.append((deadline, woken))
        self._sleepers = waiting

    @property
    def sleepers(self) -> int:
        return sum(1 for _, woken in self._sleepers if not woken.done())

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)  # still a suspension point, as a real sleep is
            return
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.value + seconds, woken))
        await woken


async def until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    """Let the event loop run until `condition()` holds (a bound on waiting, not a timing
    check: the tests assert what happened, never how fast)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError(f"condition still false after {limit}s")
        await asyncio.sleep(0.005)
