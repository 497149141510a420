"""Intake speed: POST /webhook (verify, dedupe, classify, queue) against a bare 202 endpoint.

Starts one server process per variant on 127.0.0.1, drives it with wrk (Debian's `wrk`:
`apt-get install -y wrk`) using GitHub's official pull_request.labeled example (27 KB), signed,
and prints requests/s and latency percentiles, plus the ratio to the bare endpoint. Every request
carries a fresh delivery id, so dedupe never short-cuts the work, and every one names the same
PR. The machine is shared and noisy: the run alternates the variants, repeats them, and reports
medians.

Variants: `bare` (Starlette answering 202 after reading the body) and, by default, `webhook`
(the intake alone: no workers, no watch). With `--production`, `webhook` is replaced by the real
`preview-bot serve` (`python -m bot serve`: workers, watch, resync, probe) with GitHub and the
cluster unreachable (GITHUB_API_URL and a kubeconfig pointing at closed 127.0.0.1 ports) and a
real RSA App key, logging JSON lines to a file as in a container. Every variant runs with
PYTHONUNBUFFERED=1, as the image sets it. The production bot's retries and connection attempts
during the run are counted from its log.

    .venv/bin/python bench/intake.py [--production] [--seconds 5] [--rounds 3] [--connections 16]
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
from tests.rig.keys import app_key_pem  # noqa: E402

SECRET = "bench-secret"
REPOSITORY = "Codertocat/Hello-World"  # the official example's repository

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
    elif variant == "floor":
        # What any intake of this payload must do, and nothing else: read the body, check its
        # HMAC, decode the fields the work needs, write one JSON log line, answer JSON.
        import logging, msgspec
        from bot.logs import log_line, setup_logging
        from bot.webhooks import decode, signature_digest, signs
        setup_logging("INFO")
        log = logging.getLogger("bot.app")
        encode = msgspec.json.Encoder().encode
        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            headers = dict(scope["headers"])
            chunks, more = [], True
            while more:
                message = await receive()
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            body = b"".join(chunks)
            digest = signature_digest(headers[b"x-hub-signature-256"].decode())
            assert digest is not None and signs(b"bench-secret", body, digest)
            event = decode("pull_request", body)
            repo = event.repository.full_name
            # The cheapest JSON line the project has: log_line, as the bot's intake writes it.
            log_line(log, logging.INFO, f"{repo}#{event.number} queued", {
                "event": "pull_request", "outcome": "queued",
                "delivery": headers[b"x-github-delivery"].decode(), "repo": repo})
            answer = encode({"outcome": "queued", "message": f"{repo}#{event.number} queued"})
            await send({"type": "http.response.start", "status": 202, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(answer)).encode())]})
            await send({"type": "http.response.body", "body": answer})
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

# wrk script: a new X-GitHub-Delivery per request. Each wrk thread has its own Lua state with
# the same unseeded math.random, so ids are made unique by the thread's number from setup(),
# not by random numbers (which repeated across threads: half the deliveries were duplicates).
LUA = textwrap.dedent(
    """
    local threads = 0
    function setup(thread)
      threads = threads + 1
      thread:set("thread_id", threads)
    end
    local counter = 0
    local body = io.open("{body}"):read("*a")
    request = function()
      counter = counter + 1
      local headers = {{}}
      headers["Content-Type"] = "application/json"
      headers["X-GitHub-Event"] = "pull_request"
      headers["X-GitHub-Delivery"] = "bench-" .. thread_id .. "-" .. counter
      headers["X-Hub-Signature-256"] = "{signature}"
      return wrk.format("POST", "/webhook", headers, body)
    end
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, server: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start (exit code {server.poll()})")


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process used so far (less noisy than throughput on a shared
    machine: other processes slow it down but do not add to it)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on: connections to it are refused at once."""
    return free_port()


def unreachable_kubeconfig(path: Path) -> Path:
    """A kubeconfig whose API server is a closed local port (the cluster is down)."""
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "down",
                        "cluster": {
                            "server": f"https://127.0.0.1:{closed_port()}",
                            "insecure-skip-tls-verify": True,
                        },
                    }
                ],
                "users": [{"name": "bot", "user": {"token": "unused"}}],
                "contexts": [{"name": "down", "context": {"cluster": "down", "user": "bot"}}],
                "current-context": "down",
            }
        )
    )
    return path


def command_for(variant: str, port: int, tmp: Path) -> tuple[list[str], dict[str, str]]:
    """The server process of `variant` and its environment."""
    # Every variant as the image runs the bot (Dockerfile): stdout unbuffered.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    if variant != "production":
        return [sys.executable, "-c", SERVER, variant, str(port)], env
    key_file = tmp / "app-key.pem"
    key_file.write_text(app_key_pem())
    env.update(
        {
            "GITHUB_APP_ID": "1",
            "GITHUB_PRIVATE_KEY_FILE": str(key_file),
            "GITHUB_WEBHOOK_SECRET": SECRET,
            "GITHUB_API_URL": f"http://127.0.0.1:{closed_port()}",
            "KUBECONFIG": str(unreachable_kubeconfig(tmp / "kubeconfig")),
            "PREVIEW_BOT_REPOSITORIES": REPOSITORY,
        }
    )
    command = [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return command, env


def log_counts(log: Path) -> dict[str, float]:
    """What the production bot did besides answering: sync retries and their messages."""
    retries = 0
    for line in log.read_text(errors="replace").splitlines():
        try:
            msg = json.loads(line).get("msg", "")
        except ValueError:
            continue
        if msg.startswith("retry "):
            retries += 1
    return {"retries": float(retries)}


def run(variant: str, script: Path, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    port = free_port()
    command, env = command_for(variant, port, tmp)
    log = tmp / f"{variant}.log"
    with log.open("w") as out:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    try:
        try:
            wait_port(port, server)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; its output:\n{log.read_text()[-3000:]}") from None
        time.sleep(args.warmup)  # the production bot's first resync and probe fail meanwhile
        rss_before = rss_mib(server.pid)
        cpu_before = cpu_seconds(server.pid)
        done = subprocess.run(
            [
                "wrk",
                "-t2",
                f"-c{args.connections}",
                f"-d{args.seconds}s",
                "--latency",
                "-s",
                str(script),
                f"http://127.0.0.1:{port}/webhook",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        if server.poll() is not None:
            raise RuntimeError(f"{variant} server exited:\n{log.read_text()[-3000:]}")
        result = parse_wrk(done.stdout)
        requests = re.search(r"(\d+) requests in", done.stdout)
        result["requests"] = float(requests.group(1)) if requests else 0.0
        result["rss_start_mib"] = rss_before
        result["rss_end_mib"] = rss_mib(server.pid)
        cpu = cpu_seconds(server.pid) - cpu_before
        result["cpu_us"] = cpu / result["requests"] * 1e6 if result["requests"] else 0.0
    finally:
        server.terminate()
        server.wait(timeout=30)
    if variant == "production":
        result.update(log_counts(log))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--production",
        action="store_true",
        help="the real `preview-bot serve` (workers, watch; GitHub and cluster unreachable)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="add `floor`: a handler doing only what any intake must (HMAC, decode, a log line)",
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds between start and load")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk (Debian/Ubuntu), brew install wrk (macOS)")

    payload = official_example("pull_request", "labeled")
    payload["label"]["name"] = "preview"
    body = json.dumps(payload).encode()
    other = "production" if args.production else "webhook"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        body_file = tmp / "body.json"
        body_file.write_bytes(body)
        script = tmp / "post.lua"
        script.write_text(LUA.format(body=body_file, signature=sign(SECRET, body)))
        results: dict[str, list[dict[str, float]]] = {"bare": [], other: []}
        if args.floor:
            results["floor"] = []
        for _ in range(args.rounds):
            for variant in results:
                results[variant].append(run(variant, script, args, tmp))
    report(results, other, body, args)


def report(
    results: dict[str, list[dict[str, float]]],
    other: str,
    body: bytes,
    args: argparse.Namespace,
) -> None:
    print(
        f"body: official pull_request.labeled example, {len(body)} bytes, one PR, a new delivery "
        f"id each; {args.connections} connections, {args.rounds} rounds of {args.seconds}s, "
        f"medians; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    medians = {}
    for variant, runs in results.items():
        med = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in runs[0]}
        medians[variant] = med
        print(
            f"{variant:>10}: {med['rps']:8.0f} req/s  p50 {med.get('p50_ms', 0):6.2f} ms  "
            f"p99 {med.get('p99_ms', 0):6.2f} ms  non-2xx {med['errors']:.0f}  "
            f"CPU {med['cpu_us']:5.0f} us/request"
        )
    for variant in results:
        if variant == "bare":
            continue
        ratios = [
            o["rps"] / b["rps"] for o, b in zip(results[variant], results["bare"], strict=True)
        ]
        ratio = medians[variant]["rps"] / medians["bare"]["rps"]
        # Each round measures bare and the variant back to back: the median of those ratios is
        # the figure a machine whose speed drifts between rounds moves least.
        print(
            f"{variant} / bare throughput: {ratio:.2f}x; median of the rounds' ratios "
            f"{statistics.median(ratios):.2f}x (per round: {', '.join(f'{r:.2f}' for r in ratios)})"
        )
        # On a shared machine throughput depends on how much CPU the scheduler gives each
        # process; CPU time per request does not, so its ratio is the steadier figure.
        cpu_ratio = medians["bare"]["cpu_us"] / medians[variant]["cpu_us"]
        print(f"{variant} / bare CPU efficiency (bare CPU per request / its): {cpu_ratio:.2f}x")
    hook = medians[other]
    if other == "production":
        print(
            f"production sync retries logged during a run: {hook['retries']:.0f} "
            f"(deliveries for the PR coalesce into the pending retry)"
        )
    grown = hook["rss_end_mib"] - hook["rss_start_mib"]
    per = grown * 1024 * 1024 / hook["requests"] if hook["requests"] else 0.0
    print(
        f"{other} server memory: {hook['rss_start_mib']:.0f} MiB at start, "
        f"{hook['rss_end_mib']:.0f} MiB after {hook['requests']:.0f} deliveries "
        f"(~{per:.0f} bytes per remembered delivery id; the dedupe cache holds at most "
        f"delivery_cache_size = 100,000 ids)"
    )


if __name__ == "__main__":
    main()
