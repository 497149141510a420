"""Start-up weight: import time and peak RSS of `import bot.wiring` (what `serve` loads).

Each figure is the median of fresh interpreters (the machine is shared and noisy), next to
bare Python and to `import kubernetes_asyncio.client`, which serve no longer loads. The time
is `-X importtime`'s cumulative figure for the module (it inflates a little).

    .venv/bin/python bench/imports.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, resource, sys
import {module}
usage = resource.getrusage(resource.RUSAGE_SELF)
loaded = sum(1 for m in sys.modules if m.split(".")[0] == "kubernetes_asyncio")
print(json.dumps({{"rss": usage.ru_maxrss / 1024, "kubernetes_asyncio": loaded}}))
"""


def measure(module: str) -> tuple[float, float, int]:
    """(cumulative import ms, peak RSS MiB, kubernetes_asyncio modules) in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", PROBE.format(module=module)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    micros = 0
    for line in done.stderr.splitlines():
        fields = line.split("|")
        if len(fields) == 3 and fields[2].strip() == module:
            micros = int(fields[1])
    figures = json.loads(done.stdout)
    return micros / 1000, figures["rss"], figures["kubernetes_asyncio"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    for module in ("sys", "bot.wiring", "kubernetes_asyncio.client"):
        runs = [measure(module) for _ in range(args.rounds)]
        ms = statistics.median(r[0] for r in runs)
        rss = statistics.median(r[1] for r in runs)
        label = "bare Python" if module == "sys" else f"import {module}"
        print(
            f"{label:<33} {ms:7.0f} ms  {rss:6.1f} MiB peak RSS  "
            f"{runs[0][2]:4d} kubernetes_asyncio modules"
        )


if __name__ == "__main__":
    main()
