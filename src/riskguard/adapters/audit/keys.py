"""The audit log's settings and where its signing key comes from.

``RISKGUARD_AUDIT_SIGNING_KEY`` names a file holding the Ed25519 signer key in the signed-note
text form (``PRIVATE+KEY+<name>+<id>+<seed>``, see :mod:`.checkpoint`); the key's name is the
log's origin. ``riskguard audit keygen`` writes one (mode 0600) and prints its public
verifier key, which auditors keep and pass to ``riskguard audit verify --public-key``.

- Development (``RISKGUARD_ENV`` unset or ``development``): without the variable the key is
  ``./riskguard-audit.key`` (beside the embedded database); a missing key file is generated
  on first use, named ``RISKGUARD_AUDIT_ORIGIN``. Convenient, and only acceptable because a
  development log proves nothing to anyone else.
- Production: the variable must name an existing key file that only its owner can read
  (no group or other permission bits); nothing is ever generated — a new key would silently
  start a log no auditor can check against the key they hold.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from riskguard.adapters.audit.chain import CheckpointPolicy
from riskguard.adapters.audit.checkpoint import InvalidNote, NoteSigner, NoteVerifier

DEFAULT_ORIGIN = "riskguard.local/audit"
DEV_KEY_PATH = Path("riskguard-audit.key")


class AuditKeyError(ValueError):
    """The signing or verifier key cannot be used; the message says why (never the key)."""


class AuditSettings(BaseSettings):
    """``RISKGUARD_AUDIT_*`` (and ``RISKGUARD_ENV``)."""

    model_config = SettingsConfigDict(
        env_prefix="RISKGUARD_AUDIT_", extra="ignore", frozen=True, populate_by_name=True
    )

    env: Literal["development", "production"] = Field(
        default="development", validation_alias="RISKGUARD_ENV"
    )
    signing_key: Path | None = None
    origin: str = Field(default=DEFAULT_ORIGIN, pattern=r"^[^\s+]+$")
    public_key: str | None = None  # a vkey (or a file holding one) for `audit verify`
    checkpoint_every: int = Field(default=1000, ge=1, le=100_000_000)
    checkpoint_interval_s: float = Field(default=60.0, gt=0, le=86_400)
    batch_max: int = Field(default=1024, ge=1, le=100_000)

    @property
    def policy(self) -> CheckpointPolicy:
        return CheckpointPolicy(self.checkpoint_every, self.checkpoint_interval_s)

    @property
    def key_path(self) -> Path | None:
        """The signer key file (None in production when none is configured)."""
        if self.signing_key is not None:
            return self.signing_key
        return DEV_KEY_PATH if self.env == "development" else None


def read_signer(path: Path) -> NoteSigner:
    """The signer key in ``path``."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise AuditKeyError(f"no audit signing key at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditKeyError(
            f"cannot read the audit signing key {path}: {type(exc).__name__}"
        ) from None
    try:
        return NoteSigner.from_skey(text)
    except InvalidNote as exc:
        raise AuditKeyError(f"{path} is not an audit signing key: {exc}") from None


def write_new_key(path: Path, name: str) -> NoteSigner:
    """Generate a signer key named ``name`` into ``path`` (mode 0600). Refuses to replace an
    existing file; two processes racing to create one end up sharing the winner's key."""
    signer = NoteSigner.generate(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".riskguard-key-")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(signer.skey + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.link(tmp, path)  # atomic, and fails if the file exists
    except FileExistsError:
        raise AuditKeyError(f"{path} exists already: refusing to replace a signing key") from None
    finally:
        os.unlink(tmp)
    return signer


def load_signer(settings: AuditSettings) -> NoteSigner:
    """The log's signer key, as the module docstring describes."""
    path = settings.key_path
    if path is None:
        raise AuditKeyError("RISKGUARD_AUDIT_SIGNING_KEY must name the audit signing key file")
    if settings.env == "development" and not path.exists():
        try:
            return write_new_key(path, settings.origin)
        except AuditKeyError:
            pass  # another process created it first: use that one
    if settings.env == "production":
        try:
            mode = path.stat().st_mode
        except OSError:
            raise AuditKeyError(f"no audit signing key at {path}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AuditKeyError(f"{path} is readable by others: chmod 600 it")
    return read_signer(path)


def load_verifier(value: str) -> NoteVerifier:
    """A verifier key given as its text or as a file holding it (a signer key file is read
    for its public half)."""
    text = value.strip()
    if "+" not in text or os.path.exists(text):
        try:
            text = Path(text).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise AuditKeyError(
                f"cannot read the public key {value!r}: {type(exc).__name__}"
            ) from None
    try:
        if text.startswith("PRIVATE+KEY+"):
            return NoteSigner.from_skey(text).verifier
        return NoteVerifier.from_vkey(text)
    except InvalidNote as exc:
        raise AuditKeyError(f"not an audit verifier key: {exc}") from None
