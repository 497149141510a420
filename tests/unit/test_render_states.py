"""`preview-bot render --state <s>`: every state of the comment shows, alone, as the PR gets it."""

from __future__ import annotations

import os

import pytest

from bot.__main__ import main
from bot.comment import STATE_TITLES, parse_comment_state
from bot.model import State

SHA = "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d"
ARGS = ["render", "--repo", "data-literate/DEX", "--pr", "42", "--sha", SHA]
URL = "https://dex-pr-42.preview.example.com"
# What each state's comment must say beyond its title (the example's own facts).
SAYS = {
    State.WAITING: "Waiting for `build` on `1a2b3c4d`.",
    State.QUEUED: "Queued: position 2, 10 of 10 previews in use.",
    State.DEPLOYING: "Argo CD is rolling out this commit.",
    State.READY: "⏱️ Ready in 2m 13s from the push.",
    State.FAILED: "Last error: Deployment dex-api: ImagePullBackOff",
    State.TEARDOWN_PENDING: "waits for Argo CD to prune",
    State.DESTROYED: "Torn down because the PR was merged.",
    State.NOT_DEPLOYED: "who cannot write to this repository",
}


@pytest.fixture(autouse=True)
def _no_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defaults only: a PREVIEW_BOT_* variable of the machine must not change the output."""
    for name in list(os.environ):
        if name.startswith(("PREVIEW_BOT_", "GITHUB_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PREVIEW_BOT_PREVIEW_HOST_TEMPLATE", "dex-pr-{number}.preview.example.com")


def comments(out: str) -> dict[str, str]:
    """The comment sections of render's output, by the state in their header."""
    sections = [s.split("\n", 1) for s in out.split("# ---- ")[1:]]
    return {head.removeprefix("PR comment, "): body for head, body in sections if "comment" in head}


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value.replace(" ", "-"))
def test_each_state_renders_alone(state: State, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*ARGS, "--state", state.value.replace(" ", "-")]) == 0
    shown = comments(capsys.readouterr().out)
    assert list(shown) == [state.value]
    body = shown[state.value]
    assert parse_comment_state(body)[0] == state.value  # the bot reads its own state back
    assert f"### {STATE_TITLES[state]}" in body
    assert SAYS[state] in body
    # A preview that runs (or still did) shows its link and commit; a destroyed one strikes it.
    running = state in (State.DEPLOYING, State.READY, State.FAILED, State.TEARDOWN_PENDING)
    assert (f"[Visit Preview]({URL})" in body) is running
    assert (f"~~{URL}~~" in body) is (state is State.DESTROYED)
    assert (f"/commit/{SHA})" in body) is (running or state is State.DESTROYED)


def test_all_shows_every_state_and_a_bad_state_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([*ARGS, "--state", "all"]) == 0
    assert set(comments(capsys.readouterr().out)) == {s.value for s in State}
    with pytest.raises(SystemExit) as exited:
        main([*ARGS, "--state", "done"])
    assert exited.value.code == 2
    assert "invalid choice: 'done'" in capsys.readouterr().err
