"""Intake speed: POST /webhook (verify, dedupe, classify, queue) against a bare 202 endpoint.

Starts one uvicorn process per variant on 127.0.0.1, drives it with wrk (Debian's `wrk`;
`apt-get install wrk`) using GitHub's official pull_request.labeled example, signed, and prints
requests/s and latency percentiles, plus the ratio to the bare endpoint. Every request carries a
fresh delivery id, so dedupe never short-cuts the work. The machine is shared and noisy: the run
repeats each variant and reports medians.

    .venv/bin/python bench/intake.py [--seconds 5] [--rounds 3] [--connections 16]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.webhooks import sign  # noqa: E402
from tests.rig.artifacts import official_example  # noqa: E402

SECRET = "bench-secret"

SERVER = textwrap.dedent(
    """
    import sys, uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route
    from bot.app import Intake, create_app
    from bot.config import Settings
    from bot.metrics import Metrics
    from bot.queue import KeyedQueue

    variant, port = sys.argv[1], int(sys.argv[2])
    if variant == "bare":
        async def ok(request):
            await request.body()
            return Response(status_code=202)
        app = Starlette(routes=[Route("/webhook", ok, methods=["POST"])])
    else:
        settings = Settings(github_app_id=1, github_private_key="unused",
                            github_webhook_secret="bench-secret", queue_size=10_000_000,
                            repositories=("*",))
        intake = Intake(settings, KeyedQueue(settings.queue_size), Metrics())
        intake.health.started = True
        app = create_app(intake)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)
    """
)

# wrk script: a new X-GitHub-Delivery per request, from a counter per thread.
LUA = textwrap.dedent(
    """
    local counter = 0
    local body = io.open("{body}"):read("*a")
    request = function()
      counter = counter + 1
      local headers = {{}}
      headers["Content-Type"] = "application/json"
      headers["X-GitHub-Event"] = "pull_request"
      headers["X-GitHub-Delivery"] = tostring(math.random(1, 1e9)) .. "-" .. counter
      headers["X-Hub-Signature-256"] = "{signature}"
      return wrk.format("POST", "/webhook", headers, body)
    end
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


def parse_wrk(out: str) -> dict[str, float]:
    def ms(text: str) -> float:
        value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    result = {"rps": rps}
    for pct in ("50", "99"):
        found = re.search(rf"\s{pct}(?:\.000)?%\s+([\d.]+\w+)", out)
        if found:
            result[f"p{pct}_ms"] = ms(found.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["errors"] = float(non2xx.group(1)) if non2xx else 0.0
    return result


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(variant: str, script: Path, seconds: int, connections: int) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, variant, str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        wait_port(port)
        rss_before = rss_mib(server.pid)
        out = subprocess.run(
            [
                "wrk",
                "-t2",
                f"-c{connections}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                str(script),
                f"http://127.0.0.1:{port}/webhook",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        result = parse_wrk(out)
        requests = re.search(r"(\d+) requests in", out)
        result["requests"] = float(requests.group(1)) if requests else 0.0
        result["rss_start_mib"] = rss_before
        result["rss_end_mib"] = rss_mib(server.pid)
        return result
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")

    payload = official_example("pull_request", "labeled")
    payload["label"]["name"] = "preview"
    body = json.dumps(payload).encode()
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "body.json"
        body_file.write_bytes(body)
        script = Path(tmp) / "post.lua"
        script.write_text(LUA.format(body=body_file, signature=sign(SECRET, body)))
        results: dict[str, list[dict[str, float]]] = {"bare": [], "webhook": []}
        for _ in range(args.rounds):
            for variant in results:
                results[variant].append(run(variant, script, args.seconds, args.connections))

    print(
        f"body: official pull_request.labeled example, {len(body)} bytes; "
        f"{args.connections} connections, {args.rounds} rounds of {args.seconds}s, medians"
    )
    medians = {}
    for variant, runs in results.items():
        med = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in runs[0]}
        medians[variant] = med
        print(
            f"{variant:>8}: {med['rps']:8.0f} req/s  p50 {med.get('p50_ms', 0):6.2f} ms  "
            f"p99 {med.get('p99_ms', 0):6.2f} ms  non-2xx {med['errors']:.0f}"
        )
    ratio = medians["webhook"]["rps"] / medians["bare"]["rps"]
    print(f"webhook / bare throughput: {ratio:.2f}x")
    hook = medians["webhook"]
    grown = hook["rss_end_mib"] - hook["rss_start_mib"]
    per = grown * 1024 * 1024 / hook["requests"] if hook["requests"] else 0.0
    print(
        f"webhook server memory: {hook['rss_start_mib']:.0f} MiB at start, "
        f"{hook['rss_end_mib']:.0f} MiB after {hook['requests']:.0f} deliveries "
        f"(~{per:.0f} bytes per remembered delivery id; the dedupe cache holds at most "
        f"delivery_cache_size = 100,000 ids)"
    )


if __name__ == "__main__":
    main()
