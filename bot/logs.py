"""Log setup: JSON lines when stdout is not a terminal, readable lines when it is.

Every line about a delivery or a sync carries its context (delivery id, repository, PR) as
fields, so one grep finds a PR's whole story. A sync sets its context once (`log_context`, a
contextvar, so each worker task has its own); every line logged inside it carries the fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

import msgspec

# Immutable default: a sync's fields are added by replacing the mapping, never by mutating it.
_CONTEXT: ContextVar[Mapping[str, Any]] = ContextVar(
    "preview_bot_log_context", default=MappingProxyType({})
)
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


_NOT_EXTRA = frozenset(_STANDARD | {"log_context"})
# msgspec writes JSON several times faster than json.dumps (a line per delivery is on the hot
# path); anything it cannot encode is written as its str(), as json.dumps(default=str) did.
_ENCODER = msgspec.json.Encoder(enc_hook=str)


# LogRecord.__init__ sets these many attributes, always the same, always first: what a
# LogRecord holds after them is the factory's log_context and `extra=`'s fields.
_SET_BY_INIT = len(vars(logging.makeLogRecord({})))


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """The context of the line: its log_context, then what `extra=` gave (which wins)."""
    attributes = record.__dict__
    fields = dict(attributes.get("log_context", ()))
    # A subclass may set attributes before LogRecord's own: look at all of them then.
    start = _SET_BY_INIT if type(record) is logging.LogRecord else 0
    for k, v in itertools.islice(attributes.items(), start, None):
        if k not in _NOT_EXTRA and not k.startswith("_"):
            fields[k] = v  # in the order given
    return fields


_MILLISECONDS = tuple(f".{ms:03d}+00:00" for ms in range(1000))  # a line's time ends so


class _Timestamps:
    """`created` as ISO 8601 in UTC with milliseconds (2026-12-03T16:07:15.123+00:00). The
    date and time are formatted once a second: datetime's own was a tenth of a line's cost."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # one entry: log lines come in time order
            self._text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return self._text + _MILLISECONDS[int((created - second) * 1000)]


_timestamp = _Timestamps()


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add `fields` to every line logged inside the block, in this task only."""
    _install_record_factory()
    token = _CONTEXT.set({**_CONTEXT.get(), **fields})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def _install_record_factory() -> None:
    """Make every LogRecord carry the current log_context as `record.log_context`, whichever
    handler gets it (ours, a test's capture, uvicorn's). One attribute, not one per field:
    logging refuses an `extra=` key that the record already has. Idempotent."""
    current = logging.getLogRecordFactory()
    if getattr(current, "preview_bot", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        record.log_context = _CONTEXT.get()
        return record

    factory.preview_bot = True  # type: ignore[attr-defined]
    # Records made by this factory hold nothing but LogRecord's own and the context: what
    # log_line's short cut writes without making one.
    factory.plain = current is logging.LogRecord  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def log_line(logger: logging.Logger, level: int, msg: str, fields: Mapping[str, Any]) -> None:
    """`logger.log(level, msg, extra=fields)`, the same line, for a line on the hot path.

    When the line would reach nothing but setup_logging's JSON handler (production), it is
    written straight to that handler: logging's record, filters and handler layers were over
    half of what a delivery's line cost, measured in `preview-bot serve`. Anywhere else (a
    test's capture, a terminal, another handler, a filter) it goes through logging. The
    short cut encodes `fields` when the turn's lines are written: pass values that will not
    change. One difference: a field named with a leading `_` is written, where the JSON
    formatter leaves out such record attributes (the callers name none so)."""
    if not logger.isEnabledFor(level):
        return
    handler = _sole_json_handler(logger, level)
    if handler is None or not _NOT_EXTRA.isdisjoint(fields):
        logger.log(level, msg, extra=dict(fields))  # logging says what is wrong with a key
        return
    handler.write_line(level, logger.name, msg, fields)


def _sole_json_handler(logger: logging.Logger, level: int) -> LineHandler | None:
    """The one handler a line of `logger` at `level` reaches, when it is a LineHandler writing
    JSON and nothing on the way filters or changes records; None otherwise."""
    if not getattr(logging.getLogRecordFactory(), "plain", False):
        return None
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        found += current.handlers
        if not current.propagate:
            break
        current = current.parent
    if len(found) != 1:
        return None
    handler = found[0]
    if (
        type(handler) is not LineHandler
        or type(handler.formatter) is not JsonFormatter
        or handler.filters
        or level < handler.level
    ):
        return None
    return handler


# Level names as the JSON lines write them; another level number falls back to its name.
_LEVEL_NAMES = {
    level: logging.getLevelName(level).lower()
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        # A message without arguments is the message itself: getMessage's str() and %
        # formatting skipped on the line every delivery writes.
        msg = record.msg
        line: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": _LEVEL_NAMES.get(record.levelno) or record.levelname.lower(),
            "logger": record.name,
            "msg": msg if type(msg) is str and not record.args else record.getMessage(),
        }
        line.update(_extras(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(line).decode()


class TextFormatter(logging.Formatter):
    """`time level logger: message key=value ...` for a human at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S")
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        text = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            text = f"{text}  {extras}"
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        return text


# Most lines a LineHandler holds before writing them, even within one turn of the loop.
MAX_HELD_LINES = 256
# A line of log_line's, held until written: (created, level, logger name, msg, log context,
# fields).
_Line = tuple[float, int, str, str, Mapping[str, Any], Mapping[str, Any]]


class LineHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler that, on an event loop's thread, writes once per turn of the loop: a
    burst of deliveries answered in one turn is one write, not one a line, even on an
    unbuffered stream (the image sets PYTHONUNBUFFERED, which made each line a system call).
    Lines at WARNING or above, and lines from other threads or with no loop, are written at
    once, after the ones held. A process killed with SIGKILL may lose the lines of the turn
    it was in; an orderly exit loses none (logging flushes every handler at exit)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        # The loop a flush is planned on. A loop closed before it ran the flush is never
        # waited for: a line on another loop plans its own.
        self._planned_on: asyncio.AbstractEventLoop | None = None
        # Lines of this turn, not yet written: formatted ones, and write_line's, formatted
        # when written (a turn's lines formatted together cost a third of one at a time,
        # between requests whose bodies have taken the CPU's caches).
        self._held: list[str | _Line] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._put(self.format(record) + self.terminator, record.levelno)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _put(self, line: str | _Line, level: int) -> None:
        """Hold `line` until the end of the turn, or write it now (see the class). Called with
        the handler's lock held."""
        self._held.append(line)
        if level >= logging.WARNING or len(self._held) >= MAX_HELD_LINES or not self._plan_flush():
            self.flush()

    def flush(self) -> None:
        """Write the lines held, then flush the stream."""
        self.acquire()
        try:
            if self._held:
                held = self._held
                self._held = []
                self.stream.write("".join([self._text(line) for line in held]))
            super().flush()
        finally:
            self.release()

    def write_line(self, level: int, name: str, msg: str, fields: Mapping[str, Any]) -> None:
        """The line JsonFormatter writes for a record of `level` from logger `name` with
        `msg` and extra `fields`, made without a record (see log_line). It is formatted when
        written: `fields` must not change after the call."""
        line = (time.time(), level, name, msg, _CONTEXT.get(), fields)
        self.acquire()  # as Handler.handle: another thread may write a line meanwhile
        try:
            self._put(line, level)
        except RecursionError:
            raise
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": msg, "levelno": level}))
        finally:
            self.release()

    def _text(self, line: str | _Line) -> str:
        """A held line as written."""
        if isinstance(line, str):
            return line
        created, level, name, msg, context, fields = line
        try:
            return (
                _ENCODER.encode(
                    {
                        "time": _timestamp(created),
                        "level": _LEVEL_NAMES.get(level) or logging.getLevelName(level).lower(),
                        "logger": name,
                        "msg": msg,
                        **context,
                        **fields,
                    }
                ).decode()
                + self.terminator
            )
        except Exception:  # the other lines are still written
            self.handleError(logging.makeLogRecord({"msg": msg, "levelno": level}))
            return ""

    def _plan_flush(self) -> bool:
        """Flush at the end of this turn of the running loop; False when none runs here."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if self._planned_on is not loop:
            self._planned_on = loop
            loop.call_soon(self._planned_flush)
        return True

    def _planned_flush(self) -> None:
        self._planned_on = None
        self.flush()


def flush_logs() -> None:
    """Write the lines the root logger's handlers hold. Safe in a signal handler: a flush the
    signal interrupted is left to finish (a stream refuses a write inside its own write)."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(RuntimeError):
            handler.flush()


def setup_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Route all logs to `stream` (stdout) in the format that suits it."""
    out = stream if stream is not None else sys.stdout
    handler = LineHandler(out)
    handler.setFormatter(TextFormatter() if out.isatty() else JsonFormatter())
    _install_record_factory()
    # What no line shows is not gathered for each line (the logging HOWTO's "Optimization"):
    # the caller's file and line, thread, process and multiprocessing names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Access logs repeat what our intake log says, without the delivery context.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
