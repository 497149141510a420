"""Whether a preview is ready, as Argo CD tells it: the truth about one Application. Pure.

Ready means Argo CD reports Synced and Healthy *for the revision the bot pinned* (the commit
that wrote this head's overlay), with the head SHA the bot last applied. Degraded, a failed or
errored sync operation, or a resource Missing (or Unknown) once the revision synced: failed, with
Argo CD's own message. No verdict `ready_timeout_seconds` after the deploy: failed, timed out,
with what Argo CD last said. A status about an older head never speaks for the newest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot.comment import escape
from bot.config import Settings
from bot.model import ObservedApp, Record, State, known_value


@dataclass(frozen=True)
class Health:
    """Argo CD's verdict on the preview of one head."""

    state: State  # DEPLOYING, READY or FAILED
    error: str = ""  # Argo CD's message (escaped), when it failed or timed out
    timeout_in: float | None = None  # seconds until the ready timeout, while deploying


def health_of(
    app: ObservedApp | None, record: Record, head: str, settings: Settings, now: datetime
) -> Health:
    if app is None or app.head_sha != head:
        return Health(State.DEPLOYING)
    verdict = _verdict(app, record)
    if verdict is not None:
        return verdict
    deployed = known_value(record.deployed_at)
    if deployed is None:
        return Health(State.DEPLOYING)
    left = deployed + settings.ready_timeout_seconds - now.timestamp()
    if left > 0:
        return Health(State.DEPLOYING, timeout_in=left)
    st = app.status
    said = [
        f"{what} {value}"
        for what, value in (
            ("sync", st.sync),
            ("health", st.health),
            ("operation", st.operation_phase),
        )
        if value
    ]
    message = f"; {escape(st.message)}" if st.message else ""
    return Health(
        State.FAILED,
        f"timed out after {settings.ready_timeout_seconds}s; Argo CD last said: "
        f"{', '.join(said) or 'nothing'}{message}",
    )


def _verdict(app: ObservedApp, record: Record) -> Health | None:
    """Ready or failed, when Argo CD has said so about the pinned revision; else None."""
    st = app.status
    pinned = known_value(record.overlay_commit)
    if pinned is not None and st.revision != pinned:
        return None  # a status about another revision (an older overlay) says nothing
    said = escape(st.message or "")
    if st.operation_phase in ("Failed", "Error"):
        return Health(State.FAILED, said or f"the sync operation ended in {st.operation_phase}")
    if st.health == "Degraded":
        bad = "Argo CD reports the preview degraded"
    elif st.sync == "Synced" and st.health in ("Missing", "Unknown"):
        bad = f"Argo CD reports its health {st.health}"
    else:
        bad = ""
    if bad:
        # The message of a sync that succeeded (or still runs) explains no bad health: only
        # the health's own message is a reason worth quoting.
        running = st.operation_phase in ("Succeeded", "Running", "Terminating")
        return Health(State.FAILED, f"{bad}: {said}" if said and not running else bad)
    if st.sync == "Synced" and st.health == "Healthy":
        return Health(State.READY)
    return None
