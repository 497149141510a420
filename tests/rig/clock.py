"""A clock tests move by hand: shared by the bot's GitHub adapter and the GitHub fake."""

from __future__ import annotations

import asyncio
import time


class FakeClock:
    """Wall-clock seconds that pass only when told (`advance`, or a `sleep` of the bot)."""

    def __init__(self, start: float | None = None) -> None:
        # Whole seconds, so that t + 17 - t is exactly 17.
        self.value = float(int(time.time() if start is None else start))
        self.slept: list[float] = []

    def now(self) -> float:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.value += max(seconds, 0.0)
        await asyncio.sleep(0)  # still a suspension point, as a real sleep is
