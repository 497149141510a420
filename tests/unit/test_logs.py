"""Log lines: JSON off a terminal, text on one, with the delivery's context and no secrets."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from datetime import UTC, datetime

import pytest

from bot.logs import (
    MAX_HELD_LINES,
    _sole_json_handler,
    _timestamp,
    flush_logs,
    log_context,
    log_line,
    setup_logging,
)
from tests.unit.test_intake import SECRET, Rig, labeled


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_root_logger() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


def test_intake_lines_are_json_with_context_and_no_secret() -> None:
    out = io.StringIO()
    setup_logging("INFO", out)
    rig = Rig()
    with rig.client:
        rig.post(labeled(), delivery="d-42")
        rig.post(labeled(), delivery="d-43", secret="wrong")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    queued = next(line for line in lines if line.get("delivery") == "d-42")
    assert queued["event"] == "pull_request"
    assert queued["action"] == "labeled"
    assert queued["repo"] == "Codertocat/Hello-World"
    assert queued["pr"] == 2
    assert queued["outcome"] == "queued"
    rejected = next(line for line in lines if line.get("delivery") == "d-43")
    assert rejected["level"] == "warning"
    assert SECRET not in out.getvalue()


def test_terminal_gets_readable_lines() -> None:
    out = Tty()
    setup_logging("INFO", out)
    logging.getLogger("bot.test").info("hello", extra={"repo": "o/r", "pr": 1})
    line = out.getvalue().strip()
    assert "INFO" in line and "bot.test: hello" in line and "repo=o/r pr=1" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_a_sync_context_is_on_every_line_and_extra_fields_still_work() -> None:
    out = io.StringIO()
    setup_logging("INFO", out)
    log = logging.getLogger("bot.test")
    with log_context(repo="o/r", pr=7, delivery="d-1"):
        log.info("inside", extra={"pr": 8, "sha": "abc"})  # a key the context has: no clash
    log.info("outside")
    inside, outside = (json.loads(line) for line in out.getvalue().splitlines())
    assert (inside["repo"], inside["pr"], inside["delivery"], inside["sha"]) == (
        "o/r",
        8,
        "d-1",
        "abc",
    )
    assert "repo" not in outside and "log_context" not in inside


def test_line_times_are_iso_8601_utc_with_milliseconds_as_datetime_writes_them() -> None:
    # Milliseconds away from a rounding edge, across seconds, days and years.
    for created in (0.0004, 1.2344, 59.9994, 86_399.5004, 1_796_300_835.1234, 1_796_300_836.0):
        expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        assert _timestamp(created) == expected


class Counted(io.StringIO):
    """A stream that counts its writes and flushes."""

    writes = 0
    flushes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


async def test_lines_on_the_loop_are_flushed_once_per_turn_warnings_at_once() -> None:
    out = Counted()
    setup_logging("INFO", out)
    log = logging.getLogger("bot.app")
    for i in range(3):
        log.info("delivery %d", i)
    assert (out.writes, out.flushes) == (0, 0)  # held until the turn ends
    await asyncio.sleep(0)  # the turn ends
    assert (out.writes, out.flushes) == (1, 1)  # one write for the three lines
    assert [json.loads(line)["msg"] for line in out.getvalue().splitlines()] == [
        "delivery 0",
        "delivery 1",
        "delivery 2",
    ]
    log.info("held")
    log.warning("refused")  # at once, after the line held before it
    assert (out.writes, out.flushes) == (2, 2)
    assert [json.loads(line)["msg"] for line in out.getvalue().splitlines()][-2:] == [
        "held",
        "refused",
    ]


async def test_a_long_turn_writes_its_lines_in_bounded_batches() -> None:
    out = Counted()
    setup_logging("INFO", out)
    for i in range(MAX_HELD_LINES * 2 + 1):
        logging.getLogger("bot.app").info("line %d", i)
    assert out.writes == 2  # two full batches written; the last line waits for the turn's end
    await asyncio.sleep(0)
    assert out.writes == 3 and out.getvalue().count("\n") == MAX_HELD_LINES * 2 + 1


def test_lines_off_the_loop_are_flushed_at_once() -> None:
    out = Counted()
    setup_logging("INFO", out)
    logging.getLogger("bot.app").info("one")
    logging.getLogger("bot.app").info("two")
    assert out.flushes == 2


def test_a_loop_closed_before_its_flush_does_not_hold_later_lines() -> None:
    out = Counted()
    setup_logging("INFO", out)
    loop = asyncio.new_event_loop()

    def log_and_stop() -> None:
        logging.getLogger("bot.app").info("its flush is planned for the next turn")
        loop.stop()  # there is none

    loop.call_soon(log_and_stop)
    loop.run_forever()
    loop.close()
    assert out.flushes == 0

    async def later() -> None:
        logging.getLogger("bot.app").info("on another loop")
        await asyncio.sleep(0)

    asyncio.run(later())
    assert out.flushes == 1 and out.getvalue().count("\n") == 2


def test_a_hot_path_line_is_the_line_logging_writes() -> None:
    # log_line writes straight to setup_logging's handler: the line must be the one
    # logger.log would have written through the JsonFormatter, context and fields included.
    out = io.StringIO()
    setup_logging("INFO", out)
    log = logging.getLogger("bot.app")
    fields = {"event": "pull_request", "outcome": "queued", "delivery": "d-1", "pr": 2, "x": None}
    assert _sole_json_handler(log, logging.INFO) is logging.getLogger().handlers[0]  # short cut
    with log_context(repo="o/r", pr=1):
        log_line(log, logging.INFO, "o/r#2 queued", fields)
        log.log(logging.INFO, "o/r#2 queued", extra=fields)
        log_line(log, logging.DEBUG, "below the level: not written", fields)
    fast, slow = (json.loads(line) for line in out.getvalue().splitlines())
    assert fast.pop("time")[:19] == slow.pop("time")[:19]
    assert fast == slow
    assert list(fast) == list(slow)  # the same order of fields too
    assert fast["pr"] == 2 and fast["repo"] == "o/r"


def test_a_hot_path_line_goes_through_logging_when_anything_else_would_see_it() -> None:
    out = io.StringIO()
    setup_logging("INFO", out)
    log = logging.getLogger("bot.app")
    seen: list[logging.LogRecord] = []

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    other = Seen()
    logging.getLogger("bot").addHandler(other)
    try:
        log_line(log, logging.INFO, "to both", {"event": "ping"})
        assert [r.getMessage() for r in seen] == ["to both"] and seen[0].event == "ping"  # type: ignore[attr-defined]
        assert json.loads(out.getvalue())["event"] == "ping"
    finally:
        logging.getLogger("bot").removeHandler(other)
    log.addFilter(lambda record: record.getMessage() != "filtered")
    try:
        log_line(log, logging.INFO, "filtered", {})
        assert out.getvalue().count("\n") == 1  # the filter was asked, and dropped it
    finally:
        log.filters.clear()
    with pytest.raises(KeyError):  # as logging: a field may not overwrite a record's own
        log_line(log, logging.INFO, "clash", {"message": "x"})


async def test_a_hot_path_line_is_flushed_as_other_lines_are() -> None:
    out = Counted()
    setup_logging("INFO", out)
    log = logging.getLogger("bot.app")
    log_line(log, logging.INFO, "one", {})
    log_line(log, logging.INFO, "two", {})
    assert (out.writes, out.flushes) == (0, 0)
    await asyncio.sleep(0)
    assert (out.writes, out.flushes) == (1, 1) and out.getvalue().count("\n") == 2
    log_line(log, logging.WARNING, "refused", {})
    assert (out.writes, out.flushes) == (2, 2)


async def test_a_held_line_that_cannot_be_written_does_not_take_the_others_with_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    out = Counted()
    setup_logging("INFO", out)
    log = logging.getLogger("bot.app")
    log_line(log, logging.INFO, "before", {})
    log_line(log, logging.INFO, "bad", {"value": Unprintable()})
    log_line(log, logging.INFO, "after", {})
    await asyncio.sleep(0)
    assert [json.loads(line)["msg"] for line in out.getvalue().splitlines()] == ["before", "after"]
    assert "Logging error" in capsys.readouterr().err  # said, as logging says its own errors


async def test_flush_logs_writes_the_lines_held_in_this_turn() -> None:
    # What `serve` calls on SIGTERM: a loop stuck in its turn never reaches its own flush.
    out = Counted()
    setup_logging("INFO", out)
    logging.getLogger("bot.app").info("held")
    log_line(logging.getLogger("bot.app"), logging.INFO, "held too", {})
    assert out.writes == 0
    flush_logs()
    assert [json.loads(line)["msg"] for line in out.getvalue().splitlines()] == ["held", "held too"]
