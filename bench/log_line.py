"""The cost of the log line every delivery writes: the intake's own line (message and context
fields) through `setup_logging`'s JSON handler, and the formatter alone.

    .venv/bin/python bench/log_line.py [--number 20000] [--repeat 5]

Prints the best of `repeat` runs of `number` lines each, in microseconds per line.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.logs import JsonFormatter, setup_logging  # noqa: E402

FIELDS = {
    "event": "pull_request",
    "outcome": "queued",
    "action": "labeled",
    "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    "repo": "data-literate/dex",
    "pr": 42,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    out = io.StringIO()
    setup_logging("INFO", out)
    log = logging.getLogger("bot.app")

    def line() -> None:
        log.info("202 data-literate/dex#42 queued", extra=FIELDS)

    record = log.makeRecord("bot.app", logging.INFO, "", 0, "202 queued", (), None, extra=FIELDS)
    formatter = JsonFormatter()
    for name, call in (("whole line", line), ("format only", lambda: formatter.format(record))):
        best = min(timeit.repeat(call, number=args.number, repeat=args.repeat))
        print(f"{name:>12}: {best / args.number * 1e6:6.1f} us per line")
        out.seek(0)
        out.truncate()


if __name__ == "__main__":
    main()
