"""A real `preview-bot serve` under hostile uploads: memory holds, it keeps answering, and
nothing an unverified request says becomes a metric label.

The cluster is optional for the intake: KUBECONFIG names a file that does not exist, and GitHub
is a closed loopback port, so the process starts with both noted as unreachable in /readyz.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import socket
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.webhooks import delivery_headers
from tests.rig.artifacts import official_example
from tests.rig.keys import app_key_pem
from tests.rig.net import free_port, http, stop_process

SECRET = "serve-limits-secret"
PEM = app_key_pem()  # a real key: serve parses it at start
MIB = 1024 * 1024
UPLOADS = 20
UPLOAD_BYTES = 5 * MIB
CHUNK = 64 * 1024
ROUND_PAUSE = 0.02  # seconds between rounds of one chunk per upload: about 2 s for 5 MiB
RSS_GROWTH_LIMIT = 30 * MIB


@dataclass
class Server:
    base: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def rss(self) -> int:
        """Resident memory of the server process, in bytes (VmRSS)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS line")

    def get(self, path: str) -> tuple[int, str]:
        return http(self.base + path)


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "preview-bot"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bot"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """`preview-bot serve` on a loopback port, settings from the environment only."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREVIEW_BOT_", "GITHUB_")) and k != "KUBECONFIG"
    }
    env.update(
        GITHUB_APP_ID="1",
        GITHUB_PRIVATE_KEY=PEM,
        GITHUB_WEBHOOK_SECRET=SECRET,
        GITHUB_API_URL=f"http://127.0.0.1:{free_port()}",  # nothing listens: never the internet
        KUBECONFIG=str(tmp_path / "no-such-kubeconfig"),
        PREVIEW_BOT_REPOSITORIES="data-literate/dex",
        PREVIEW_BOT_LOG_LEVEL="INFO",
    )
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*_cli(), "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = Server(f"http://127.0.0.1:{port}", port, proc, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                if server.get("/healthz")[0] == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"preview-bot serve did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield server
    finally:
        stop_process(proc)


def _random_event(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase + "_", k=20))


def _open_upload(server: Server, event: str, signature: str | None) -> socket.socket:
    """A chunked POST /webhook whose headers are sent and whose body has not started."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.settimeout(1.0)  # a server that stops reading must not stall the test
    lines = [
        "POST /webhook HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        "Content-Type: application/json",
        f"X-GitHub-Event: {event}",
        f"X-GitHub-Delivery: slow-{event}",
        "Transfer-Encoding: chunked",
    ]
    if signature is not None:
        lines.append(f"X-Hub-Signature-256: {signature}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def _status_of(sock: socket.socket) -> int | None:
    """The response status, when the server sent one and the connection let us read it."""
    try:
        head = sock.recv(64)
    except OSError:
        return None
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def test_slow_hostile_uploads_do_not_grow_memory_and_leave_no_metric_series(
    server: Server,
) -> None:
    # Warm up the paths the uploads take (JSON responses, metrics) before the baseline.
    body = b'{"zen": "warm"}'
    status, _ = http(server.base + "/webhook", body, delivery_headers(SECRET, "ping", body))
    assert status == 200
    assert http(server.base + "/webhook", b"{}", {"Content-Type": "application/json"})[0] == 400
    log = server.log.read_text()
    assert "with uvloop and httptools" in log, log[-2000:]

    rng = random.Random(20)
    events = [_random_event(rng) for _ in range(UPLOADS)]
    baseline = server.rss()
    # Half send no signature (refused before the body), half a well-formed forged one, which
    # can only be checked once the body is in: those are the ones that cost memory.
    uploads = [
        _open_upload(server, event, None if i % 2 else "sha256=" + "0" * 64)
        for i, event in enumerate(events)
    ]
    chunk = f"{CHUNK:x}\r\n".encode() + b" " * CHUNK + b"\r\n"
    open_uploads = dict(enumerate(uploads))
    peak = baseline
    for _ in range(UPLOAD_BYTES // CHUNK):
        for i, sock in list(open_uploads.items()):
            try:
                sock.sendall(chunk)
            except OSError:  # refused and closed, or no longer read: stop sending
                del open_uploads[i]
        peak = max(peak, server.rss())
        if not open_uploads:
            break
        time.sleep(ROUND_PAUSE)
    for sock in open_uploads.values():
        with contextlib.suppress(OSError):
            sock.sendall(b"0\r\n\r\n")
    statuses = [_status_of(sock) for sock in uploads]
    for sock in uploads:
        sock.close()
    peak = max(peak, server.rss())

    growth = peak - baseline
    # A figure for whoever runs it with -s (speed and memory are measured, never timed here).
    print(f"\nRSS {baseline / MIB:.0f} MiB -> peak {peak / MIB:.1f} MiB; answers {statuses}")
    assert growth < RSS_GROWTH_LIMIT, (
        f"RSS grew {growth / MIB:.1f} MiB (from {baseline / MIB:.0f} MiB) under {UPLOADS} "
        f"slow {UPLOAD_BYTES // MIB} MiB uploads; answers: {statuses}"
    )
    assert not [s for s in statuses if s is not None and s < 400], statuses
    assert 500 not in statuses
    assert server.get("/healthz") == (200, "ok")

    # A signed-looking delivery whose client goes away halfway through its body, over a real
    # socket (the security table tries the same in-process): no traceback, still serving.
    body = b'{"zen": "gone"}' * 100
    sock = _open_upload(server, "pull_request", "sha256=" + "0" * 64)
    sock.sendall(f"{len(body):x}\r\n".encode() + body[: len(body) // 2])
    sock.close()
    assert server.get("/healthz") == (200, "ok")
    gone = 'event="unverified",outcome="disconnected"'
    deadline = time.monotonic() + 5  # the server learns of the close on its own schedule
    while gone not in (metrics := server.get("/metrics")[1]) and time.monotonic() < deadline:
        time.sleep(0.05)

    labels = set(re.findall(r'^preview_bot_deliveries_total\{event="([^"]*)"', metrics, re.M))
    assert labels <= {"unverified", "ping"}, labels
    assert not any(event in metrics for event in events)
    assert gone in metrics, metrics
    log = server.log.read_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]


def test_serve_writes_each_deliverys_line_as_json_through_its_short_cut(server: Server) -> None:
    # In `serve` the intake's line takes log_line's short cut (one JSON handler, nothing else
    # listening), which the in-process tests never do (pytest's capture handlers listen).
    body = json.dumps(official_example("pull_request", "labeled")).encode()
    for n in range(3):
        headers = delivery_headers(SECRET, "pull_request", body, f"serve-line-{n}")
        assert http(server.base + "/webhook", body, headers)[0] == 202
    stop_process(server.proc)  # the lines held in the last turn are written on the way out
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line]
    ours = [line for line in lines if str(line.get("delivery", "")).startswith("serve-line-")]
    assert [line["delivery"] for line in ours] == [f"serve-line-{n}" for n in range(3)]
    for line in ours:
        assert (line["logger"], line["level"], line["event"]) == ("bot.app", "info", "pull_request")
        assert line["outcome"] == "out_of_scope"  # the example's repository: not data-literate/dex
        assert line["repo"] == "Codertocat/Hello-World" and line["time"].endswith("+00:00")
