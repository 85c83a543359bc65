"""The model registry: a directory of version directories, an active pointer per scope, a log.

Layout of ``RISKGUARD_MODEL_DIR`` (default ``./models``)::

    m-<16 hex>/            one sealed version each (see artifact.py); the name is its version
    active/<scope>.json    which version is active for a scope: "default", or a tenant id
    activations.jsonl      every activation and rollback, one JSON object a line, appended

Activation verifies the whole artifact (hashes, and that it builds into a model), appends the
record to the log (fsync), then writes the new pointer to a temporary file and ``os.replace``s
it over the old one: a reader sees the old version or the new one, never a partial file, and no
version is ever active without a record of who activated it. A lock file serialises writers
(processes included). Rollback returns a scope to the version active before the current one,
by replaying the scope's log as a stack (an activation pushes, a rollback pops).

A tenant's scope falls back to ``default`` until the tenant activates a version of its own, so
operators can set a deployment-wide model and tenants can override it without affecting each
other. Readers (the service) poll the pointer file's stamp — one ``stat`` per interval — and
reload only when it changes (:class:`ActiveModel`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from riskguard.adapters.ml.artifact import (
    ArtifactError,
    Manifest,
    is_version,
    read_artifact,
    read_manifest,
)
from riskguard.adapters.ml.serving import ServedModel, build_model, load_model

DEFAULT_SCOPE: Final = "default"
MODEL_DIR_ENV: Final = "RISKGUARD_MODEL_DIR"
_SCOPE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
LOG: Final = "activations.jsonl"


class RegistryError(Exception):
    """A registry operation that cannot be done; the message says why."""


class UnknownVersionError(RegistryError):
    """No such version in the registry (404)."""


class NothingToRollBackError(RegistryError):
    """The scope has no earlier version of its own to return to."""


def is_scope(name: str) -> bool:
    """Whether ``name`` can be a registry scope (``default`` or a tenant id)."""
    return _SCOPE.match(name) is not None


def default_model_dir() -> Path:
    """``RISKGUARD_MODEL_DIR``, or ``./models``."""
    return Path(os.environ.get(MODEL_DIR_ENV) or "models")


@dataclass(frozen=True, slots=True)
class Activation:
    """One line of the activation log."""

    at: str
    scope: str
    action: str  # "activate" | "rollback"
    version: str
    previous: str | None
    actor: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Listed:
    """A version directory as ``list`` shows it: its manifest, or why it is unusable."""

    name: str
    manifest: Manifest | None
    error: str | None


class ModelRegistry:
    """One registry directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- reading -------------------------------------------------------------------------------

    def _pointer(self, scope: str) -> Path:
        if not _SCOPE.match(scope):
            raise RegistryError(f"invalid scope {scope!r}")
        return self.root / "active" / f"{scope}.json"

    def versions(self, *, verify: bool = True) -> list[Listed]:
        """Every version directory, newest first; ``verify`` checks every file's hash."""
        out: list[Listed] = []
        if not self.root.is_dir():
            return out
        for entry in sorted(self.root.iterdir()):
            if not is_version(entry.name) or not entry.is_dir():
                continue
            try:
                manifest = read_artifact(entry)[0] if verify else read_manifest(entry)
                if manifest.version != entry.name:
                    raise ArtifactError(f"holds version {manifest.version}, not {entry.name}")
            except ArtifactError as exc:
                out.append(Listed(entry.name, None, str(exc)))
                continue
            out.append(Listed(entry.name, manifest, None))
        out.sort(key=lambda item: item.manifest.created_at if item.manifest else "", reverse=True)
        return out

    def own_active(self, scope: str) -> str | None:
        """The version the scope itself points at (no fallback), or None."""
        path = self._pointer(scope)
        try:
            document = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RegistryError(f"cannot read {path}: {exc}") from None
        version = document.get("version") if isinstance(document, dict) else None
        if not isinstance(version, str) or not is_version(version):
            raise RegistryError(f"{path} does not name a version")
        return version

    def active(self, scope: str = DEFAULT_SCOPE) -> str | None:
        """The version active for ``scope`` (a tenant falls back to the default scope)."""
        own = self.own_active(scope)
        if own is None and scope != DEFAULT_SCOPE:
            return self.own_active(DEFAULT_SCOPE)
        return own

    def pointer_stamp(self, scope: str) -> tuple[int, int, int] | None:
        """What changes when a scope's pointer is replaced (inode, mtime, size), or None."""
        try:
            st = os.stat(self._pointer(scope))
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def history(self, scope: str | None = None) -> list[Activation]:
        """The activation log (of one scope, or all), oldest first."""
        path = self.root / LOG
        try:
            lines = path.read_text("utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = Activation(**json.loads(line))
            except (ValueError, TypeError) as exc:
                raise RegistryError(
                    f"{path}:{number} is not an activation record ({exc})"
                ) from None
            if scope is None or record.scope == scope:
                out.append(record)
        return out

    def model(self, version: str) -> ServedModel:
        """Load one version (verified); raises UnknownVersionError or ArtifactError."""
        return load_model(self._version_dir(version))

    def _version_dir(self, version: str) -> Path:
        if not is_version(version):
            raise UnknownVersionError(f"{version!r} is not a model version (m-<16 hex>)")
        directory = self.root / version
        if not directory.is_dir():
            raise UnknownVersionError(f"no model version {version} in {self.root}")
        return directory

    # -- writing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def activate(
        self, version: str, *, scope: str = DEFAULT_SCOPE, actor: str = "cli"
    ) -> Activation:
        """Make ``version`` active for ``scope`` (verified first); returns the log record."""
        self._pointer(scope)  # validates the scope
        with self._locked():
            return self._switch(version, scope=scope, actor=actor, action="activate")

    def rollback(self, *, scope: str = DEFAULT_SCOPE, actor: str = "cli") -> Activation:
        """Return ``scope`` to the version active before the current one."""
        self._pointer(scope)
        with self._locked():
            stack: list[str] = []
            for record in self.history(scope):
                if record.action == "rollback" and stack:
                    stack.pop()
                else:
                    stack.append(record.version)
            if len(stack) < 2:
                raise NothingToRollBackError(
                    f"scope {scope!r} has no earlier version to roll back to"
                )
            return self._switch(stack[-2], scope=scope, actor=actor, action="rollback")

    def _switch(self, version: str, *, scope: str, actor: str, action: str) -> Activation:
        directory = self._version_dir(version)
        manifest, files = read_artifact(directory)
        if manifest.version != directory.name:
            raise ArtifactError(f"{directory} holds version {manifest.version}")
        build_model(manifest, files)  # it must load, not just hash correctly
        record = Activation(
            at=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            scope=scope,
            action=action,
            version=version,
            previous=self.own_active(scope),
            actor=actor,
        )
        with (self.root / LOG).open("a", encoding="utf-8") as log:
            log.write(json.dumps(record.to_dict(), sort_keys=True) + "\n")
            log.flush()
            os.fsync(log.fileno())
        pointer = self._pointer(scope)
        pointer.parent.mkdir(parents=True, exist_ok=True)
        staging = pointer.with_name(f".{scope}.{secrets.token_hex(4)}.tmp")
        with staging.open("w", encoding="utf-8") as fh:
            json.dump({"version": version, "activated_at": record.at, "actor": actor}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(staging, pointer)
        return record


def load_active(model_dir: str | Path, scope: str = DEFAULT_SCOPE) -> ServedModel | None:
    """The active model of ``scope`` in a registry, verified and built, or None if none is
    active. Raises RegistryError / ArtifactError when the pointer or the artifact is bad."""
    registry = ModelRegistry(model_dir)
    version = registry.active(scope)
    return None if version is None else registry.model(version)


class ActiveModel:
    """The active model of one scope, re-checked at most every ``interval`` seconds.

    ``current()`` is cheap between checks (no I/O); a check ``stat``s the pointer files and
    reloads only if one changed. A model that fails to load never replaces a working one: the
    error is kept in ``last_error`` (and passed to ``on_error``), the version that failed in
    ``failed_version``, until the pointer names a version that loads (or the one still served).
    ``load`` builds a version (default: ``ModelRegistry.model``, verified).
    """

    def __init__(
        self,
        model_dir: str | Path,
        scope: str = DEFAULT_SCOPE,
        *,
        interval: float = 1.0,
        on_error: Callable[[Exception], None] | None = None,
        load: Callable[[str], ServedModel] | None = None,
    ) -> None:
        self.registry = ModelRegistry(model_dir)
        self.scope = scope
        self.interval = interval
        self.on_error = on_error
        self.last_error: Exception | None = None
        self.failed_version: str | None = None
        self._load = load if load is not None else self.registry.model
        self._model: ServedModel | None = None
        self._stamp: object = object()  # never equal: the first check loads
        self._next = 0.0

    @property
    def model(self) -> ServedModel | None:
        """The model served now (no check)."""
        return self._model

    def current(self) -> ServedModel | None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval
            self.refresh()
        return self._model

    def refresh(self) -> bool:
        """Reload if the pointer changed; True when another model (or none) became current."""
        try:
            stamp = (
                self.registry.pointer_stamp(self.scope),
                self.registry.pointer_stamp(DEFAULT_SCOPE),
            )
        except (RegistryError, OSError) as exc:
            self._failed(exc, None)
            return False
        if stamp == self._stamp:
            return False
        self._stamp = stamp  # a failure is retried when a pointer changes, not every interval
        version: str | None = None
        try:
            version = self.registry.active(self.scope)
            if self._model is not None and self._model.version == version:
                self.last_error = self.failed_version = None
                return False
            model = None if version is None else self._load(version)
        except (RegistryError, ArtifactError, OSError) as exc:
            self._failed(exc, version)
            return False
        self.last_error = self.failed_version = None
        self._model = model
        return True

    def _failed(self, exc: Exception, version: str | None) -> None:
        repeated = self.last_error is not None and str(self.last_error) == str(exc)
        self.last_error = exc
        self.failed_version = version
        if self.on_error is not None and not repeated:
            self.on_error(exc)


AUDIT_ACTIONS: Final = {"activate": "model.activated", "rollback": "model.rolled_back"}


def audit_entry(record: Activation) -> dict[str, Any]:
    """The audit log entry of an activation or rollback (``append_one`` keyword arguments but
    the actor): the tenant of a tenant scope (None for ``default``), the action, the versions."""
    return {
        "action": AUDIT_ACTIONS[record.action],
        "tenant_id": None if record.scope == DEFAULT_SCOPE else record.scope,
        "body": {
            "scope": record.scope,
            "version": record.version,
            "previous": record.previous,
            "at": record.at,
        },
    }
