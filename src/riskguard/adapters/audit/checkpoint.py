"""Signed checkpoints: C2SP tlog-checkpoint notes signed per C2SP signed-note with Ed25519.

A checkpoint's note text is three lines, each ending in a newline::

    <origin>
    <tree size, decimal, no leading zeros>
    <root hash, standard base64>

A signed note is that text, a blank line, then signature lines ``— <key name> <base64(key ID
|| signature)>`` (U+2014 em dash, a space). The Ed25519 signature covers the note text with its
final newline. The key ID is the first four bytes, big-endian, of
``SHA-256(key name || 0x0A || 0x01 || 32-byte public key)``. The log's key name is its origin.

Keys use the text forms of Go's ``golang.org/x/mod/sumdb/note`` so the usual tools read them:

- signer key (secret): ``PRIVATE+KEY+<name>+<key ID, 8 hex>+<base64(0x01 || 32-byte seed)>``
- verifier key ("vkey"): ``<name>+<key ID, 8 hex>+<base64(0x01 || 32-byte public key)>``

:func:`open_note` follows the spec's rules: signatures from unknown keys (name or ID differ)
are ignored; a known key whose signature fails rejects the whole note; a note with no verified
signature from a known key is rejected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from riskguard.adapters.audit.merkle import HASH_SIZE

ED25519 = 0x01
SIGNATURE_PREFIX = "\u2014 "
MAX_SIGNATURES = 100
MAX_NOTE_BYTES = 1 << 20
_NAME = re.compile(r"^[^\s+]+$")
_DECIMAL = re.compile(r"^(0|[1-9][0-9]*)$")


class InvalidNote(ValueError):
    """A note or key that is malformed or whose signature does not verify."""


def _check_name(name: str) -> str:
    if not _NAME.match(name) or any(ord(c) < 0x20 for c in name):
        raise InvalidNote(f"invalid key name {name!r}: non-empty, no spaces and no '+'")
    return name


def key_id(name: str, public_key: bytes) -> int:
    """The signed-note key ID of an Ed25519 key."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise InvalidNote(f"{what} is not valid base64") from None


@dataclass(frozen=True, slots=True)
class NoteVerifier:
    """An Ed25519 public key with its name: checks signatures on notes."""

    name: str
    public_key: bytes  # 32 bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        if len(self.public_key) != 32:
            raise InvalidNote("an Ed25519 public key is 32 bytes")

    @property
    def key_id(self) -> int:
        return key_id(self.name, self.public_key)

    @property
    def vkey(self) -> str:
        """The verifier key text: ``<name>+<key ID>+<base64(0x01 || public key)>``."""
        encoded = base64.b64encode(bytes([ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id:08x}+{encoded}"

    @classmethod
    def from_vkey(cls, text: str) -> NoteVerifier:
        """Parse a verifier key; its key ID must match its name and key."""
        parts = text.strip().split("+", 2)  # base64 may hold '+' too
        if len(parts) != 3:
            raise InvalidNote("a verifier key is <name>+<key id>+<base64 key>")
        name, hex_id, encoded = parts
        raw = _b64decode(encoded, "the verifier key")
        if len(raw) != 33 or raw[0] != ED25519:
            raise InvalidNote("the verifier key is not an Ed25519 key")
        verifier = cls(_check_name(name), raw[1:])
        if not re.fullmatch(r"[0-9a-f]{8}", hex_id) or int(hex_id, 16) != verifier.key_id:
            raise InvalidNote("the verifier key's ID does not match its name and key")
        return verifier

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


class NoteSigner:
    """An Ed25519 private key with its name: signs notes."""

    __slots__ = ("_key", "name", "verifier")

    def __init__(self, name: str, key: Ed25519PrivateKey) -> None:
        self.name = _check_name(name)
        self._key = key
        public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.verifier = NoteVerifier(name, public)

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        return cls(name, Ed25519PrivateKey.generate())

    @property
    def key_id(self) -> int:
        return self.verifier.key_id

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    @property
    def skey(self) -> str:
        """The signer key text (secret): ``PRIVATE+KEY+<name>+<key ID>+<base64(0x01||seed)>``."""
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        seed = self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        encoded = base64.b64encode(bytes([ED25519]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.key_id:08x}+{encoded}"

    @classmethod
    def from_skey(cls, text: str) -> NoteSigner:
        """Parse a signer key; its key ID must match its name and key."""
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise InvalidNote("a signer key is PRIVATE+KEY+<name>+<key id>+<base64 seed>")
        _, _, name, hex_id, encoded = parts
        raw = _b64decode(encoded, "the signer key")
        if len(raw) != 33 or raw[0] != ED25519:
            raise InvalidNote("the signer key is not an Ed25519 key")
        signer = cls(_check_name(name), Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if not re.fullmatch(r"[0-9a-f]{8}", hex_id) or int(hex_id, 16) != signer.key_id:
            raise InvalidNote("the signer key's ID does not match its name and key")
        return signer

    def __repr__(self) -> str:  # never the key
        return f"NoteSigner({self.verifier.vkey!r})"


def _check_text(text: str) -> bytes:
    if not text.endswith("\n"):
        raise InvalidNote("note text must end in a newline")
    if "\n\n" in text or text.startswith("\n"):
        raise InvalidNote("note text must not contain empty lines")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise InvalidNote("note text must not contain control characters")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidNote("note text must be valid UTF-8") from None


def sign_note(text: str, signer: NoteSigner) -> str:
    """``text`` (newline-terminated, no empty lines) signed by ``signer``."""
    message = _check_text(text)
    signature = signer.key_id.to_bytes(4, "big") + signer.sign(message)
    return f"{text}\n{SIGNATURE_PREFIX}{signer.name} {base64.b64encode(signature).decode()}\n"


def open_note(note: str, verifiers: Sequence[NoteVerifier]) -> tuple[str, list[NoteVerifier]]:
    """The text of ``note`` and the known keys whose signatures verified; raises InvalidNote
    when the note is malformed, a known key's signature fails, or no known key signed it."""
    try:
        size = len(note.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidNote("the note is not valid UTF-8") from None
    if size > MAX_NOTE_BYTES:
        raise InvalidNote("the note is too large")
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise InvalidNote("the note contains control characters")
    if not note.endswith("\n"):
        raise InvalidNote("the note does not end in a newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise InvalidNote("the note has no signatures")
    text, signature_block = note[: split + 1], note[split + 2 :]
    if not signature_block:
        raise InvalidNote("the note has no signatures")
    lines = signature_block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise InvalidNote("the note has too many signatures")
    message = text.encode("utf-8")  # the text may hold empty lines
    known = {(v.name, v.key_id): v for v in verifiers}
    verified: list[NoteVerifier] = []
    for line in lines:
        if not line.startswith(SIGNATURE_PREFIX):
            raise InvalidNote("a signature line does not start with an em dash and a space")
        name, sep, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
        if not sep or not name or " " in encoded:
            raise InvalidNote("a signature line is not '— <name> <signature>'")
        _check_name(name)
        raw = _b64decode(encoded, "a signature")
        if len(raw) < 5:
            raise InvalidNote("a signature is too short")
        verifier = known.get((name, int.from_bytes(raw[:4], "big")))
        if verifier is None:
            continue  # an unknown key (a witness, a rotated key): ignored, per the spec
        if not verifier.verify(message, raw[4:]):
            raise InvalidNote(f"the signature of {name} does not verify")
        if verifier not in verified:
            verified.append(verifier)
    if not verified:
        raise InvalidNote("no known key signed the note")
    return text, verified


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's tree head: its origin, its size and the RFC 6962 root at that size."""

    origin: str
    size: int
    root_hash: bytes

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise InvalidNote("the origin is one non-empty line")
        if self.size < 0:
            raise InvalidNote("the tree size is not negative")
        if len(self.root_hash) != HASH_SIZE:
            raise InvalidNote("the root hash is 32 bytes")

    def text(self) -> str:
        root = base64.b64encode(self.root_hash).decode()
        return f"{self.origin}\n{self.size}\n{root}\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """The checkpoint of a note text (extension lines are refused: this log writes none)."""
        lines = text.split("\n")
        if len(lines) != 4 or lines[3] != "":
            raise InvalidNote("a checkpoint is exactly three lines: origin, size, root hash")
        origin, size, root = lines[:3]
        if not _DECIMAL.match(size):
            raise InvalidNote("the tree size is not a decimal number without leading zeros")
        return cls(origin, int(size), _b64decode(root, "the root hash"))


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner) -> str:
    """The signed note of ``checkpoint``; the signer's name must be its origin."""
    if signer.name != checkpoint.origin:
        raise InvalidNote(f"key {signer.name!r} cannot sign for origin {checkpoint.origin!r}")
    return sign_note(checkpoint.text(), signer)


def open_checkpoint(note: str, verifier: NoteVerifier) -> Checkpoint:
    """The checkpoint in ``note``, signed by ``verifier`` for its own origin."""
    text, _ = open_note(note, [verifier])
    checkpoint = Checkpoint.parse(text)
    if checkpoint.origin != verifier.name:
        raise InvalidNote(
            f"the checkpoint is for origin {checkpoint.origin!r}, not {verifier.name!r}"
        )
    return checkpoint
