"""Rate limits, write pacing, backoff and circuit breaking: when a request may go, as pure logic.

Nothing here sends or sleeps. Each class reads the time from an injected clock (wall-clock
seconds, because GitHub's `x-ratelimit-reset` is an epoch), is told what came back, and answers
"how many seconds until this may go" (0: now). The adapter turns a non-zero answer into
`TemporaryError(retry_after=...)` before anything reaches the network, so the bot's queue holds
the work until then:

- `Throttle`: GitHub's primary limit per installation (remaining/reset from every answer) and
  the secondary limit for the whole App (retry-after, else 60 s, doubling while it repeats);
  after a secondary limit, writes go one at a time, at least a second apart, for a while.
- `Backoff`: per-key exponential delays after failures (installation-token requests).
- `Breaker`: a circuit breaker for one host: N failures in a row open it, a cooldown (growing
  while probes fail) later one probe may go, its success closes it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from cachetools import LRUCache

Now = Callable[[], float]

# Methods GitHub counts as mutating for its secondary limits ("POST, PATCH, PUT, or DELETE").
MUTATING = frozenset({"POST", "PATCH", "PUT", "DELETE"})
SECONDARY_TEXT = "secondary rate limit"


class Clock(Protocol):
    """Wall-clock time and sleeping, so tests can run hours of limits in no time."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class PauseKind(StrEnum):
    """Why requests are held back (also the metric's label)."""

    PRIMARY = "primary"  # one installation's hourly budget is spent until its reset
    SECONDARY = "secondary"  # GitHub asked the whole App to back off
    CIRCUIT = "circuit"  # the host keeps failing: the breaker is open


@dataclass(frozen=True)
class Pause:
    kind: PauseKind
    until: float  # epoch seconds
    seconds: float  # from the moment it was computed until then


@dataclass(frozen=True)
class Answer:
    """The parts of one GitHub answer that rate limiting needs."""

    status: int
    limit: int | None = None
    remaining: int | None = None
    reset: float | None = None  # epoch seconds
    retry_after: float | None = None
    says_secondary: bool = False  # the body names the secondary rate limit

    @property
    def exhausted(self) -> bool:
        return self.remaining == 0

    @property
    def secondary(self) -> bool:
        """GitHub's signs of a secondary limit: 403/429 with retry-after, or saying so (429
        alone counts too), while the primary budget is not what ran out."""
        if self.status not in (403, 429) or self.exhausted:
            return False
        return self.retry_after is not None or self.says_secondary or self.status == 429


def read_answer(status: int, headers: Mapping[str, str], body: bytes) -> Answer:
    """An Answer from a status, case-insensitive headers and the raw body."""

    def number(name: str) -> float | None:
        value = headers.get(name)
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    limit, remaining = number("x-ratelimit-limit"), number("x-ratelimit-remaining")
    says = status in (403, 429) and SECONDARY_TEXT.encode() in body[:2000].lower()
    return Answer(
        status=status,
        limit=int(limit) if limit is not None else None,
        remaining=int(remaining) if remaining is not None else None,
        reset=number("x-ratelimit-reset"),
        retry_after=number("retry-after"),
        says_secondary=says,
    )


@dataclass(frozen=True)
class Policy:
    """How politely to behave; GitHub's guidance as defaults."""

    reset_margin: float = 1.0  # GitHub's clock and ours differ a little
    secondary_default: float = 60.0  # "wait at least one minute" without retry-after
    secondary_max: float = 900.0  # cap of the doubling while secondary limits repeat
    slow_seconds: float = 300.0  # how long writes stay paced after a secondary limit
    write_spacing: float = 1.0  # "at least one second between each" mutating request
    installations: int = 10_000  # budgets remembered (least recently seen dropped first)


@dataclass
class _Budget:
    limit: int
    remaining: int
    reset: float


class Throttle:
    """GitHub's primary and secondary rate limits, for one App and all its installations.

    Keys are installation ids; None is the App itself (its JWT calls have their own budget).
    """

    def __init__(self, clock: Now = time.time, policy: Policy | None = None) -> None:
        self._clock = clock
        self.policy = policy or Policy()
        self._budgets: LRUCache[int | None, _Budget] = LRUCache(self.policy.installations)
        self._paused_until = 0.0  # the whole App (secondary limit)
        self._slow_until = 0.0  # writes paced until then
        self._strikes = 0  # secondary limits in a row, for the doubling
        self._next_write = 0.0

    # -- before sending -----------------------------------------------------------------------
    def pause(self, installation_id: int | None) -> Pause | None:
        """The pause that forbids a request for the installation now, if any (the longest)."""
        now = self._clock()
        primary = self._primary_until(installation_id)
        if max(primary, self._paused_until) <= now:
            return None
        if primary > self._paused_until:
            return Pause(PauseKind.PRIMARY, primary, primary - now)
        return Pause(PauseKind.SECONDARY, self._paused_until, self._paused_until - now)

    def _primary_until(self, installation_id: int | None) -> float:
        budget = self._budgets.get(installation_id)
        if budget is None or budget.remaining > 0:
            return 0.0
        return budget.reset + self.policy.reset_margin

    def write_wait(self) -> float:
        """Seconds a mutating request would wait for its turn (0 unless writes are paced)."""
        now = self._clock()
        if now >= self._slow_until:
            return 0.0
        return max(0.0, self._next_write - now)

    def reserve_write(self) -> float:
        """Take the next write turn; the seconds to wait for it."""
        now = self._clock()
        if now >= self._slow_until:
            return 0.0
        turn = max(now, self._next_write)
        self._next_write = turn + self.policy.write_spacing
        return turn - now

    # -- after an answer ----------------------------------------------------------------------
    def observe(self, installation_id: int | None, answer: Answer) -> Pause | None:
        """Learn from an answer; the pause it starts, if it starts one (an answer to a request
        sent before a pause began only confirms it)."""
        started = self._observe_budget(installation_id, answer)
        if answer.secondary:
            started = self._secondary(answer.retry_after) or started
        return started

    def _observe_budget(self, installation_id: int | None, answer: Answer) -> Pause | None:
        if answer.remaining is None or answer.reset is None:
            return None
        now = self._clock()
        already = self._primary_until(installation_id) > now
        if already and not answer.exhausted:
            # Nothing is sent while paused: this answers a request sent before the pause,
            # and its older, larger budget must not lift the pause.
            return None
        reset = answer.reset
        if answer.exhausted and answer.status in (403, 429):
            # Refused for the spent budget: wait at least the margin, even when GitHub's
            # reset looks past to our clock.
            reset = max(reset, now)
        self._budgets[installation_id] = _Budget(answer.limit or 0, answer.remaining, reset)
        until = self._primary_until(installation_id)
        if until <= now or already:
            return None  # no pause, or the same one seen again
        return Pause(PauseKind.PRIMARY, until, until - now)

    def _secondary(self, retry_after: float | None) -> Pause | None:
        now = self._clock()
        p = self.policy
        if now < self._paused_until:
            # An answer to a request sent before the pause began: the same episode.
            if retry_after is not None and now + retry_after > self._paused_until:
                self._paused_until = now + retry_after
                self._slow_until = self._paused_until + p.slow_seconds
            return None
        # A new episode; a longer wait when it comes while still slowed down by the last one.
        self._strikes = self._strikes + 1 if now < self._slow_until else 1
        if retry_after is not None:
            wait = retry_after
        else:
            wait = min(p.secondary_default * 2 ** (self._strikes - 1), p.secondary_max)
        self._paused_until = now + wait
        self._slow_until = self._paused_until + p.slow_seconds
        self._next_write = max(self._next_write, self._paused_until)
        return Pause(PauseKind.SECONDARY, self._paused_until, wait)

    # -- reading --------------------------------------------------------------------------------
    def remaining(self, installation_id: int | None) -> tuple[int, int] | None:
        """(remaining, limit) from the installation's last answer; None when never seen. After
        the reset the window is whole again, so the limit is reported as remaining."""
        budget = self._budgets.get(installation_id)
        if budget is None:
            return None
        if self._clock() >= budget.reset:
            return budget.limit, budget.limit
        return budget.remaining, budget.limit

    @property
    def slowed(self) -> bool:
        """Whether writes are being paced after a secondary limit."""
        return self._clock() < self._slow_until


class Backoff:
    """Exponential, capped delays after failures, per key (bounded: least recent dropped)."""

    def __init__(
        self,
        clock: Now = time.time,
        base: float = 1.0,
        cap: float = 300.0,
        keys: int = 10_000,
    ) -> None:
        self._clock = clock
        self.base = base
        self.cap = cap
        self._state: LRUCache[Hashable, tuple[int, float]] = LRUCache(keys)

    def wait(self, key: Hashable) -> float:
        """Seconds until the key may try again (0: now)."""
        held = self._state.get(key)
        if held is None:
            return 0.0
        return max(0.0, held[1] - self._clock())

    def failed(self, key: Hashable) -> float:
        """Record a failure; the delay before the next try."""
        held = self._state.get(key)
        failures = (held[0] if held else 0) + 1
        delay = min(self.base * 2.0 ** (failures - 1), self.cap)
        self._state[key] = (failures, self._clock() + delay)
        return delay

    def succeeded(self, key: Hashable) -> None:
        self._state.pop(key, None)


@dataclass(frozen=True)
class BreakerPolicy:
    threshold: int = 5  # failures in a row that open the breaker
    cooldown: float = 10.0  # first wait before a probe
    cooldown_max: float = 300.0  # the cooldown doubles while probes fail, up to this


class Breaker:
    """A circuit breaker for one host.

    Closed: requests go, failures in a row are counted. Open: nothing goes until the cooldown
    ends. Then one probe goes (half-open) while others still wait; its success closes the
    breaker, its failure opens it again for twice as long.
    """

    def __init__(self, clock: Now = time.time, policy: BreakerPolicy | None = None) -> None:
        self._clock = clock
        self.policy = policy or BreakerPolicy()
        self.failures = 0
        self.cooldown = self.policy.cooldown
        self.open_until: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self.open_until is not None

    def admit(self) -> float:
        """0 when a request may go now (maybe as the probe); else seconds to wait."""
        if self.open_until is None:
            return 0.0
        now = self._clock()
        if now < self.open_until:
            return self.open_until - now
        if self._probing:
            # Another request is probing; its verdict comes soon, retry after one cooldown.
            return self.policy.cooldown
        self._probing = True
        return 0.0

    def succeeded(self) -> None:
        self.failures = 0
        self.open_until = None
        self._probing = False
        self.cooldown = self.policy.cooldown

    def failed(self) -> bool:
        """Record a failure; True when this failure opened the breaker."""
        now = self._clock()
        if self._probing:
            self._probing = False
            self.cooldown = min(self.cooldown * 2, self.policy.cooldown_max)
            self.open_until = now + self.cooldown
            return True
        self.failures += 1
        if self.open_until is None and self.failures >= self.policy.threshold:
            self.open_until = now + self.cooldown
            return True
        return False

    def abandoned(self) -> None:
        """The probe ended without a verdict (cancelled): let the next probe go."""
        self._probing = False
