"""app.yaml, the GitHub App manifest, asks for exactly what the code uses.

Events: the ones bot/webhooks.py's `classify` acts on (work, a head SHA, a resync), found by
feeding it GitHub's official example payload of every event. Permissions: the REST calls found
in bot/*.py's source (an AST walk over the gidgethub calls), each matched to GitHub's OpenAPI
description and to the permission GitHub documents for it.
"""

from __future__ import annotations

import ast
import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot import github as bot_github
from bot.webhooks import BadDelivery, Rules, classify, from_dict
from tests.deploy.tools import ROOT
from tests.rig.artifacts import openapi_path, webhook_examples

MANIFEST = ROOT / "app.yaml"
# The keys GitHub's App-manifest flow reads (docs: "Registering a GitHub App from a manifest").
MANIFEST_KEYS = {
    "name",
    "url",
    "hook_attributes",
    "redirect_url",
    "callback_urls",
    "setup_url",
    "description",
    "public",
    "default_events",
    "default_permissions",
    "request_oauth_on_install",
    "setup_on_update",
}
# What GitHub documents ("Permissions required for GitHub Apps") for each operation the bot
# calls: any one of the alternatives is enough. "app" means the App's own JWT, no permission.
DOCUMENTED: dict[str, set[str]] = {
    "apps/create-installation-access-token": {"app"},
    "pulls/get": {"pull_requests:read"},
    # Comments on a PR are issue comments: either permission works for them.
    "issues/list-comments": {"issues:read", "pull_requests:read"},
    "issues/create-comment": {"issues:write", "pull_requests:write"},
    "issues/update-comment": {"issues:write", "pull_requests:write"},
    "repos/get-content": {"contents:read"},
    "repos/create-or-update-file-contents": {"contents:write"},
    "repos/delete-file": {"contents:write"},
    "repos/list-deployments": {"deployments:read"},
    "repos/create-deployment": {"deployments:write"},
    "repos/list-deployment-statuses": {"deployments:read"},
    "repos/create-deployment-status": {"deployments:write"},
    "apps/get-authenticated": {"app"},
    "apps/list-installations": {"app"},
    # An installation token lists its own repositories; GitHub documents no permission beyond
    # the metadata every App has.
    "apps/list-repos-accessible-to-installation": {"metadata:read"},
    "pulls/list": {"pull_requests:read"},
    "repos/get-collaborator-permission-level": {"metadata:read"},
    "issues/list-events": {"issues:read", "pull_requests:read"},
    "issues/add-labels": {"issues:write", "pull_requests:write"},
    "issues/remove-label": {"issues:write", "pull_requests:write"},
    "reactions/create-for-issue-comment": {"issues:write", "pull_requests:write"},
    "checks/list-for-ref": {"checks:read"},
    "checks/create": {"checks:write"},
    "checks/update": {"checks:write"},
    "repos/get-combined-status-for-ref": {"statuses:read"},
    "git/get-tree": {"contents:read"},
    "git/get-ref": {"contents:read"},
    "git/get-commit": {"contents:read"},
    "git/create-tree": {"contents:write"},
    "git/create-commit": {"contents:write"},
    "git/update-ref": {"contents:write"},
}
# The permissions an App may hold to receive each webhook event (any one of them).
EVENT_PERMISSION = {
    "pull_request": {"pull_requests"},
    "issue_comment": {"issues", "pull_requests"},
    "check_run": {"checks"},
    "check_suite": {"checks"},
    "status": {"statuses"},
}
# gidgethub helpers that hide their route.
HELPER_ROUTES = {
    "get_installation_access_token": ("POST", "/app/installations/{installation_id}/access_tokens"),
}
# The adapter's conditional reads: get_cached(installation_id, route, url_vars, convert).
CACHED_READS = {"get_cached", "get_cached_pages"}
GH_METHODS = {
    "getitem": "GET",
    "getiter": "GET",
    "getstatus": "GET",
    "post": "POST",
    "put": "PUT",
    "patch": "PATCH",
    "delete": "DELETE",
}
LEVELS = {"read": 1, "write": 2}


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(MANIFEST.read_text())
    return data


def shape(route: str) -> str:
    """A route with its variables blanked: `/repos/{+repo}/pulls/{number}{?x}` and
    `/repos/{owner}/{repo}/pulls/{pull_number}` both become `/repos/{}/{}/pulls/{}`."""
    route = re.sub(r"\{\?[^}]*\}", "", route)
    route = route.replace("{+repo}", "{owner}/{repo}")
    return re.sub(r"\{[^}]*\}", "{}", route)


def routes_in_source(source: str) -> set[tuple[str, str]]:
    """(method, route shape) of every GitHub call written in `source`."""
    found: set[tuple[str, str]] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name = node.func.attr
        consts = [
            a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
        ]
        if name in HELPER_ROUTES:
            method, route = HELPER_ROUTES[name]
            found.add((method, shape(route)))
        elif name == "_call" and len(consts) >= 2:
            found.add((consts[0], shape(consts[1])))
        elif name in CACHED_READS and consts and consts[0].startswith("/"):
            found.add(("GET", shape(consts[0])))
        elif name in GH_METHODS and consts and consts[0].startswith("/"):
            found.add((GH_METHODS[name], shape(consts[0])))
    return found


def routes_in_code() -> set[tuple[str, str]]:
    """Every GitHub call written in bot/*.py."""
    found: set[tuple[str, str]] = set()
    for module in sorted((ROOT / "bot").glob("*.py")):
        found |= routes_in_source(module.read_text())
    return found


def test_route_finder_sees_the_calls_it_should() -> None:
    source = (
        "async def f():\n"
        '    await self._call(i, "PUT", "/repos/{+repo}/contents/{+path}", url_vars=v)\n'
        '    await gh.getiter("/repos/{+repo}/issues/{number}/comments{?per_page}", v)\n'
        "    await gh.getitem(url, url_vars)\n"  # the generic dispatch: no route of its own
        "    await apps.get_installation_access_token(gh, installation_id=1)\n"
        '    await gh.get_cached(self.installation_id, "/repos/{+repo}/pulls/{n}", v, f)\n'
        '    await gh.get_cached_pages(i, "/installation/repositories{?per_page}", v, f)\n'
    )
    assert routes_in_source(source) == {
        ("PUT", "/repos/{}/{}/contents/{}"),
        ("GET", "/repos/{}/{}/issues/{}/comments"),
        ("POST", "/app/installations/{}/access_tokens"),
        ("GET", "/repos/{}/{}/pulls/{}"),
        ("GET", "/installation/repositories"),
    }


def test_routes_table_matches_the_code() -> None:
    """bot/github.py's ROUTES table, which carries the permissions, lists every call made."""
    table = {(method, shape(route)) for method, route, _ in bot_github.ROUTES}
    code = routes_in_code()
    assert code, "no GitHub calls found in bot/*.py: has the adapter's style changed?"
    assert code - table == set(), "calls missing from bot.github.ROUTES"
    assert table - code == set(), "ROUTES lists calls the code no longer makes"


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(Path(openapi_path()).read_text())
    return spec


def test_each_call_is_a_documented_app_operation_with_the_documented_permission(
    openapi: dict[str, Any],
) -> None:
    by_shape = {
        (method.upper(), shape(path)): op
        for path, item in openapi["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict) and "operationId" in op
    }
    for method, route, permission in bot_github.ROUTES:
        op = by_shape.get((method, shape(route)))
        assert op is not None, f"{method} {route} is not in GitHub's REST description"
        assert op["x-github"]["enabledForGitHubApps"], f"{method} {route}: not for Apps"
        documented = DOCUMENTED.get(op["operationId"])
        assert documented is not None, f"add {op['operationId']} to DOCUMENTED"
        assert permission in documented, (
            f"{method} {route} ({op['operationId']}) needs one of {sorted(documented)}, "
            f"ROUTES says {permission}"
        )


def needed_permissions() -> dict[str, str]:
    """The highest level each permission is needed at, over every call; metadata is implied."""
    needed = {"metadata": "read"}
    for _, _, permission in bot_github.ROUTES:
        if permission == "app":
            continue
        name, level = permission.split(":")
        if LEVELS[level] > LEVELS.get(needed.get(name, ""), 0):
            needed[name] = level
    return needed


def test_manifest_permissions_are_exactly_what_the_calls_need(
    manifest: dict[str, Any], openapi: dict[str, Any]
) -> None:
    granted = manifest["default_permissions"]
    assert granted == needed_permissions()
    known = openapi["components"]["schemas"]["app-permissions"]["properties"]
    for name, level in granted.items():
        assert name in known and level in known[name]["enum"], f"{name}: {level}"


# An App receives these without subscribing, and GitHub's manifest flow refuses them in
# default_events: classify handles them (resync requests), the manifest must not list them.
ALWAYS_DELIVERED = {"installation", "installation_repositories"}
PR_LINK = {"url": "https://api.github.com/repos/o/r/pulls/1"}


def relevant(event: str, example: dict[str, Any], trigger: str) -> tuple[dict[str, Any], Rules]:
    """An official example made about this bot, as a real delivery to it would be: sent to the
    App (installation.id), about its labels, checks and commands."""
    payload = copy.deepcopy(example)
    payload.setdefault("installation", {"id": 1})
    if isinstance(payload.get("label"), dict):
        payload["label"]["name"] = trigger  # the trigger label's own changes
    if event == "issue_comment":  # a /preview command on a PR (the examples are on issues)
        payload["issue"]["pull_request"] = PR_LINK
        payload["comment"]["body"] = "/preview"
    # Required checks configured, among them this check run or status (suites have no name).
    checks = {"build", payload.get("context"), payload.get("check_run", {}).get("name")}
    required = frozenset(name for name in checks if isinstance(name, str))
    return payload, Rules(trigger, required_checks=required)


def handled_events(trigger: str = "preview") -> set[str]:
    """Events for which some official example payload makes `classify` act: queue work, hand
    on a head SHA or ask for a resync."""
    handled = set()
    for event, examples in webhook_examples().items():
        for example in examples:
            payload, rules = relevant(event, example, trigger)
            try:
                found = classify(event, from_dict(event, payload), rules)
            except BadDelivery:
                continue
            if found.works or found.sha_hint or found.resync:
                handled.add(event)
    return handled


def test_manifest_subscribes_to_exactly_the_handled_events(manifest: dict[str, Any]) -> None:
    events = set(manifest["default_events"])
    handled = handled_events()
    assert events == handled - ALWAYS_DELIVERED
    assert handled >= ALWAYS_DELIVERED


def test_each_subscribed_event_has_the_permission_it_needs(manifest: dict[str, Any]) -> None:
    granted = manifest["default_permissions"]
    for event in manifest["default_events"]:
        assert EVENT_PERMISSION[event] & set(granted), event


def test_manifest_shape(manifest: dict[str, Any]) -> None:
    assert set(manifest) <= MANIFEST_KEYS
    assert manifest["public"] is False
    assert manifest["hook_attributes"]["active"] is True
    assert manifest["hook_attributes"]["url"].startswith("https://")
    assert manifest["hook_attributes"]["url"].endswith("/webhook")
    assert manifest["redirect_url"].startswith("https://")
    assert 0 < len(manifest["name"]) <= 34  # GitHub's limit on App names


def test_commands_are_covered_issue_comment_and_reactions(manifest: dict[str, Any]) -> None:
    """`/preview` commands arrive as issue_comment and are answered with reactions: the derived
    checks above would pass just as well if both went missing from code and manifest together,
    so say it outright."""
    assert "issue_comment" in handled_events()
    assert "issue_comment" in manifest["default_events"]
    # A comment that holds no command is not work: the subscription is for the commands.
    (example, *_) = webhook_examples()["issue_comment"]
    payload, rules = relevant("issue_comment", example, "preview")
    payload["comment"]["body"] = "Looks good"
    assert not classify("issue_comment", from_dict("issue_comment", payload), rules).works
    # Reactions on an issue comment (eyes, +1, confused) need pull_requests: write, granted.
    (reactions,) = [p for m, r, p in bot_github.ROUTES if m == "POST" and r.endswith("/reactions")]
    name, level = reactions.split(":")
    assert manifest["default_permissions"][name] == level == "write"
