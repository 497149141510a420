"""`/preview` commands in PR comments: what each one does, and who may run it. Pure.

The intake finds the command lines (bot.webhooks) and the sync learns whether each author may
write to the repository; this module turns them into effects for the planner. A command is
acknowledged with a reaction on its comment: `eyes` when taken, `+1` when done, `confused` when
refused, and a refusal says why in the bot's comment.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from bot.model import Command, CommandSeen


class Verb(enum.Enum):
    """What a command asks for."""

    DEPLOY = "deploy"  # a bare `/preview`: as the label would, and adds it
    APPROVE = "approve"  # approve the current head of a fork PR
    REDEPLOY = "redeploy"  # re-apply the Application and ask Argo CD to sync now
    DESTROY = "destroy"  # tear down and remove the label
    STATUS = "status"  # refresh the comment now
    HELP = "help"  # show the commands
    KEEP = "keep"  # exempt the preview from the TTL


# What each command does, for the comment's collapsed help (in this order).
HELP_ROWS: tuple[tuple[str, str], ...] = (
    ("/preview", "Deploy a preview of this PR (adds the label)."),
    ("/preview approve", "Approve the current commit of a PR from a fork for deploying."),
    ("/preview redeploy", "Apply the preview again and ask Argo CD to sync now."),
    ("/preview destroy", "Tear the preview down and remove the label."),
    ("/preview keep", "Keep the preview past its time-to-live."),
    ("/preview status", "Refresh this comment now."),
    ("/preview help", "Show these commands."),
)


@dataclass(frozen=True)
class Outcome:
    """What one command comes to: its verb if accepted, else why it was refused."""

    command: Command
    verb: Verb | None
    refusal: str | None = None

    @property
    def accepted(self) -> bool:
        return self.verb is not None


def verb_of(words: tuple[str, ...]) -> Verb | None:
    """The verb of `/preview <words>`: a bare `/preview` deploys; anything unknown is None."""
    if not words:
        return Verb.DEPLOY
    try:
        return Verb(words[0])
    except ValueError:
        return None


def judge(seen: CommandSeen) -> Outcome:
    """Accept a command from a writer with a known verb; refuse anything else, saying why."""
    cmd = seen.command
    verb = verb_of(cmd.words)
    line = " ".join(("/preview", *cmd.words))
    if verb is None:
        return Outcome(cmd, None, f"`{line}` is not a command; `/preview help` lists them.")
    if verb is Verb.HELP:
        return Outcome(cmd, verb)  # anyone may ask what the commands are
    if not seen.writer:
        return Outcome(
            cmd,
            None,
            f"`{line}` from `@{cmd.author}` was not run: commands need write access to the "
            "repository.",
        )
    return Outcome(cmd, verb)


def judge_all(commands: tuple[CommandSeen, ...]) -> tuple[Outcome, ...]:
    return tuple(judge(seen) for seen in commands)


def verbs_of(outcomes: tuple[Outcome, ...]) -> frozenset[Verb]:
    """The verbs accepted in this sync."""
    return frozenset(o.verb for o in outcomes if o.verb is not None)


def last_writer(outcomes: tuple[Outcome, ...], wanted: frozenset[Verb]) -> str | None:
    """The author of the last accepted command among `wanted` (who approved, for the record)."""
    found = [o.command.author for o in outcomes if o.verb in wanted]
    return found[-1] if found else None
