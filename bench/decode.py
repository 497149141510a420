"""Per-body cost of the intake's reading steps: json.loads of the whole payload (what it did
before, and still does when observers want the payload) against msgspec decoding into the
small Structs classify reads, plus classify and the HMAC check, on official payloads.

    .venv/bin/python bench/decode.py [--number 2000] [--repeat 7]

Prints the best of `repeat` runs of `number` calls each, in microseconds per body.
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.webhooks import Rules, classify, decode, sign, verify_signature  # noqa: E402
from tests.rig.artifacts import official_example  # noqa: E402

SECRET = "bench-secret"
RULES = Rules("preview", required_checks=frozenset({"build"}))


def bodies() -> dict[str, tuple[str, bytes]]:
    labeled = official_example("pull_request", "labeled")
    labeled["label"]["name"] = "preview"
    comment = official_example("issue_comment", "created")
    comment["issue"]["pull_request"] = {"url": "https://api.github.com/repos/o/r/pulls/1"}
    comment["comment"]["body"] = "Looks good.\n/preview approve"
    check = official_example("check_run", "completed")
    check["installation"] = {"id": 1}
    check["check_run"]["name"] = "build"
    return {
        "pull_request.labeled": ("pull_request", json.dumps(labeled).encode()),
        "issue_comment.created": ("issue_comment", json.dumps(comment).encode()),
        "check_run.completed": ("check_run", json.dumps(check).encode()),
    }


def best_us(stmt: object, number: int, repeat: int) -> float:
    runs = timeit.repeat(stmt, number=number, repeat=repeat)  # type: ignore[arg-type]
    return min(runs) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    n, r = args.number, args.repeat
    print(f"best of {r} x {n} calls, microseconds per body")
    print(
        f"{'payload':<24}{'bytes':>8}{'json.loads':>12}{'msgspec':>10}{'ratio':>7}"
        f"{'+classify':>11}{'hmac':>8}"
    )
    for name, (event, body) in bodies().items():
        signature = sign(SECRET, body)
        full = best_us(lambda body=body: json.loads(body), n, r)
        small = best_us(lambda event=event, body=body: decode(event, body), n, r)
        both = best_us(
            lambda event=event, body=body: classify(event, decode(event, body), RULES, "d"), n, r
        )
        mac = best_us(lambda body=body, s=signature: verify_signature(SECRET, body, s), n, r)
        print(
            f"{name:<24}{len(body):>8}{full:>12.1f}{small:>10.1f}{full / small:>6.1f}x"
            f"{both:>11.1f}{mac:>8.1f}"
        )


if __name__ == "__main__":
    main()
