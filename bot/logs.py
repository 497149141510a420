"""Log setup: JSON lines when stdout is not a terminal, readable lines when it is.

Every line about a delivery or a sync carries its context (delivery id, repository, PR) as
fields, so one grep finds a PR's whole story. A sync sets its context once (`log_context`, a
contextvar, so each worker task has its own); every line logged inside it carries the fields.
"""

from __future__ import annotations

import contextlib
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


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """The context of the line: its log_context, then what `extra=` gave (which wins)."""
    attributes = record.__dict__
    fields = dict(attributes.get("log_context", ()))
    for k, v in attributes.items():
        if k not in _NOT_EXTRA and k[0] != "_":
            fields[k] = v  # in the order given
    return fields


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
        return f"{self._text}.{int((created - second) * 1000):03d}+00:00"


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
    logging.setLogRecordFactory(factory)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
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


def setup_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Route all logs to `stream` (stdout) in the format that suits it."""
    out = stream if stream is not None else sys.stdout
    handler = logging.StreamHandler(out)
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
