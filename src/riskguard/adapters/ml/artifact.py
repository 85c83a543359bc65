"""Model artifacts: one directory per version, a manifest and files whose hashes it lists.

A version directory holds ``manifest.json`` and exactly the files its kind needs (JSON and
LightGBM's native text; nothing is ever unpickled). The manifest names every file with its
SHA-256 and size, and the version id is a content hash of the manifest itself
(``m-`` + 16 hex of the SHA-256 of its canonical JSON without the ``version`` key), so editing a
file, editing the manifest, swapping in another version's manifest, adding or removing a file
are each detected on load.

Errors::

    ArtifactError (ValueError)     the directory is not a usable model version
    ├── ForeignArtifactError       not a riskguard model: no/invalid manifest, unknown format or
    │                              kind, files its kind does not use (a pickle, say)
    └── TamperedArtifactError      a riskguard model altered since it was written: a hash or
                                   the version does not match, a listed file is missing
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FORMAT: Final = "riskguard-model/1"
MANIFEST: Final = "manifest.json"
KINDS: Final = ("isolation_forest", "gbm", "online")
# The files each kind is made of; nothing else may sit in a version directory.
KIND_FILES: Final[Mapping[str, frozenset[str]]] = {
    "gbm": frozenset({"model.txt", "trees.json"}),
    "isolation_forest": frozenset({"forest.json"}),
    "online": frozenset({"hst.json"}),
}
VERSION_PATTERN: Final = r"^m-[0-9a-f]{16}$"
MAX_MANIFEST_BYTES: Final = 8 * 1024 * 1024
MAX_FILE_BYTES: Final = 512 * 1024 * 1024
_VERSION = re.compile(VERSION_PATTERN)

Kind = Literal["isolation_forest", "gbm", "online"]
PathType = Literal["number", "bool", "string"]


class ArtifactError(ValueError):
    """A directory that is not a usable model version; the message says why."""


class ForeignArtifactError(ArtifactError):
    """Not a riskguard model artifact (or one of a format or kind this version cannot read)."""


class TamperedArtifactError(ArtifactError):
    """A riskguard model artifact whose content changed after it was written."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FileEntry(_Strict):
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    bytes: Annotated[int, Field(ge=0)]


class InputSpec(_Strict):
    """One model input: a name and the expression (a path, or arithmetic over paths) it reads."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    expr: Annotated[str, Field(min_length=1, max_length=1024)]


class DataFile(_Strict):
    name: str
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    bytes: Annotated[int, Field(ge=0)]


class Training(_Strict):
    """Where a model came from: enough to retrain it and to know what it has seen."""

    dataset: Literal["creditcard", "fdh", "events"]
    data_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]  # inputs + parameters
    files: tuple[DataFile, ...]
    params: dict[str, Any]
    train_range: tuple[str, str]
    test_range: tuple[str, str] | None = None
    first_event: str
    last_event: str
    rows: Annotated[int, Field(ge=1)]
    positives: Annotated[int, Field(ge=0)]


class Bins(_Strict):
    """A binned reference distribution: ``edges`` split the real line into len(edges) + 1
    bins; ``expected`` holds their shares plus, last, the share of missing values."""

    edges: tuple[float, ...]
    expected: tuple[float, ...]


class Monitoring(_Strict):
    score: Bins
    features: dict[str, Bins]


class Explain(_Strict):
    method: Literal["treeshap", "path"]
    base_score: float
    top_features: tuple[str, ...]


class Manifest(_Strict):
    """``manifest.json``: what a model is, what it reads, how it was made and its hashes."""

    format: Literal["riskguard-model/1"]
    kind: Kind
    version: Annotated[str, Field(pattern=VERSION_PATTERN)]
    created_at: str
    event_types: tuple[Literal["transaction", "login", "session", "api_call"], ...]
    inputs: tuple[InputSpec, ...] = Field(min_length=1)
    paths: dict[str, PathType]
    training: Training
    metrics: dict[str, dict[str, Any]]
    calibration: dict[str, Any]
    threshold: Annotated[float, Field(gt=0.0, lt=1.0)]
    monitoring: Monitoring
    explain: Explain
    libraries: dict[str, str]
    files: dict[str, FileEntry]

    def summary(self) -> dict[str, Any]:
        """The fields a listing shows."""
        return {
            "version": self.version,
            "kind": self.kind,
            "created_at": self.created_at,
            "dataset": self.training.dataset,
            "event_types": list(self.event_types),
            "inputs": len(self.inputs),
            "train_range": list(self.training.train_range),
            "metrics": self.metrics.get("test") or self.metrics.get("validation") or {},
        }


def canonical(document: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, no spaces, UTF-8): what hashes are taken over."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def content_version(manifest: Mapping[str, Any]) -> str:
    """The version id of a manifest document: a hash of everything but ``version``."""
    body = {k: v for k, v in manifest.items() if k != "version"}
    return "m-" + hashlib.sha256(canonical(body)).hexdigest()[:16]


def sha256_file(path: Path) -> tuple[str, int]:
    """SHA-256 hex digest and size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def is_version(text: str) -> bool:
    return bool(_VERSION.match(text))


def seal(document: dict[str, Any], files: Mapping[str, bytes]) -> Manifest:
    """Complete a manifest document with the files' hashes and the version; validate it."""
    kind = str(document.get("kind"))
    if kind not in KIND_FILES or set(files) != KIND_FILES[kind]:
        raise ValueError(f"a {kind} model is made of {sorted(KIND_FILES.get(kind, ()))}")
    document = dict(document)
    document["format"] = FORMAT
    document["files"] = {
        name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        for name, data in sorted(files.items())
    }
    document.pop("version", None)
    document["version"] = content_version(document)
    return Manifest.model_validate(document)


def write_artifact(root: Path, manifest: Manifest, files: Mapping[str, bytes]) -> Path:
    """Write a sealed model under ``root/<version>`` atomically (a temporary directory renamed
    into place); an existing directory of the same version is verified and kept."""
    root.mkdir(parents=True, exist_ok=True)
    target = root / manifest.version
    if target.exists():
        read_artifact(target)  # the same content hash: it must be intact
        return target
    staging = root / f".tmp-{manifest.version}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        for name, data in files.items():
            _write_synced(staging / name, data)
        body = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True)
        _write_synced(staging / MANIFEST, body.encode() + b"\n")
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_dir(root)
    return target


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(directory: Path) -> Manifest:
    """The validated manifest of a version directory (files not checked: see read_artifact)."""
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ForeignArtifactError(f"{directory} is not a model directory")
    if path.is_symlink() or not path.is_file():
        raise ForeignArtifactError(f"{directory} has no {MANIFEST}: not a riskguard model")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ForeignArtifactError(f"{path} is too large to be a manifest")
    try:
        document = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ForeignArtifactError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ForeignArtifactError(f"{path} is not a JSON object")
    if document.get("format") != FORMAT:
        raise ForeignArtifactError(
            f"{path}: unknown artifact format {document.get('format')!r} (expected {FORMAT!r})"
        )
    if document.get("kind") not in KINDS:
        raise ForeignArtifactError(
            f"{path}: unknown model kind {document.get('kind')!r} (expected one of "
            + ", ".join(KINDS)
            + ")"
        )
    try:
        manifest = Manifest.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(manifest)'}: {e['msg']}"
            for e in exc.errors()[:5]
        )
        raise ForeignArtifactError(f"{path} is not a valid manifest: {problems}") from None
    if content_version(document) != manifest.version:
        raise TamperedArtifactError(
            f"{path} was altered: its content does not hash to its version {manifest.version}"
        )
    if set(manifest.files) != KIND_FILES[manifest.kind]:
        raise ForeignArtifactError(
            f"{path} lists files {sorted(manifest.files)}; a {manifest.kind} model is made of "
            f"{sorted(KIND_FILES[manifest.kind])}"
        )
    return manifest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def read_artifact(directory: Path) -> tuple[Manifest, dict[str, bytes]]:
    """Verify a version directory and return its manifest and files; raises ArtifactError."""
    manifest = read_manifest(directory)
    expected = set(manifest.files) | {MANIFEST}
    found = {}
    for entry in directory.iterdir():
        if entry.is_symlink() or not entry.is_file():
            raise ForeignArtifactError(f"{entry} is not a regular file; refusing the model")
        found[entry.name] = entry
    extra = sorted(set(found) - expected)
    if extra:
        raise ForeignArtifactError(
            f"{directory} holds files its manifest does not list: {', '.join(extra)}; "
            "refusing the model (nothing in a model directory is ever loaded unless hashed)"
        )
    files: dict[str, bytes] = {}
    for name, listed in sorted(manifest.files.items()):
        path = found.get(name)
        if path is None:
            raise TamperedArtifactError(f"{directory} is missing {name}")
        if path.stat().st_size != listed.bytes or listed.bytes > MAX_FILE_BYTES:
            raise TamperedArtifactError(f"{path} was altered: its size does not match")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != listed.sha256:
            raise TamperedArtifactError(f"{path} was altered: its SHA-256 does not match")
        files[name] = data
    return manifest, files
