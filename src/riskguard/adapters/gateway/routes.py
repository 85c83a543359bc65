"""Which upstream a request goes to, and which declared route of that service it is.

- :class:`RouteTable` maps a request path to a configured :class:`~.config.RouteConfig` by the
  longest matching prefix (a prefix matches whole segments: ``/ledger`` matches ``/ledger`` and
  ``/ledger/x``, never ``/ledgers``).
- :class:`RouteCatalog` holds the routes a service declares — from the gateway's configuration or
  imported from the service's OpenAPI document (:func:`openapi_routes`: its paths and methods) —
  and turns a concrete path into its **template** (``/v1/accounts/7/balance`` →
  ``/v1/accounts/{id}/balance``). The template, not the concrete path, is what the risk engine
  learns per calling service, so one route is one identity however many ids it is called with.
  A path no declared route matches is templated by :func:`guess_template` (numbers, UUIDs and
  long opaque tokens become ``{id}``) and reported as *undeclared*.
- :func:`check_path` refuses paths that the gateway and an upstream could read differently: dot
  segments, encoded slashes or backslashes, empty segments and control characters. Zero trust
  starts with one unambiguous reading of the path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
MAX_PATH_CHARS = 2048  # the api_call event's limit
_PARAM = re.compile(r"^\{[^{}/]+\}$")
_ID_SEGMENT = re.compile(
    r"^(?:\d+"  # numbers
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"  # UUIDs
    r"|(?=[^/]*\d)[0-9a-fA-F]{12,}"  # long hex with a digit (hashes, object ids)
    r"|(?=[^/]*\d)(?=[^/]*[A-Za-z])[A-Za-z0-9_~.=-]{20,}"  # long opaque tokens
    r")$"
)
_OPENAPI_METHODS = {m.lower(): m for m in (*HTTP_METHODS, "TRACE")}


class RouteError(ValueError):
    """A declared route or an OpenAPI document that cannot be used (the message says why)."""


class AmbiguousPath(ValueError):
    """A request path the gateway refuses to interpret (400)."""


def check_path(path: str, raw_path: bytes | None) -> None:
    """Raise :class:`AmbiguousPath` unless ``path`` (decoded) and ``raw_path`` (as sent) can only
    be read one way: absolute, no ``.``/``..`` or empty segments, no control characters, no
    percent-encoded ``/`` or ``\\``, at most :data:`MAX_PATH_CHARS` characters."""
    if not path.startswith("/"):
        raise AmbiguousPath("the path must start with '/'")
    if len(path) > MAX_PATH_CHARS:
        raise AmbiguousPath(f"the path is longer than {MAX_PATH_CHARS} characters")
    if "//" in path or "\\" in path or not path.isprintable():
        raise AmbiguousPath("the path has empty segments, backslashes or control characters")
    if "/." in path:
        for segment in path.split("/"):
            if segment in (".", ".."):
                raise AmbiguousPath("the path has dot segments")
    if raw_path is not None and b"%" in raw_path:
        lowered = raw_path.lower()
        if b"%2f" in lowered or b"%5c" in lowered or b"%00" in lowered:
            raise AmbiguousPath("the path has an encoded '/', '\\' or NUL")


def guess_template(path: str) -> str:
    """``path`` with its id-like segments written ``{id}`` (numbers, UUIDs, long hex strings,
    long opaque tokens that mix letters and digits)."""
    if not any(c.isdigit() for c in path):
        return path
    return "/".join(_template_segment(s) for s in path.split("/"))


def _template_segment(segment: str) -> str:
    if segment.isdigit():
        return "{id}"
    if len(segment) < 12:  # shorter than any id-like form but a number: "v2", "r7", "2fa"
        return segment
    return "{id}" if _ID_SEGMENT.match(segment) else segment


@dataclass(frozen=True, slots=True)
class DeclaredRoute:
    """One route a service serves: methods (empty: any) and a path template."""

    methods: frozenset[str]
    template: str
    segments: tuple[str | None, ...]  # literal segments; None where the template has a {param}

    @property
    def literal_count(self) -> int:
        return sum(1 for s in self.segments if s is not None)


def parse_declared(text: str) -> DeclaredRoute:
    """``"GET /v1/accounts/{id}"``, ``"GET,POST /v1/x"`` or ``"/v1/x"`` (any method)."""
    parts = text.split()
    if len(parts) == 1:
        methods: frozenset[str] = frozenset()
        template = parts[0]
    elif len(parts) == 2:
        methods = frozenset(m.upper() for m in parts[0].split(",") if m)
        template = parts[1]
        unknown = methods - set(HTTP_METHODS)
        if unknown or not methods:
            raise RouteError(f"route {text!r}: methods must be among {', '.join(HTTP_METHODS)}")
    else:
        raise RouteError(f"route {text!r}: expected 'METHOD /path' or '/path'")
    return declared_route(methods, template)


def declared_route(methods: Iterable[str], template: str) -> DeclaredRoute:
    if not template.startswith("/") or len(template) > MAX_PATH_CHARS:
        raise RouteError(f"route path {template!r} must start with '/' (at most 2048 characters)")
    segments: list[str | None] = []
    for segment in template.split("/")[1:]:
        if "{" in segment or "}" in segment:
            if not _PARAM.match(segment):
                raise RouteError(f"route path {template!r}: a parameter must be a whole segment")
            segments.append(None)
        else:
            segments.append(segment)
    return DeclaredRoute(frozenset(methods), template, tuple(segments))


def openapi_routes(document: Any, *, source: str = "OpenAPI document") -> list[DeclaredRoute]:
    """The routes (paths and methods) of an OpenAPI 3 (or Swagger 2) document, with the base
    path of its first server (``servers[0].url``, or Swagger's ``basePath``) in front."""
    if not isinstance(document, dict) or not isinstance(document.get("paths"), dict):
        raise RouteError(f"{source}: not an OpenAPI document (no 'paths' object)")
    base = ""
    servers = document.get("servers")
    if isinstance(servers, list) and servers and isinstance(servers[0], dict):
        base = urlsplit(str(servers[0].get("url", ""))).path
    elif isinstance(document.get("basePath"), str):
        base = document["basePath"]
    base = base.rstrip("/")
    if "{" in base:  # a templated server URL: its base path is not known here
        base = ""
    if base and not base.startswith("/"):
        raise RouteError(f"{source}: the server URL's path must be absolute")
    routes = []
    for path, item in document["paths"].items():
        if not isinstance(path, str) or not isinstance(item, dict):
            raise RouteError(f"{source}: paths must map strings to path items")
        methods = {_OPENAPI_METHODS[k] for k in item if k in _OPENAPI_METHODS} - {"TRACE"}
        if methods:
            try:
                routes.append(declared_route(methods, base + path))
            except RouteError as exc:
                raise RouteError(f"{source}: {exc}") from None
    return routes


def load_openapi(path: Path) -> list[DeclaredRoute]:
    """The routes of an OpenAPI document in a JSON or YAML file."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise RouteError(f"cannot read the OpenAPI document {path}: {reason}") from None
    try:
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError, RecursionError):
        raise RouteError(f"{path}: not valid JSON or YAML") from None
    return openapi_routes(document, source=str(path))


class RouteCatalog:
    """The declared routes of one service, and the template of any path called on it."""

    def __init__(self, routes: Sequence[DeclaredRoute] = ()) -> None:
        self.routes = tuple(routes)
        by_length: dict[int, list[DeclaredRoute]] = {}
        # the most specific first: more literal segments win ("/v1/accounts/me" over "/{id}")
        for route in sorted(self.routes, key=lambda r: -r.literal_count):
            by_length.setdefault(len(route.segments), []).append(route)
        self._by_length = by_length

    def __bool__(self) -> bool:
        return bool(self.routes)

    def template(self, method: str, path: str) -> tuple[str, bool]:
        """(template, declared): the declared route ``path`` matches, or a guessed template and
        False. Not cached: paths carry ids, so a cache would churn (and keep the garbage
        collector busy) rather than hit."""
        candidates = self._by_length.get(path.count("/"))
        if candidates:
            segments = path.split("/")[1:]
            for route in candidates:
                if route.methods and method not in route.methods:
                    continue
                if all(s is None or s == v for s, v in zip(route.segments, segments, strict=True)):
                    return route.template, True
        return guess_template(path), False


@dataclass(frozen=True, slots=True)
class Match:
    """A request path matched to a configured route: the route's index and the upstream path."""

    index: int
    upstream_path: str  # the path the upstream sees (the prefix stripped when configured)
    strip: int  # characters stripped from the front of the path (0 or the prefix length)


class RouteTable:
    """Configured path prefixes, longest first."""

    def __init__(self, prefixes: Sequence[tuple[str, bool]]) -> None:
        """``prefixes``: (prefix, strip_prefix) per configured route, in configuration order."""
        normalised = []
        for index, (prefix, strip) in enumerate(prefixes):
            if not prefix.startswith("/"):
                raise RouteError(f"route prefix {prefix!r} must start with '/'")
            normalised.append((prefix.rstrip("/") or "/", strip, index))
        self._entries = sorted(normalised, key=lambda e: -len(e[0]))

    def match(self, path: str) -> Match | None:
        for prefix, strip, index in self._entries:
            if prefix == "/":
                return Match(index, path, 0)
            if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
                if not strip:
                    return Match(index, path, 0)
                rest = path[len(prefix) :] or "/"
                return Match(index, rest, len(prefix))
        return None
