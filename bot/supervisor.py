"""Supervision of the bot's background tasks: restarted after any error, with backoff, and
visible in /readyz with their state and the time of their last success.

A task that must show signs of life (the Application watch) is given `stall_after`: when it
has not called `alive(name)` for that long it is cancelled and started again, since a watch
can hang on a half-open connection without ever raising.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0
WATCHDOG_SECONDS = 1.0

Factory = Callable[[], Coroutine[Any, Any, None]]


@dataclass
class TaskState:
    """One supervised task as /readyz reports it."""

    name: str
    state: str = "starting"  # running | restarting | stopped
    last_alive: float | None = None  # monotonic time of the last sign of life
    restarts: int = 0
    last_error: str = ""
    stall_after: float | None = None


class Supervisor:
    """Runs named tasks forever; one instance per Bot."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.tasks: dict[str, TaskState] = {}
        self._guards: dict[str, asyncio.Task[None]] = {}
        self._attempts: dict[str, asyncio.Task[None]] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self._stopping = False

    def spawn(self, name: str, factory: Factory, stall_after: float | None = None) -> None:
        """Run `factory()` as task `name`, again after any error or stall, until stopped."""
        self.tasks[name] = TaskState(name, stall_after=stall_after, last_alive=self.clock())
        self._guards[name] = asyncio.create_task(self._guard(name, factory), name=name)
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch_stalls(), name="watchdog")

    def alive(self, name: str) -> None:
        """Task `name` shows it works (an event, a finished round, an idle worker)."""
        state = self.tasks.get(name)
        if state is not None:
            state.last_alive = self.clock()
            if state.state == "restarting":
                state.state = "running"

    async def _guard(self, name: str, factory: Factory) -> None:
        state = self.tasks[name]
        backoff = 1.0
        while not self._stopping:
            state.state = "running"
            began = self.clock()
            fault: Exception | None = None
            attempt = asyncio.create_task(factory(), name=f"{name}-attempt")
            self._attempts[name] = attempt
            try:
                await attempt
                why = "returned"  # a supervised task runs forever: returning is a fault too
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if self._stopping or (current is not None and current.cancelling()):
                    raise  # the guard itself is being stopped, not just the attempt
                why = "stalled: no sign of life"
            except Exception as exc:  # any fault restarts it; none may end the bot
                why, fault = f"{type(exc).__name__}: {exc}", exc
            if self.clock() - began > MAX_BACKOFF:
                backoff = 1.0  # it ran well for a while: a new fault, not the same one again
            if fault is not None:
                log.error("%s failed; restarting in %.0fs", name, backoff, exc_info=fault)
            else:
                log.warning("%s %s; restarting in %.0fs", name, why, backoff)
            state.state, state.last_error = "restarting", why
            state.restarts += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
            state.last_alive = self.clock()  # a fresh start gets a fresh stall clock

    async def _watch_stalls(self) -> None:
        while True:
            await asyncio.sleep(WATCHDOG_SECONDS)
            now = self.clock()
            for name, state in self.tasks.items():
                attempt = self._attempts.get(name)
                stalled = (
                    state.stall_after is not None
                    and state.last_alive is not None
                    and now - state.last_alive > state.stall_after
                )
                if stalled and attempt is not None and not attempt.done():
                    log.warning("%s shows no sign of life; restarting it", name)
                    attempt.cancel()

    def report(self) -> list[str]:
        """One line per task: its state, restarts and the age of its last sign of life."""
        now = self.clock()
        lines = []
        for state in self.tasks.values():
            age = f"{now - state.last_alive:.0f}s ago" if state.last_alive is not None else "never"
            error = f", last error: {state.last_error}" if state.last_error else ""
            lines.append(
                f"{state.name}: {state.state}, alive {age}, {state.restarts} restarts{error}"
            )
        return lines

    async def stop(self, names: list[str] | None = None) -> None:
        """Cancel the tasks (all, or those named) and wait for them."""
        chosen = list(self._guards) if names is None else [n for n in names if n in self._guards]
        if names is None:
            self._stopping = True
        # Taken out first: a task's cancellation may stop others (the elector's
        # on_stopped_leading stops the workers), and each guard is awaited by one stop only.
        guards = {name: self._guards.pop(name) for name in chosen}
        for guard in guards.values():
            guard.cancel()
        for name, guard in guards.items():
            with contextlib.suppress(asyncio.CancelledError):
                await guard
            self._attempts.pop(name, None)
            self.tasks[name].state = "stopped"
        if names is None and self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
