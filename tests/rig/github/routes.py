"""REST endpoints of the GitHub fake: one function per operation, keyed by GitHub's path."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from multidict import MultiMapping

from tests.rig.github.gitstore import SHA_RE, TreeEntry
from tests.rig.github.shapes import b64_lines, iso, node_id
from tests.rig.github.state import (
    REACTIONS,
    CheckRun,
    Comment,
    CommitStatus,
    Deployment,
    Installation,
    Pull,
    RateBucket,
    Repo,
    Token,
)

if TYPE_CHECKING:
    from tests.rig.github.server import FakeGitHub

JSON = dict[str, Any]


class GitHubError(Exception):
    """An error answer in GitHub's shape: {"message", "documentation_url", "status", "errors"?}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        errors: list[Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.headers = headers or {}


def not_found() -> GitHubError:
    return GitHubError(404, "Not Found")


@dataclass
class Reply:
    """What a handler answers; the server adds GitHub's headers, ETag and pagination links."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json; charset=utf-8"
    raw: bytes | None = None  # a non-JSON body (raw media types)


@dataclass
class Call:
    """One request, as the handlers see it."""

    fake: FakeGitHub
    method: str
    route: str
    path: str
    params: dict[str, str]
    query: MultiMapping[str]
    headers: dict[str, str]
    body: bytes
    installation: Installation | None = None
    token: Token | None = None
    repo_: Repo | None = None
    bucket: RateBucket | None = None
    raw_path: str = ""
    rate_limited: bool = False
    _json: Any = None
    injected: str | None = None  # the kind of fault that answered (see state.Fault)

    @property
    def repo(self) -> Repo:
        if self.repo_ is None:
            raise not_found()
        return self.repo_

    def json(self) -> Any:
        if self._json is None:
            if not self.body.strip():
                self._json = {}
            else:
                try:
                    self._json = json.loads(self.body)
                except ValueError:
                    raise GitHubError(400, "Problems parsing JSON") from None
        return self._json

    def data(self) -> JSON:
        value = self.json()
        if not isinstance(value, dict):
            raise GitHubError(400, "Problems parsing JSON")
        return value

    def int_param(self, name: str) -> int:
        try:
            return int(self.params[name])
        except ValueError:
            raise not_found() from None

    def page(self, items: list[Any], *, key: str | None = None, extra: JSON | None = None) -> Reply:
        """One page of `items` (per_page/page) with GitHub's Link header."""
        return self.fake.paginate(self, items, key=key, extra=extra)


Handler = Callable[[Call], Reply]


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    handler: Handler
    auth: str  # "jwt" (the App itself) or "installation"
    permission: tuple[str, ...]  # installation permissions that allow it (any of them)
    regex: re.Pattern[str]

    @property
    def token_request(self) -> bool:
        return self.template.endswith("/access_tokens")


# Parameters that may contain `/` (GitHub's `x-multi-segment`, plus refs inside commits/...).
_MULTI_SEGMENT = {"path", "ref", "tree_sha"}
ROUTES: list[Route] = []


def _compile(template: str) -> re.Pattern[str]:
    pattern = ""
    for literal, name in re.findall(r"([^{]*)(?:\{(\w+)\})?", template):
        pattern += re.escape(literal)
        if name:
            pattern += f"(?P<{name}>.+)" if name in _MULTI_SEGMENT else f"(?P<{name}>[^/]+)"
    return re.compile(f"^{pattern}$")


def route(
    method: str, template: str, *, auth: str = "installation", permission: tuple[str, ...] = ()
) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        ROUTES.append(Route(method, template, fn, auth, permission, _compile(template)))
        return fn

    return register


def match(method: str, path: str) -> tuple[Route, dict[str, str]] | bool | None:
    """(route, params) for a request; True when the path exists with another method."""
    path_exists = False
    # Fewer parameters first: literal segments beat templates (as in GitHub's router).
    for r in sorted(ROUTES, key=lambda r: r.template.count("{")):
        m = r.regex.match(path)
        if m is None:
            continue
        if r.method == method:
            return r, m.groupdict()
        path_exists = True
    return True if path_exists else None


R = "/repos/{owner}/{repo}"
CONTENTS = ("contents",)
PULLS = ("pull_requests",)
ISSUES = ("issues", "pull_requests")
META = ("metadata",)


# ---------------------------------------------------------------------------------------------
# The App itself (JWT)
# ---------------------------------------------------------------------------------------------
@route("GET", "/app", auth="jwt")
def get_app(call: Call) -> Reply:
    return Reply(body=call.fake.shapes.integration())


@route("GET", "/app/installations", auth="jwt")
def list_installations(call: Call) -> Reply:
    items = [call.fake.shapes.installation(i) for i in call.fake.installations.values()]
    return call.page(items)


@route("POST", "/app/installations/{installation_id}/access_tokens", auth="jwt")
def create_token(call: Call) -> Reply:
    fake = call.fake
    inst = fake.installations.get(call.int_param("installation_id"))
    if inst is None:
        raise not_found()
    if inst.suspended:
        raise GitHubError(403, "This installation has been suspended")
    data = call.data()
    permissions = dict(inst.permissions)
    if "permissions" in data:
        levels = {"read": 1, "write": 2, "admin": 3}
        asked: dict[str, str] = data["permissions"]
        for name, level in asked.items():
            if levels.get(level, 0) > levels.get(inst.permissions.get(name, ""), 0):
                raise GitHubError(
                    422, "The permissions requested are not granted to this installation."
                )
        permissions = dict(asked)
    repos: frozenset[str] | None = None
    names = data.get("repositories")
    if names:
        full = {f"{inst.account.login}/{n}".lower() for n in names}
        if not all(inst.covers(n) and n in fake.repos for n in full):
            raise GitHubError(
                422,
                "There is at least one repository that does not exist or is "
                "not accessible to the parent installation.",
            )
        repos = frozenset(full)
    token = fake.issue_token(inst, permissions, repos)
    body: JSON = {
        "token": token.token,
        "expires_at": fake.iso_epoch(token.expires_at),
        "permissions": permissions,
        "repository_selection": "selected" if repos else inst.repository_selection,
    }
    if repos:
        body["repositories"] = [fake.shapes.repository(fake.repos[n]) for n in sorted(repos)]
    return Reply(201, body)


@route("GET", R + "/installation", auth="jwt")
def get_repo_installation(call: Call) -> Reply:
    for inst in call.fake.installations.values():
        if inst.covers(call.repo.full_name):
            return Reply(body=call.fake.shapes.installation(inst))
    raise not_found()


@route("GET", "/installation/repositories", permission=META)
def installation_repositories(call: Call) -> Reply:
    """The repositories the token's installation covers (narrowed tokens: theirs only)."""
    fake = call.fake
    assert call.installation is not None and call.token is not None
    narrowed = call.token.repositories
    repos = [
        r
        for r in fake.installation_repos(call.installation)
        if narrowed is None or r.full_name.lower() in narrowed
    ]
    selection = "selected" if narrowed is not None else call.installation.repository_selection
    return call.page(
        [fake.shapes.repository(r) for r in repos],
        key="repositories",
        extra={"total_count": len(repos), "repository_selection": selection},
    )


# ---------------------------------------------------------------------------------------------
# Repository and contents
# ---------------------------------------------------------------------------------------------
@route("GET", R, permission=META)
def get_repo(call: Call) -> Reply:
    return Reply(body=call.fake.shapes.repository(call.repo, full=True))


def _want_raw(call: Call) -> bool:
    return ".raw" in call.headers.get("accept", "")


@route("GET", R + "/contents/{path}", permission=CONTENTS)
def get_content(call: Call) -> Reply:
    fake, repo = call.fake, call.repo
    ref = call.query.get("ref") or repo.default_branch
    commit = fake.resolve_commit(repo, ref)
    if commit is None:
        raise GitHubError(404, f"No commit found for the ref {ref}")
    path = call.params["path"].strip("/")
    store = repo.store
    entry = store.lookup(store.read_commit(commit).tree, path)
    if entry is None:
        raise not_found()
    shapes = fake.shapes
    if entry.type == "tree":
        listing = [
            shapes.content_entry(
                repo, ref, f"{path}/{e.path}".strip("/"), _content_kind(e), e.sha, e.size or 0
            )
            for e in store.read_tree(entry.sha)
        ]
        if "object" in call.headers.get("accept", ""):
            body = shapes.content_entry(repo, ref, path, "dir", entry.sha, 0)
            body["entries"] = listing
            return Reply(body=body, content_type="application/vnd.github.object; charset=utf-8")
        return Reply(body=listing)
    data = store.read_blob(entry.sha) if entry.type == "blob" else b""
    if _want_raw(call):
        return Reply(raw=data, content_type="application/vnd.github.raw; charset=utf-8")
    body = shapes.content_entry(repo, ref, path, _content_kind(entry), entry.sha, len(data))
    if entry.mode == "120000":
        body["target"] = data.decode()
    else:
        body["content"] = b64_lines(data)
        body["encoding"] = "base64"
    return Reply(body=body)


def _content_kind(entry: TreeEntry) -> str:
    if entry.type == "tree":
        return "dir"
    if entry.type == "commit":
        return "submodule"
    return "symlink" if entry.mode == "120000" else "file"


def _person_from(call: Call, data: JSON, key: str) -> Any:
    given = data.get(key)
    if isinstance(given, dict) and given.get("name") and given.get("email"):
        return call.fake.person(given["name"], given["email"], given.get("date"))
    return None


def _file_commit(
    call: Call, branch: str, commit: str, path: str, blob: str | None, size: int
) -> JSON:
    fake, repo = call.fake, call.repo
    c = repo.store.read_commit(commit)
    git = fake.shapes.git_commit(repo, c)
    content = (
        fake.shapes.content_entry(repo, branch, path, "file", blob, size)
        if blob is not None
        else None
    )
    return {"content": content, "commit": git}


@route("PUT", R + "/contents/{path}", permission=CONTENTS)
def put_content(call: Call) -> Reply:
    fake, repo = call.fake, call.repo
    data = call.data()
    path = call.params["path"].strip("/")
    branch = data.get("branch") or repo.default_branch
    head = repo.store.refs.get(f"refs/heads/{branch}")
    if head is None:
        raise GitHubError(404, f"Branch {branch} not found")
    try:
        content = base64.b64decode(data.get("content", ""), validate=True)
    except (binascii.Error, ValueError):
        raise GitHubError(422, "content is not valid Base64") from None
    existing = repo.store.lookup(repo.store.read_commit(head).tree, path)
    if existing is not None and existing.type == "tree":
        raise GitHubError(422, f"{path} is a directory")
    sha = data.get("sha")
    if existing is not None and not sha:
        raise GitHubError(422, 'Invalid request.\n\n"sha" wasn\'t supplied.')
    if sha and existing is not None and existing.sha != sha:
        # What GitHub says when the file moved on since the client read it. (A `sha` for a
        # path that does not exist is ignored: GitHub creates the file, 201.)
        raise GitHubError(409, f"{path} does not match {sha}")
    author = _person_from(call, data, "author")
    committer = _person_from(call, data, "committer")
    commit, blob = fake.commit_change(
        repo,
        branch,
        {path: content},
        data.get("message", ""),
        author=author,
        committer=committer,
        parent=head,
    )
    status = 200 if existing is not None else 201
    return Reply(status, _file_commit(call, branch, commit, path, blob[path], len(content)))


@route("DELETE", R + "/contents/{path}", permission=CONTENTS)
def delete_content(call: Call) -> Reply:
    fake, repo = call.fake, call.repo
    data = call.data()
    path = call.params["path"].strip("/")
    branch = data.get("branch") or repo.default_branch
    head = repo.store.refs.get(f"refs/heads/{branch}")
    if head is None:
        raise GitHubError(404, f"Branch {branch} not found")
    existing = repo.store.lookup(repo.store.read_commit(head).tree, path)
    if existing is None or existing.type != "blob":
        raise not_found()
    sha = data.get("sha")
    if not sha:
        raise GitHubError(422, 'Invalid request.\n\n"sha" wasn\'t supplied.')
    if existing.sha != sha:
        raise GitHubError(409, f"{path} does not match {sha}")
    commit, _ = fake.commit_change(
        repo,
        branch,
        {path: None},
        data.get("message", ""),
        author=_person_from(call, data, "author"),
        committer=_person_from(call, data, "committer"),
        parent=head,
    )
    return Reply(200, _file_commit(call, branch, commit, path, None, 0))


# ---------------------------------------------------------------------------------------------
# Git data
# ---------------------------------------------------------------------------------------------
def _full_ref(ref: str) -> str:
    return ref if ref.startswith("refs/") else f"refs/{ref}"


def _ref_reply(call: Call, ref: str, status: int = 200) -> Reply:
    repo = call.repo
    sha = repo.store.refs[ref]
    kind = repo.store.object_type(sha) or "commit"
    return Reply(status, call.fake.shapes.git_ref(repo, ref, sha, kind))


@route("GET", R + "/git/ref/{ref}", permission=CONTENTS)
def get_ref(call: Call) -> Reply:
    ref = _full_ref(call.params["ref"])
    if ref not in call.repo.store.refs:
        raise not_found()
    return _ref_reply(call, ref)


@route("GET", R + "/git/matching-refs/{ref}", permission=CONTENTS)
def matching_refs(call: Call) -> Reply:
    repo = call.repo
    prefix = _full_ref(call.params["ref"])
    refs = sorted(
        r for r in repo.store.refs if r.startswith(prefix) and not r.startswith("refs/pull/")
    )
    shapes = call.fake.shapes
    return Reply(
        body=[
            shapes.git_ref(
                repo, r, repo.store.refs[r], repo.store.object_type(repo.store.refs[r]) or "commit"
            )
            for r in refs
        ]
    )


@route("POST", R + "/git/refs", permission=CONTENTS)
def create_ref(call: Call) -> Reply:
    fake, repo = call.fake, call.repo
    data = call.data()
    ref, sha = data.get("ref", ""), data.get("sha", "")
    if not ref.startswith("refs/") or ref.count("/") < 2:
        raise GitHubError(
            422, "Reference name must start with 'refs/' and have at least two slashes."
        )
    if ref in repo.store.refs:
        raise GitHubError(422, "Reference already exists")
    if repo.store.object_type(sha) is None:
        raise GitHubError(422, "Object does not exist")
    fake.move_ref(repo, ref, sha)
    reply = _ref_reply(call, ref, 201)
    reply.headers["Location"] = reply.body["url"]
    return reply


@route("PATCH", R + "/git/refs/{ref}", permission=CONTENTS)
def update_ref(call: Call) -> Reply:
    fake, repo = call.fake, call.repo
    data = call.data()
    ref = _full_ref(call.params["ref"])
    current = repo.store.refs.get(ref)
    if current is None:
        raise GitHubError(422, "Reference does not exist")
    sha = data.get("sha", "")
    if repo.store.object_type(sha) != "commit":
        raise GitHubError(422, "Object does not exist")
    if not data.get("force") and sha != current and not repo.store.is_ancestor(current, sha):
        raise GitHubError(422, "Update is not a fast forward")
    fake.move_ref(repo, ref, sha)
    return _ref_reply(call, ref)


@route("DELETE", R + "/git/refs/{ref}", permission=CONTENTS)
def delete_ref(call: Call) -> Reply:
    fake, repo = call.fake, call.repo
    ref = _full_ref(call.params["ref"])
    if ref not in repo.store.refs:
        raise GitHubError(422, "Reference does not exist")
    fake.move_ref(repo, ref, None)
    return Reply(204)


@route("POST", R + "/git/blobs", permission=CONTENTS)
def create_blob(call: Call) -> Reply:
    repo = call.repo
    data = call.data()
    encoding = data.get("encoding", "utf-8")
    text = data.get("content", "")
    if encoding == "base64":
        try:
            raw = base64.b64decode(text)
        except (binascii.Error, ValueError):
            raise GitHubError(422, "Invalid Base64 content") from None
    elif encoding in ("utf-8", "utf8"):
        raw = text.encode()
    else:
        raise GitHubError(422, f"encoding must be utf-8 or base64, not {encoding}")
    sha = repo.store.write_blob(raw)
    url = f"{call.fake.shapes.repo_url(repo)}/git/blobs/{sha}"
    return Reply(201, {"url": url, "sha": sha}, headers={"Location": url})


@route("GET", R + "/git/blobs/{file_sha}", permission=CONTENTS)
def get_blob(call: Call) -> Reply:
    repo = call.repo
    sha = call.params["file_sha"]
    if repo.store.object_type(sha) != "blob":
        raise not_found()
    raw = repo.store.read_blob(sha)
    shapes = call.fake.shapes
    return Reply(
        body={
            "sha": sha,
            "node_id": node_id("Blob", f"{repo.id}:{sha}"),
            "size": len(raw),
            "url": f"{shapes.repo_url(repo)}/git/blobs/{sha}",
            "content": b64_lines(raw),
            "encoding": "base64",
        }
    )


def _tree_body(call: Call, sha: str, recursive: bool) -> JSON:
    repo = call.repo
    store = repo.store
    base = call.fake.shapes.repo_url(repo)
    entries = store.read_tree_recursive(sha) if recursive else list(store.read_tree(sha))
    items = []
    for e in entries:
        item: JSON = {"path": e.path, "mode": e.mode, "type": e.type, "sha": e.sha}
        if e.type == "blob":
            item["size"] = e.size or 0
            item["url"] = f"{base}/git/blobs/{e.sha}"
        elif e.type == "tree":
            item["url"] = f"{base}/git/trees/{e.sha}"
        items.append(item)
    return {"sha": sha, "url": f"{base}/git/trees/{sha}", "tree": items, "truncated": False}


@route("GET", R + "/git/trees/{tree_sha}", permission=CONTENTS)
def get_tree(call: Call) -> Reply:
    fake, repo = call.fake, call.repo
    name = call.params["tree_sha"]
    kind = repo.store.object_type(name)
    # GitHub also takes `<rev>:<path>` (a directory at a branch, tag or commit); git ref
    # names cannot contain `:`.
    rev, colon, subpath = name.partition(":")
    if kind == "tree":
        sha = name
    elif colon:
        commit = fake.resolve_commit(repo, rev)
        if commit is None:
            raise not_found()
        sha = repo.store.read_commit(commit).tree
        if subpath.strip("/"):
            entry = repo.store.lookup(sha, subpath.strip("/"))
            if entry is None or entry.type != "tree":
                raise not_found()
            sha = entry.sha
    else:
        commit = fake.resolve_commit(repo, name)
        if commit is None:
            raise not_found()
        sha = repo.store.read_commit(commit).tree
    # GitHub recurses for *any* value of `recursive`, even "0" and "false".
    return Reply(body=_tree_body(call, sha, "recursive" in call.query))


_MODES = {
    "100644": "blob",
    "100755": "blob",
    "120000": "blob",
    "040000": "tree",
    "160000": "commit",
}


@route("POST", R + "/git/trees", permission=CONTENTS)
def create_tree(call: Call) -> Reply:
    repo = call.repo
    store = repo.store
    data = call.data()
    base = data.get("base_tree")
    if base is not None and store.object_type(base) != "tree":
        raise GitHubError(422, "base_tree is not a valid tree oid")
    changes: dict[str, TreeEntry | None] = {}
    for i, item in enumerate(data.get("tree", [])):
        path = item.get("path", "")
        mode = item.get("mode", "100644")
        kind = item.get("type") or _MODES.get(mode, "blob")
        if _MODES.get(mode) != kind:
            raise GitHubError(422, f"tree.{i}.mode {mode} does not match type {kind}")
        if not path or path.startswith("/") or "//" in path or path.endswith("/"):
            raise GitHubError(422, f"tree.path contains a malformed path component: {path!r}")
        has_sha, has_content = "sha" in item, "content" in item
        if has_sha and has_content:
            raise GitHubError(
                422,
                "Must supply either tree.sha or tree.content. Request will "
                "be rejected if both are present.",
            )
        if has_content:
            changes[path] = TreeEntry(
                mode, "blob", store.write_blob(item["content"].encode()), path
            )
        elif item.get("sha") is None:
            if base is None:
                raise GitHubError(422, f"tree.{i}.sha: null is only allowed with base_tree")
            changes[path] = None
        else:
            sha = item["sha"]
            actual = store.object_type(sha)
            if kind not in ("commit", actual):
                raise GitHubError(422, f"tree.sha {sha} is not a valid {kind}")
            changes[path] = TreeEntry(mode, kind, sha, path)
    sha = store.edit_tree(base, changes)
    url = f"{call.fake.shapes.repo_url(repo)}/git/trees/{sha}"
    reply = Reply(201, _tree_body(call, sha, False))
    reply.headers["Location"] = url
    return reply


@route("GET", R + "/git/commits/{commit_sha}", permission=CONTENTS)
def get_commit(call: Call) -> Reply:
    repo = call.repo
    sha = call.params["commit_sha"]
    if repo.store.object_type(sha) != "commit":
        raise not_found()
    return Reply(body=call.fake.shapes.git_commit(repo, repo.store.read_commit(sha)))


@route("POST", R + "/git/commits", permission=CONTENTS)
def create_commit(call: Call) -> Reply:
    fake, repo = call.fake, call.repo
    store = repo.store
    data = call.data()
    tree = data.get("tree", "")
    if store.object_type(tree) != "tree":
        raise GitHubError(422, "Tree SHA does not exist")
    parents = data.get("parents", [])
    for parent in parents:
        if store.object_type(parent) != "commit":
            raise GitHubError(422, "Parent SHA does not exist or is not a commit object")
    author = _person_from(call, data, "author") or fake.actor_person(call)
    committer = _person_from(call, data, "committer") or author
    sha = store.commit_tree(tree, parents, data.get("message", ""), author, committer)
    body = fake.shapes.git_commit(repo, store.read_commit(sha))
    return Reply(201, body, headers={"Location": body["url"]})


# ---------------------------------------------------------------------------------------------
# Pull requests
# ---------------------------------------------------------------------------------------------
def _pull(call: Call) -> Pull:
    pr = call.repo.pulls.get(call.int_param("pull_number"))
    if pr is None:
        raise not_found()
    return pr


@route("GET", R + "/pulls/{pull_number}", permission=PULLS)
def get_pull(call: Call) -> Reply:
    return Reply(body=call.fake.shapes.pull(_pull(call)))


@route("GET", R + "/pulls", permission=PULLS)
def list_pulls(call: Call) -> Reply:
    q = call.query
    state = q.get("state", "open")
    pulls = [p for p in call.repo.pulls.values() if state in ("all", p.state)]
    if "head" in q:
        owner, _, ref = q["head"].partition(":")
        pulls = [
            p
            for p in pulls
            if p.head_repo.owner.login.lower() == owner.lower() and (not ref or p.head_ref == ref)
        ]
    if "base" in q:
        pulls = [p for p in pulls if p.base_ref == q["base"]]
    sort = q.get("sort", "created")
    key: Callable[[Pull], Any] = (
        (lambda p: p.updated_at) if sort == "updated" else (lambda p: (p.created_at, p.number))
    )
    direction = q.get("direction", "desc")
    pulls.sort(key=key, reverse=direction == "desc")
    return call.page([call.fake.shapes.pull(p, simple=True) for p in pulls])


# ---------------------------------------------------------------------------------------------
# Issues: comments and labels (a pull request is an issue)
# ---------------------------------------------------------------------------------------------
def _issue_number(call: Call) -> int:
    number = call.int_param("issue_number")
    if number not in call.repo.pulls:
        raise not_found()
    return number


@route("GET", R + "/issues/{issue_number}/comments", permission=ISSUES)
def list_comments(call: Call) -> Reply:
    number = _issue_number(call)
    comments = sorted(
        (c for c in call.repo.comments.values() if c.number == number), key=lambda c: c.id
    )
    since = call.query.get("since")
    if since:
        comments = [c for c in comments if (iso(c.updated_at) or "") >= since]
    return call.page([call.fake.shapes.comment(call.repo, c) for c in comments])


@route("POST", R + "/issues/{issue_number}/comments", permission=ISSUES)
def create_comment(call: Call) -> Reply:
    fake, repo = call.fake, call.repo
    number = _issue_number(call)
    body = call.data().get("body")
    if not isinstance(body, str) or not body:
        raise GitHubError(
            422,
            "Validation Failed",
            errors=[{"resource": "IssueComment", "code": "missing_field", "field": "body"}],
        )
    if len(body) > 65536:
        raise GitHubError(
            422,
            "Validation Failed",
            errors=[
                {
                    "resource": "IssueComment",
                    "code": "custom",
                    "field": "body",
                    "message": "body is too long (maximum is 65536 characters)",
                }
            ],
        )
    comment = fake.add_comment(
        repo.owner.login,
        repo.name,
        number,
        body,
        user=fake.actor(call).login,
        via_app=call.token is not None,
    )
    shape = fake.shapes.comment(repo, comment)
    return Reply(201, shape, headers={"Location": shape["url"]})


def _comment(call: Call) -> Comment:
    comment = call.repo.comments.get(call.int_param("comment_id"))
    if comment is None:
        raise not_found()
    return comment


@route("GET", R + "/issues/comments/{comment_id}", permission=ISSUES)
def get_comment(call: Call) -> Reply:
    return Reply(body=call.fake.shapes.comment(call.repo, _comment(call)))


@route("PATCH", R + "/issues/comments/{comment_id}", permission=ISSUES)
def update_comment(call: Call) -> Reply:
    comment = _comment(call)
    body = call.data().get("body")
    if not isinstance(body, str) or not body:
        raise GitHubError(
            422,
            "Validation Failed",
            errors=[{"resource": "IssueComment", "code": "missing_field", "field": "body"}],
        )
    if len(body) > 65536:
        raise GitHubError(
            422,
            "Validation Failed",
            errors=[
                {
                    "resource": "IssueComment",
                    "code": "custom",
                    "field": "body",
                    "message": "body is too long (maximum is 65536 characters)",
                }
            ],
        )
    comment.previous_body = comment.body
    comment.body = body
    comment.updated_at = call.fake.now()
    return Reply(body=call.fake.shapes.comment(call.repo, comment))


@route("DELETE", R + "/issues/comments/{comment_id}", permission=ISSUES)
def delete_comment(call: Call) -> Reply:
    comment = _comment(call)
    del call.repo.comments[comment.id]
    return Reply(204)


@route("POST", R + "/issues/comments/{comment_id}/reactions", permission=ISSUES)
def create_reaction(call: Call) -> Reply:
    """201 for a new reaction; 200 with the existing one when the user already reacted so."""
    fake, repo = call.fake, call.repo
    comment = _comment(call)
    content = call.data().get("content")
    if content not in REACTIONS:
        raise GitHubError(
            422,
            "Validation Failed",
            errors=[{"resource": "Reaction", "code": "invalid", "field": "content"}],
        )
    reaction, created = fake.react(
        repo.owner.login, repo.name, comment.id, content, user=fake.actor(call).login
    )
    return Reply(201 if created else 200, fake.shapes.reaction(reaction))


@route("GET", R + "/issues/comments/{comment_id}/reactions", permission=ISSUES)
def list_reactions(call: Call) -> Reply:
    comment = _comment(call)
    wanted = call.query.get("content")
    shapes = call.fake.shapes
    return call.page(
        [shapes.reaction(r) for r in comment.reactions if wanted is None or r.content == wanted]
    )


def _labels_reply(call: Call, pr: Pull) -> Reply:
    return Reply(body=[call.fake.shapes.label(call.repo, call.repo.labels[n]) for n in pr.labels])


@route("GET", R + "/issues/{issue_number}/labels", permission=ISSUES)
def list_labels(call: Call) -> Reply:
    pr = call.repo.pulls[_issue_number(call)]
    return call.page([call.fake.shapes.label(call.repo, call.repo.labels[n]) for n in pr.labels])


def _label_names(value: Any) -> list[str]:
    if isinstance(value, dict):
        value = value.get("labels", [])
    if isinstance(value, str):
        value = [value]
    names = []
    for item in value or []:
        names.append(item["name"] if isinstance(item, dict) else str(item))
    return names


@route("POST", R + "/issues/{issue_number}/labels", permission=ISSUES)
def add_labels(call: Call) -> Reply:
    number = _issue_number(call)
    repo = call.repo
    actor = call.fake.actor(call).login
    for name in _label_names(call.json()):
        call.fake.add_label(repo.owner.login, repo.name, number, name, by=actor)
    return _labels_reply(call, repo.pulls[number])


@route("PUT", R + "/issues/{issue_number}/labels", permission=ISSUES)
def set_labels(call: Call) -> Reply:
    number = _issue_number(call)
    repo = call.repo
    wanted = _label_names(call.json())
    actor = call.fake.actor(call).login
    for name in list(repo.pulls[number].labels):
        if name not in wanted:
            call.fake.remove_label(repo.owner.login, repo.name, number, name, by=actor)
    for name in wanted:
        call.fake.add_label(repo.owner.login, repo.name, number, name, by=actor)
    return _labels_reply(call, repo.pulls[number])


@route("DELETE", R + "/issues/{issue_number}/labels/{name}", permission=ISSUES)
def remove_label(call: Call) -> Reply:
    number = _issue_number(call)
    repo = call.repo
    name = call.params["name"]
    pr = repo.pulls[number]
    match_ = next((n for n in pr.labels if n.lower() == name.lower()), None)
    if match_ is None:
        raise GitHubError(404, "Label does not exist")
    call.fake.remove_label(
        repo.owner.login, repo.name, number, match_, by=call.fake.actor(call).login
    )
    return _labels_reply(call, pr)


@route("GET", R + "/issues/{issue_number}/events", permission=ISSUES)
def list_issue_events(call: Call) -> Reply:
    number = _issue_number(call)
    repo = call.repo
    shapes = call.fake.shapes
    return call.page([shapes.issue_event(repo, e) for e in repo.issue_events if e.number == number])


@route("GET", R + "/collaborators/{username}/permission", permission=META)
def collaborator_permission(call: Call) -> Reply:
    fake, repo = call.fake, call.repo
    login = call.params["username"]
    user = fake.users.get(login.lower())
    if user is None:
        raise not_found()
    permission = fake.permission_of(repo, user)
    return Reply(body=fake.shapes.permission(repo, user, permission))


# ---------------------------------------------------------------------------------------------
# Deployments
# ---------------------------------------------------------------------------------------------


@route("POST", R + "/deployments", permission=("deployments",))
def create_deployment(call: Call) -> Reply:
    fake, repo = call.fake, call.repo
    data = call.data()
    ref = data.get("ref", "")
    sha = fake.resolve_commit(repo, ref)
    if sha is None:
        raise GitHubError(422, f"No ref found for: {ref}")
    branch = f"refs/heads/{ref}" if f"refs/heads/{ref}" in repo.store.refs else None
    if data.get("auto_merge", True) and branch is not None and ref != repo.default_branch:
        default_sha = repo.store.refs.get(f"refs/heads/{repo.default_branch}")
        if default_sha and not repo.store.is_ancestor(default_sha, sha):
            # GitHub merges the default branch into a branch that is behind it, then answers
            # 202 and creates no deployment; the client is expected to retry.
            tree = repo.store.merge_tree(sha, default_sha)
            if tree is None:
                raise GitHubError(409, f"Conflict merging {repo.default_branch} into {ref}.")
            person = fake.actor_person(call)
            merged = repo.store.commit_tree(
                tree, [sha, default_sha], f"Merge {repo.default_branch} into {ref}", person, person
            )
            fake.move_ref(repo, branch, merged)
            return Reply(
                202, {"message": f"Auto-merged {repo.default_branch} into {ref} on deployment."}
            )
    required = data.get("required_contexts")
    contexts = fake.commit_contexts(repo, sha)
    check = contexts if required is None else {c: contexts.get(c) for c in required}
    # Only `success` passes: a pending, skipped or missing context fails the deployment.
    if any(state != "success" for state in check.values()):
        raise GitHubError(
            409,
            f"Conflict: Commit status checks failed for {ref}.",
            errors=[
                {
                    "contexts": [{"context": c, "state": s or "missing"} for c, s in check.items()],
                    "resource": "Deployment",
                    "field": "required_contexts",
                    "code": "invalid",
                }
            ],
        )
    environment = data.get("environment") or "production"
    # An object is kept as it is, and so is a string (GitHub answers a JSON string payload
    # with that string, not the object it encodes: octokit/octokit.net#2250).
    payload = data.get("payload", {})
    deployment = fake.store_deployment(
        repo,
        sha,
        ref,
        environment,
        fake.actor(call),
        task=data.get("task") or "deploy",
        payload=payload if payload != "" else {},
        description=data.get("description") or "",
        transient=bool(data.get("transient_environment", False)),
        production=bool(data.get("production_environment", environment == "production")),
        via_app=call.token is not None,
    )
    shape = fake.shapes.deployment(repo, deployment)
    return Reply(201, shape, headers={"Location": shape["url"]})


@route("GET", R + "/deployments", permission=("deployments",))
def list_deployments(call: Call) -> Reply:
    q = call.query
    items = sorted(call.repo.deployments.values(), key=lambda d: d.id, reverse=True)
    for name in ("sha", "ref", "task", "environment"):
        if q.get(name):
            items = [d for d in items if getattr(d, name) == q[name]]
    return call.page([call.fake.shapes.deployment(call.repo, d) for d in items])


def _deployment(call: Call) -> Deployment:
    d = call.repo.deployments.get(call.int_param("deployment_id"))
    if d is None:
        raise not_found()
    return d


@route("GET", R + "/deployments/{deployment_id}", permission=("deployments",))
def get_deployment(call: Call) -> Reply:
    return Reply(body=call.fake.shapes.deployment(call.repo, _deployment(call)))


@route("DELETE", R + "/deployments/{deployment_id}", permission=("deployments",))
def delete_deployment(call: Call) -> Reply:
    repo = call.repo
    d = _deployment(call)
    others = [
        o for o in repo.deployments.values() if o.environment == d.environment and o.id != d.id
    ]
    if d.latest_state != "inactive" and others:
        raise GitHubError(
            422,
            "We cannot delete an active deployment unless it is the only "
            "deployment in a given environment.",
        )
    del repo.deployments[d.id]
    return Reply(204)


@route("POST", R + "/deployments/{deployment_id}/statuses", permission=("deployments",))
def create_deployment_status(call: Call) -> Reply:
    fake, repo = call.fake, call.repo
    d = _deployment(call)
    data = call.data()
    state = data.get("state", "")
    status = fake.add_deployment_status(
        repo,
        d,
        state,
        creator=fake.actor(call),
        via_app=call.token is not None,
        description=data.get("description") or "",
        environment=data.get("environment"),
        target_url=data.get("target_url"),
        log_url=data.get("log_url"),
        environment_url=data.get("environment_url"),
        auto_inactive=bool(data.get("auto_inactive", True)),
    )
    shape = fake.shapes.deployment_status(repo, d, status)
    return Reply(201, shape, headers={"Location": shape["url"]})


@route("GET", R + "/deployments/{deployment_id}/statuses", permission=("deployments",))
def list_deployment_statuses(call: Call) -> Reply:
    d = _deployment(call)
    shapes = call.fake.shapes
    return call.page([shapes.deployment_status(call.repo, d, s) for s in reversed(d.statuses)])


@route("GET", R + "/deployments/{deployment_id}/statuses/{status_id}", permission=("deployments",))
def get_deployment_status(call: Call) -> Reply:
    d = _deployment(call)
    wanted = call.int_param("status_id")
    for s in d.statuses:
        if s.id == wanted:
            return Reply(body=call.fake.shapes.deployment_status(call.repo, d, s))
    raise not_found()


# ---------------------------------------------------------------------------------------------
# Checks and commit statuses
# ---------------------------------------------------------------------------------------------
def _apply_check_fields(call: Call, run: CheckRun, data: JSON) -> None:
    fake = call.fake
    for name in ("name", "details_url", "external_id"):
        if name in data:
            setattr(run, name, data[name])
    if "output" in data:
        run.output = dict(data["output"])
    if "started_at" in data:
        run.started_at = fake.parse_time(data["started_at"])
    if "status" in data:
        run.status = data["status"]
    if data.get("conclusion"):
        run.conclusion = data["conclusion"]
        run.status = "completed"
    if "completed_at" in data:
        run.completed_at = fake.parse_time(data["completed_at"])
    if run.status == "completed":
        if run.conclusion is None:
            raise GitHubError(
                422, "Invalid request.\n\nWhen the status is completed, the conclusion is required."
            )
        run.completed_at = run.completed_at or fake.now()


@route("POST", R + "/check-runs", permission=("checks",))
def create_check_run(call: Call) -> Reply:
    fake, repo = call.fake, call.repo
    data = call.data()
    head_sha = data.get("head_sha", "")
    if not SHA_RE.match(head_sha) or repo.store.object_type(head_sha) != "commit":
        raise GitHubError(422, f"No commit found for SHA: {head_sha}")
    now = fake.now()
    run = CheckRun(
        id=fake.next_id("check_run"),
        head_sha=head_sha,
        name=data.get("name", ""),
        status="queued",
        conclusion=None,
        started_at=now,
        completed_at=None,
        details_url=None,
        external_id=None,
        output={},
        check_suite_id=fake.check_suite_id(repo, head_sha),
        created_at=now,
    )
    _apply_check_fields(call, run, {k: v for k, v in data.items() if k != "name"})
    repo.check_runs[run.id] = run
    shape = fake.shapes.check_run(repo, run)
    return Reply(201, shape, headers={"Location": shape["url"]})


def _check_run(call: Call) -> CheckRun:
    run = call.repo.check_runs.get(call.int_param("check_run_id"))
    if run is None:
        raise not_found()
    return run


@route("PATCH", R + "/check-runs/{check_run_id}", permission=("checks",))
def update_check_run(call: Call) -> Reply:
    run = _check_run(call)
    _apply_check_fields(call, run, call.data())
    return Reply(body=call.fake.shapes.check_run(call.repo, run))


@route("GET", R + "/check-runs/{check_run_id}", permission=("checks",))
def get_check_run(call: Call) -> Reply:
    return Reply(body=call.fake.shapes.check_run(call.repo, _check_run(call)))


@route("GET", R + "/commits/{ref}/check-runs", permission=("checks",))
def list_check_runs(call: Call) -> Reply:
    fake, repo = call.fake, call.repo
    sha = fake.resolve_commit(repo, call.params["ref"])
    if sha is None:
        raise GitHubError(422, f"No commit found for SHA: {call.params['ref']}")
    q = call.query
    runs = sorted(
        (r for r in repo.check_runs.values() if r.head_sha == sha), key=lambda r: r.id, reverse=True
    )
    if q.get("check_name"):
        runs = [r for r in runs if r.name == q["check_name"]]
    if q.get("status"):
        runs = [r for r in runs if r.status == q["status"]]
    if q.get("filter", "latest") == "latest":
        seen: set[str] = set()
        latest = []
        for r in runs:
            if r.name not in seen:
                seen.add(r.name)
                latest.append(r)
        runs = latest
    shapes = [fake.shapes.check_run(repo, r) for r in runs]
    return call.page(shapes, key="check_runs", extra={"total_count": len(shapes)})


@route("POST", R + "/statuses/{sha}", permission=("statuses",))
def create_status(call: Call) -> Reply:
    fake, repo = call.fake, call.repo
    sha = call.params["sha"]
    if not SHA_RE.match(sha) or repo.store.object_type(sha) != "commit":
        raise GitHubError(422, f"No commit found for SHA: {sha}")
    data = call.data()
    now = fake.now()
    status = CommitStatus(
        id=fake.next_id("status"),
        sha=sha,
        state=data.get("state", ""),
        target_url=data.get("target_url"),
        description=data.get("description"),
        context=data.get("context") or "default",
        creator=fake.actor(call),
        created_at=now,
        updated_at=now,
    )
    repo.statuses.append(status)
    shape = fake.shapes.commit_status(repo, status)
    return Reply(201, shape, headers={"Location": shape["url"]})


@route("GET", R + "/commits/{ref}/status", permission=("statuses",))
def combined_status(call: Call) -> Reply:
    fake, repo = call.fake, call.repo
    sha = fake.resolve_commit(repo, call.params["ref"])
    if sha is None:
        raise not_found()
    latest: dict[str, CommitStatus] = {}
    for s in repo.statuses:
        if s.sha == sha:
            latest[s.context] = s
    states = {s.state for s in latest.values()}
    if states & {"error", "failure"}:
        state = "failure"
    elif not states or "pending" in states:
        state = "pending"
    else:
        state = "success"
    base = fake.shapes.repo_url(repo)
    return Reply(
        body={
            "state": state,
            "statuses": [
                {k: v for k, v in fake.shapes.commit_status(repo, s).items() if k != "creator"}
                | {"required": False}
                for s in latest.values()
            ],
            "sha": sha,
            "total_count": len(latest),
            "repository": _minimal_repository(call, repo),
            "commit_url": f"{base}/commits/{sha}",
            "url": f"{base}/commits/{sha}/status",
        }
    )


def _minimal_repository(call: Call, repo: Repo) -> JSON:
    full = call.fake.shapes.repository(repo)
    keys = (
        "id",
        "node_id",
        "name",
        "full_name",
        "owner",
        "private",
        "html_url",
        "description",
        "fork",
        "url",
    )
    minimal = {k: full[k] for k in keys}
    minimal.update({k: v for k, v in full.items() if k.endswith("_url")})
    return minimal
