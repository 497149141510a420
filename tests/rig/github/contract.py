"""Contract checks: what the GitHub fake receives and answers, against GitHub's REST OpenAPI."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import quote

from jsonschema import FormatChecker
from multidict import CIMultiDict, MultiDict, MultiMapping
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.validation.request.validators import V30RequestValidator
from openapi_core.validation.response.validators import V30ResponseValidator
from openapi_core.validation.schemas.datatypes import FormatValidatorsDict
from openapi_core.validation.schemas.factories import SchemaValidatorsFactory
from openapi_schema_validator import OAS30ReadValidator, OAS30WriteValidator

from tests.rig.artifacts import openapi_path

HOST_URL = "https://api.github.com"  # the description's only server; matched against our adapter
DOCS = "https://docs.github.com/rest"


@dataclass
class Violation:
    """One way a request or response broke GitHub's published contract."""

    kind: str  # "request" or "response"
    method: str
    path: str
    route: str
    status: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.method} {self.path} ({self.route})"
        status = f" -> {self.status}" if self.status is not None else ""
        return f"[{self.kind}] {where}{status}: {self.message}"


@dataclass
class ContractStats:
    """How many checks ran and what they cost (the checks run on every request)."""

    requests_checked: int = 0
    responses_checked: int = 0
    responses_skipped: int = 0
    cache_hits: int = 0  # identical messages seen before: answered from the cache
    seconds: float = 0.0
    load_seconds: float = 0.0
    skipped_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def checks(self) -> int:
        return self.requests_checked + self.responses_checked

    @property
    def ms_per_check(self) -> float:
        """Mean cost of one real validation (cache hits excluded)."""
        return 1000 * self.seconds / self.checks if self.checks else 0.0


class _Request:
    """openapi-core's Request + SupportsPathPattern protocols, built from what the fake received.

    Giving `path_pattern` (the route template we already matched) with the path parameters
    spares openapi-core its regex search over every path and sidesteps its `[^/]*` parameter
    pattern, which cannot match contents paths or git refs that contain `/`.
    """

    host_url = HOST_URL

    def __init__(
        self,
        method: str,
        route: str,
        path_params: Mapping[str, str],
        query: MultiMapping[str],
        headers: Mapping[str, str],
        body: bytes | None,
        content_type: str,
    ) -> None:
        self.method = method.lower()
        self.path_pattern = route
        # The finder joins host_url with path_pattern; `/` inside values is percent-encoded so
        # the concrete path has one segment per parameter, as GitHub's router sees it.
        self.path = route.format_map({k: quote(v, safe="") for k, v in path_params.items()})
        self.parameters = RequestParameters(
            query=query, header=headers, cookie=MultiDict(), path=dict(path_params)
        )
        self.body = body
        self.content_type = content_type


class _Response:
    def __init__(
        self, status: int, headers: Mapping[str, str], body: bytes, content_type: str
    ) -> None:
        self.status_code = status
        self.headers = headers
        self.data = body
        self.content_type = content_type


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            found.add(ref)
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def _prune(spec: dict[str, Any], routes: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Keep the routes the fake serves and the components they reach (transitively)."""
    wanted: dict[str, set[str]] = {}
    for method, route in routes:
        wanted.setdefault(route, set()).add(method.lower())
    paths: dict[str, Any] = {}
    for route, methods in wanted.items():
        item = spec["paths"].get(route)
        if item is None:
            raise KeyError(f"{route} is not in GitHub's OpenAPI description")
        paths[route] = {k: v for k, v in item.items() if k in methods or k == "parameters"}
    pruned: dict[str, Any] = {
        k: v for k, v in spec.items() if k not in ("paths", "components", "webhooks")
    }
    pruned["paths"] = paths
    components: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    todo: set[str] = set()
    _refs(paths, todo)
    while todo:
        ref = todo.pop()
        if ref in seen:
            continue
        seen.add(ref)
        _, _, kind, name = ref.split("/", 3)
        node = spec["components"][kind][name]
        components.setdefault(kind, {})[name] = node
        _refs(node, todo)
    pruned["components"] = components
    # The pruned copy is patched below; never touch the cached original.
    return copy.deepcopy(pruned)


def _walk(node: Any) -> Iterable[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def apply_errata(spec: dict[str, Any]) -> list[str]:
    """Patch known errors of @octokit/openapi 23.0.2 that fail responses shaped like GitHub's.

    Every patch is narrow and documented; returns what was patched (for the report).
    """
    applied: list[str] = []
    schemas = spec["components"].get("schemas", {})
    paths = spec["paths"]

    # 1. GET /app/installations inlines `account` as allOf[simple-user, enterprise]: no account
    #    is both a user and an enterprise, so every real installation fails. The component
    #    `installation` says anyOf; use that.
    op = paths.get("/app/installations", {}).get("get")
    if op is not None:
        items = op["responses"]["200"]["content"]["application/json"]["schema"]["items"]
        account = items["properties"]["account"]
        if "allOf" in account:
            account["anyOf"] = account.pop("allOf")
            applied.append("GET /app/installations: account allOf[user, enterprise] -> anyOf")

    # 2. GET contents: a `discriminator` on `type` cannot apply to a directory listing (an
    #    array has no `type` property), so openapi-core rejects every directory response.
    #    The oneOf alone already tells the four shapes apart.
    op = paths.get("/repos/{owner}/{repo}/contents/{path}", {}).get("get")
    if op is not None:
        schema = op["responses"]["200"]["content"]["application/json"]["schema"]
        if schema.pop("discriminator", None) is not None:
            applied.append("GET contents: dropped the `type` discriminator (arrays have no type)")

    # 3. Nullable enums without null (e.g. check-run `conclusion`, which GitHub sends as null
    #    while the run is queued/in progress): OpenAPI 3.0.3 says enum wins, so add null.
    count = 0
    for node in _walk(spec["components"]):
        if (
            node.get("nullable") is True
            and isinstance(node.get("enum"), list)
            and None not in node["enum"]
        ):
            node["enum"].append(None)
            count += 1
    if count:
        applied.append(f"{count} nullable enums without null (check-run.conclusion ...): +null")

    # 4. oneOf[basic-error, repository-rule-violation-error]: both are all-optional objects, so
    #    every error body matches both and oneOf fails. GitHub means anyOf.
    pair = {
        "#/components/schemas/basic-error",
        "#/components/schemas/repository-rule-violation-error",
    }
    count = 0
    for node in _walk(spec):
        one_of = node.get("oneOf")
        if isinstance(one_of, list) and {o.get("$ref") for o in one_of} == pair:
            node["anyOf"] = node.pop("oneOf")
            count += 1
    if count:
        applied.append(f"{count} oneOf[basic-error, repository-rule-violation-error] -> anyOf")

    # 5. pull-request-simple (the items of GET /pulls) types labels[].description as a plain
    #    string; GitHub sends null for labels without a description (and pull-request, the
    #    single-PR shape, already says nullable).
    simple = schemas.get("pull-request-simple")
    if simple is not None:
        desc = simple["properties"]["labels"]["items"]["properties"]["description"]
        if not desc.get("nullable"):
            desc["nullable"] = True
            applied.append("pull-request-simple.labels[].description: nullable")
    return applied


def inline_refs(spec: dict[str, Any]) -> int:
    """Replace every `$ref` below `paths` by the (shared, not copied) component it names.

    openapi-core resolves each `$ref` through jsonschema-path on every validation, about a
    third of the cost of checking a pull request. Cyclic references stay `$ref`s (the
    components remain in the document); returns how many there were.
    """
    components = spec["components"]
    done: dict[str, Any] = {}
    active: set[str] = set()
    cycles = 0

    def walk(node: Any) -> Any:
        nonlocal cycles
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/"):
                if ref in done:
                    return done[ref]
                if ref in active:
                    cycles += 1
                    return node
                active.add(ref)
                _, _, kind, name = ref.split("/", 3)
                done[ref] = walk(components[kind][name])
                active.discard(ref)
                return done[ref]
            for key, value in node.items():
                node[key] = walk(value)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                node[i] = walk(value)
        return node

    spec["paths"] = walk(spec["paths"])
    return cycles


class _SharedFormatChecker(SchemaValidatorsFactory):
    """openapi-core deep-copies its format checker for every schema it validates (a third of
    a request check) so callers may add formats; nothing here does, so share one."""

    def get_format_checker(
        self,
        format_validators: FormatValidatorsDict | None = None,
        extra_format_validators: FormatValidatorsDict | None = None,
    ) -> FormatChecker:
        if format_validators is None and extra_format_validators is None:
            return self.format_checker
        return super().get_format_checker(format_validators, extra_format_validators)


class _RequestValidator(V30RequestValidator):
    schema_validators_factory = _SharedFormatChecker(OAS30WriteValidator)


class _ResponseValidator(V30ResponseValidator):
    schema_validators_factory = _SharedFormatChecker(OAS30ReadValidator)


@functools.cache
def _spec_json() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(openapi_path().read_text())
    return result


class ContractChecker:
    """Validates requests and responses of the routes the fake serves; built once per session."""

    _lock = threading.Lock()
    _instances: ClassVar[dict[frozenset[tuple[str, str]], ContractChecker]] = {}

    def __init__(self, routes: Iterable[tuple[str, str]]) -> None:
        started = time.perf_counter()
        self.routes = frozenset((m.upper(), r) for m, r in routes)
        spec = _prune(_spec_json(), self.routes)
        self.errata = apply_errata(spec)
        inline_refs(spec)
        self.spec = spec
        # The full-spec validation takes ~18 s and this description is known to be valid.
        self.openapi = OpenAPI.from_dict(
            spec,
            config=Config(
                spec_validator_cls=None,
                request_validator_cls=_RequestValidator,
                response_validator_cls=_ResponseValidator,
            ),
        )
        self.stats = ContractStats()
        self._results: dict[tuple[Any, ...], list[str]] = {}
        self.stats.load_seconds = time.perf_counter() - started

    @classmethod
    def shared(cls, routes: Iterable[tuple[str, str]]) -> ContractChecker:
        """One checker per set of routes for the whole session (loading costs about a second)."""
        key = frozenset((m.upper(), r) for m, r in routes)
        with cls._lock:
            if key not in cls._instances:
                cls._instances[key] = cls(key)
            return cls._instances[key]

    def operation(self, method: str, route: str) -> dict[str, Any]:
        result: dict[str, Any] = self.spec["paths"][route][method.lower()]
        return result

    def documented(self, method: str, route: str, status: int) -> bool:
        responses = self.operation(method, route)["responses"]
        return str(status) in responses or "default" in responses

    def doc_url(self, method: str, route: str) -> str:
        docs = self.operation(method, route).get("externalDocs", {})
        url: str = docs.get("url", DOCS)
        return url

    def check_request(
        self,
        method: str,
        route: str,
        path_params: Mapping[str, str],
        query: MultiMapping[str],
        headers: Mapping[str, str],
        body: bytes | None,
        content_type: str,
    ) -> list[str]:
        """Messages for everything wrong with the request ([] when it follows the contract)."""
        key = (
            "request",
            method,
            route,
            tuple(sorted(path_params.items())),
            tuple(sorted(query.items())),
            content_type,
            _digest(body or b""),
        )
        cached = self._cached(key)
        if cached is not None:
            return cached
        started = time.perf_counter()
        request = _Request(
            method, route, path_params, query, CIMultiDict(headers), body or None, content_type
        )
        errors = [_describe(e) for e in self.openapi.iter_request_errors(request)]
        self.stats.requests_checked += 1
        self.stats.seconds += time.perf_counter() - started
        self._remember(key, errors)
        return errors

    def check_response(
        self,
        method: str,
        route: str,
        path_params: Mapping[str, str],
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        content_type: str,
    ) -> list[str] | None:
        """Messages for everything wrong with the response; None when it cannot be checked."""
        if not self.documented(method, route, status):
            self.skip(f"{status} not documented")
            return None
        # Header values (Link, Location, ...) differ per page but are only type-checked.
        key = (
            "response",
            method,
            route,
            status,
            content_type,
            tuple(sorted(k.lower() for k in headers)),
            _digest(body),
        )
        cached = self._cached(key)
        if cached is not None:
            return cached
        started = time.perf_counter()
        request = _Request(method, route, path_params, MultiDict(), {}, None, "")
        response = _Response(status, headers, body, content_type)
        errors = [_describe(e) for e in self.openapi.iter_response_errors(request, response)]
        self.stats.responses_checked += 1
        self.stats.seconds += time.perf_counter() - started
        self._remember(key, errors)
        return errors

    def _cached(self, key: tuple[Any, ...]) -> list[str] | None:
        """Validation is deterministic: the same message (polling!) needs no second check."""
        found = self._results.get(key)
        if found is not None:
            self.stats.cache_hits += 1
            return list(found)
        return None

    def _remember(self, key: tuple[Any, ...], errors: list[str]) -> None:
        if len(self._results) >= 4096:
            self._results.clear()
        self._results[key] = list(errors)

    def skip(self, reason: str) -> None:
        self.stats.responses_skipped += 1
        self.stats.skipped_reasons[reason] = self.stats.skipped_reasons.get(reason, 0) + 1


def _describe(error: BaseException) -> str:
    """A short message: openapi-core nests jsonschema's useful errors in __cause__ chains."""
    details: list[str] = []
    cause: BaseException | None = error
    while cause is not None:
        for err in list(getattr(cause, "schema_errors", None) or [])[:5]:
            location = "/".join(str(p) for p in getattr(err, "absolute_path", []))
            details.append(f"at '{location}': {getattr(err, 'message', err)}"[:300])
        cause = cause.__cause__
    if details:
        return f"{type(error).__name__}: " + "; ".join(dict.fromkeys(details))
    return f"{type(error).__name__}: {error}"[:500]


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()
