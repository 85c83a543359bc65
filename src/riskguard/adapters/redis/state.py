"""Feature state in Redis, shared by every server process: one round trip per event.

:class:`RedisStateStore` implements :class:`~riskguard.ports.SharedStateStore`. Each ``apply``
is one ``EVALSHA`` of ``state.lua`` (shipped beside this module) carrying the event's
idempotency claim and every feature op; the script takes the claim (``SET NX EX``) and, only if it
was free, reads, steps and writes back every state the event touches, then returns what the
Python step needs to write the outputs. A script runs atomically, so any number of processes
sharing one Redis see the same sequence of states as one process would: the values depend only
on the order Redis runs the scripts in, exactly as the in-memory store's depend on call order.

**Exactly the in-memory values.** :class:`~riskguard.engine.state.InMemoryStateStore` is the
reference and the outputs here are identical to it, float for float, types included (the
integration tests compare them event by event). The work is split so that each side only does
what it can do bit for bit:

- Python, before the call: ``ts // width`` bucket indices and ``ts // 3600`` (Python's float
  floor division is not Lua's ``math.floor(a / b)``), ``log1p`` of baseline values, 8-byte
  BLAKE2b digests of distinct/novelty values (the text of a string, ``repr`` of anything else —
  the rule of ``features._digest``, but stable across processes, unlike ``hash()``), canonical
  bytes of continuity attributes (so ``1 == 1.0 == True`` holds as in Python).
- Lua: only ``+ - * /``, comparisons and ``fmod`` on doubles (IEEE operations, the same on both
  sides; Lua's VM never fuses a multiply and an add), in the same order as the Python step:
  bucket expiry, Welford, the hourly folds and halving, the recent-values maps (same order and
  eviction as ``see_recent``). When a velocity sum bucket expires, the total is recomputed the
  way Python's ``sum()`` does it — plainly up to 3.11, with Neumaier compensation from 3.12 (the
  client says which).
- Python, after the call: everything derived for outputs only — ``round(total, 6)``, ``sqrt``,
  ``expm1``/``exp``, z-scores, shares, ages, haversine distances — from the pre-event state the
  script returns (post-event for velocity windows, which count the event itself).

Numbers cross the wire as little-endian doubles (``struct`` on both sides), never as text.

**Keys.** ``<prefix>:{<tenant>:<entity>}:<feature>@<fingerprint>`` for state (the engine's op key
``"<feature>@<fingerprint>|<entity>"`` split at its first ``|``) and
``<prefix>:{<tenant>:<event id>}:claim`` for claims. The hash tag puts every feature of one entity
in one Redis Cluster slot. This class runs against a standalone Redis (or a primary with
replicas): one script declares every key it touches in ``KEYS``, whatever their slots. *Cluster
mode* (not implemented) would take the claim first with a plain ``SET NX EX`` on the claim's slot,
then group the ops by the slot of their key (``CLUSTER KEYSLOT``/CRC16 of the hash tag), send one
``EVALSHA`` per group to that slot's node (pipelined, concurrently) and ``DEL`` the claim if any
group failed; atomicity then holds per entity (every op of one entity is in one group), which is
what the feature values depend on, but not across the whole event.

**State encoding.** One string per key, doubles packed with ``struct``: velocity a header (count
and sum per window, then the last bucket per window), then per window its 13 slots (count and
sum each), then the distinct map (8-byte digests, then one double per value); a velocity without
a sum path keeps no sums (they would stay 0.0), which halves it. Baseline 3 doubles; hour
profile 30; novelty a flag, the first time and its map; geo velocity time, lat, lon and the
country; continuity the event count and each attribute's first value; last seen one double. The
default pack's largest state is the payment velocity (4 windows and a 16-value map: about
1.2 KB). A state is written back (``SET ... EX``) only when the event changed it.

**Expiry.** Every write sets the key's TTL: velocity the longest window plus one bucket width
(rounded up to whole seconds), continuity 7 days, the other kinds ``profile_ttl_s`` (90 days).
Expiry does not change velocity values: once the newest event of an entity is a longest window
plus a bucket width old, the next event expires every bucket anyway and its counts, sums and
distinct counts read exactly as from a fresh state (stale distinct values sit behind the horizon
where the walk stops). That holds as long as event times advance with the clock; an event
arriving that much later than the entity's previous one *in wall time* while being less than a
window apart *in event time* (a feed replayed slower than real time, a late event after a long
pause) starts from a fresh window. For profiles expiry is a real change of values: a baseline,
hour profile, novelty map, location or last-seen time untouched by any write for 90 days is
forgotten and the entity starts afresh, as does a session's continuity after 7 days. An event
that leaves a state unchanged (its ``when`` filter false, nothing pending to fold) does not
extend the state's life.

**The client.** The hot path does not go through redis-py: :mod:`.resp` is a small asyncio
protocol (hiredis parses the replies) with one command in flight per connection, and the store
keeps its own stack of idle connections and count of free ones (``max_connections``). The
command is packed by hiredis from the keys and op blobs, whose constant parts (kind, TTL as
text, struct formats) each codec builds once. AUTH (password, or ACL user and password), the
database number and a client name come from the URL, over TCP or a Unix socket; ``rediss://``
(TLS) keeps redis-py's connections for the hot path too. ``ping`` and ``release`` always use
redis-py.

**Failures.** Every Redis error, timeout or refused connection raises
:class:`~riskguard.ports.DependencyUnavailable` (the URL's password never appears in the
message). Commands are not retried — an ``EVALSHA`` that timed out (or whose caller was
cancelled) after it was sent may have run, claim included — and a connection that failed, timed
out or was cancelled is closed, never reused (its reply may still be on the way); connections the
server closed while idle are noticed and replaced, so the store reconnects on the next call when
Redis is back. ``env`` is only written once the reply is in, so a failed call leaves it
untouched; a Redis restarted empty answers ``NOSCRIPT`` and the store falls back to ``EVAL``
with the script text, which loads it again.

**Cost.** Measured on the default pack's simulated traffic (6.2 feature ops an event, claims
on; a shared 2-vCPU VM, Redis 7.0 on the same host, medians of interleaved runs; the VM is noisy,
so instruction counts under callgrind were used to compare variants): the script costs about
100 µs of Redis CPU per event (``usec_per_call`` of ``EVALSHA``; 370k instructions, a third less
than the first version), some 15 µs of it the fixed cost of any script call that takes a claim.
In the script, a redis.call costs about as much as 2 KB of string handling, and Redis's Lua hashes
every byte of every string it creates, so the script reads all states with one MGET, unpacks only
the doubles an event needs and copies the rest as slices; closures are avoided (each one created
per call cost more than some steps). The client spends about 25 µs of Python per event encoding
the ops and decoding the reply, and about half the CPU per call of the redis-py path it replaced.
State costs 24 bytes (a baseline) to 1.1 KB (the payment velocity) a key, plus Redis's per-key
overhead of about 110 bytes; a claim about 180 bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import struct
from collections import deque
from collections.abc import Sequence
from importlib import resources
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from riskguard.adapters.redis.resp import (
    Endpoint,
    ReplyErrorRaised,
    RespConnection,
    open_connection,
)
from riskguard.engine.features import (
    KEY_SEPARATOR,
    Baseline,
    Continuity,
    Env,
    FeatureKind,
    FeatureOp,
    GeoVelocity,
    HourProfile,
    LastSeen,
    Novelty,
    Velocity,
    haversine_km,
)
from riskguard.ports import Claim, DependencyUnavailable

SCRIPT: Final = resources.files("riskguard.adapters.redis").joinpath("state.lua").read_text("utf-8")
SCRIPT_SHA: Final = hashlib.sha1(SCRIPT.encode("utf-8")).hexdigest()
CONTINUITY_TTL_S: Final = 7 * 86_400

# Python 3.12 made sum() of floats compensated (Neumaier); the script must add bucket sums the
# way the in-memory store's interpreter does.
_COMPENSATED_SUM: Final = sum([1.0, 1e100, 1.0, -1e100]) == 2.0

_VELOCITY, _BASELINE, _HOUR_PROFILE, _NOVELTY, _GEO, _CONTINUITY, _LAST_SEEN = range(1, 8)

_HEADER = struct.Struct("<BB")
_DOUBLES3 = struct.Struct("<ddd")
_DOUBLES5 = struct.Struct("<ddddd")
_FLAG_DOUBLE = struct.Struct("<Bd")
_NOVELTY_REPLY = struct.Struct("<dBdBd")
_GEO_ARGS = struct.Struct("<Bddd")
_GEO_STATE = struct.Struct("<dddB")
_LENGTH = struct.Struct("<I")
_ATTRIBUTE = struct.Struct("<BI")
_DOUBLE = struct.Struct("<d")
_ABSENT_ATTRIBUTE: Final = _ATTRIBUTE.pack(0, 0)
_NO_DIGEST: Final = bytes(8)


_DIGESTS: dict[str, bytes] = {}  # value_digest of recent strings (ids repeat across events)


def value_digest(value: Any) -> bytes:
    """8 bytes naming a distinct/novelty value: the in-memory rule (a string's text, ``repr`` of
    anything else), hashed with BLAKE2b so every process agrees."""
    if value.__class__ is str:
        digest = _DIGESTS.get(value)
        if digest is None:
            if len(_DIGESTS) >= 50_000:
                _DIGESTS.clear()
            digest = _DIGESTS[value] = hashlib.blake2b(
                value.encode("utf-8", "surrogatepass"), digest_size=8
            ).digest()
        return digest
    text = repr(value)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def canonical_bytes(value: Any) -> bytes:
    """Bytes equal for two attribute values exactly when Python's ``==`` says they are equal.

    Numbers (bool, int, float) compare by value (``1 == 1.0 == True``), NaN is ``b"N"``, which
    the script treats as equal to nothing; strings by text; anything else by ``repr``.
    """
    if value.__class__ is str:
        return b"s" + value.encode("utf-8", "surrogatepass")
    if isinstance(value, bool | int | float):
        if value != value:
            return b"N"
        try:
            as_float = float(value)
        except OverflowError:
            return b"i" + str(int(value)).encode()
        if as_float == value:
            return b"n" + _DOUBLE.pack(as_float + 0.0)  # + 0.0: -0.0 == 0.0
        return b"i" + str(int(value)).encode()
    return b"r" + repr(value).encode("utf-8", "surrogatepass")


def _ttl(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def _text(data: bytes) -> bytes:
    """``data`` as the script reads a struct ``Bc0``: a length byte, then the bytes."""
    if len(data) > 255:
        raise ValueError("too long for the script's Bc0 field")
    return bytes([len(data)]) + data


def _op_prefix(kind: int, ttl: int) -> bytes:
    """The start of every op blob: the kind, then the key's TTL in seconds as text (what the
    script passes to ``SET ... EX`` as it is)."""
    return bytes([kind]) + _text(str(ttl).encode())


# --------------------------------------------------------------------------------------------
# Codecs: per feature kind, the op blob sent to the script and the outputs built from its reply.


class _Codec:
    """Encodes one feature's op for the script and decodes its reply into ``env``."""

    __slots__ = ()

    def encode(self, ts: float, update: bool, fields: Env) -> tuple[bytes, Any]:
        raise NotImplementedError

    def decode(self, reply: bytes, pos: int, ts: float, ctx: Any, env: Env) -> int:
        """Write the outputs into ``env``; returns the position of the next op's reply."""
        raise NotImplementedError


class _VelocityCodec(_Codec):
    __slots__ = (
        "args",
        "distinct_keys",
        "distinct_path",
        "keys",
        "prefix",
        "reply",
        "sum_keys",
        "sum_path",
        "widths",
    )

    def __init__(self, kind: Velocity) -> None:
        windows = kind._windows
        distinct = kind._distinct if kind.distinct_path is not None else ()
        self.widths = tuple(width for width, _, _ in windows)
        self.sum_keys = tuple((count, total) for _, count, total in windows if total is not None)
        self.distinct_keys = tuple(key for _, key in distinct)
        # Without sums the reply's values are the outputs as they are, in order.
        self.keys = tuple(count for _, count, _ in windows) + self.distinct_keys
        self.sum_path = kind.sum_path
        self.distinct_path = kind.distinct_path
        longest = max(range(len(kind.spans)), key=lambda i: kind.spans[i])
        ttl = _ttl(kind.spans[longest] + self.widths[longest])
        nw, nd = len(windows), len(distinct)
        sums = 1 if kind.sum_path is not None else 0  # without a sum path no sums are kept
        hw = 1 + sums  # doubles per window in the header, and per slot
        # The script parses the spans and the per-event values with one struct format, sent
        # along: '<', a double per distinct span, flags, amount, ts, a bucket index per window.
        fmt = f"<{'d' * nd}Bdd{'d' * nw}".encode()
        self.prefix = (
            _op_prefix(_VELOCITY, ttl)
            + struct.pack("<BBHBB", nw, kind.slots, kind.capacity, nd, sums)
            + _text(fmt)
            + _text(f"<{'d' * (hw + 1) * nw}".encode())
            + _text(f"<{'d' * hw * kind.slots}".encode())
            + _text(f"<{'I' * nd}".encode())
            + struct.pack(f"<{nd}d", *(span for span, _ in distinct))
        )
        # The blob: the prefix, flags, amount, ts, the bucket indices and a digest (the value's,
        # or zeros: the script reads it only to record a value).
        self.args = struct.Struct(f"<{len(self.prefix)}sBdd{nw}d8s")
        # The reply: count (and sum) per window, the last bucket per window, then the distinct
        # counts as 4-byte integers (ints, as the in-memory step writes them).
        self.reply = struct.Struct(f"<{hw * nw}d{8 * nw}x{nd}I")

    def encode(self, ts: float, update: bool, fields: Env) -> tuple[bytes, Any]:
        amount = 0.0
        if self.sum_path is not None:
            raw = fields.get(self.sum_path)
            if raw is not None:
                amount = float(raw)
        flags = 1 if update else 0
        digest = _NO_DIGEST
        if update and self.distinct_path is not None:
            value = fields.get(self.distinct_path)
            if value is not None:
                flags = 3
                digest = value_digest(value)
        w = self.widths
        # (spelled out for the usual window counts: a comprehension costs more than the packing)
        if len(w) == 1:
            return self.args.pack(self.prefix, flags, amount, ts, ts // w[0], digest), None
        if len(w) == 2:
            return self.args.pack(
                self.prefix, flags, amount, ts, ts // w[0], ts // w[1], digest
            ), None
        if len(w) == 3:
            return self.args.pack(
                self.prefix, flags, amount, ts, ts // w[0], ts // w[1], ts // w[2], digest
            ), None
        if len(w) == 4:
            return self.args.pack(
                self.prefix,
                flags,
                amount,
                ts,
                ts // w[0],
                ts // w[1],
                ts // w[2],
                ts // w[3],
                digest,
            ), None
        return self.args.pack(self.prefix, flags, amount, ts, *[ts // x for x in w], digest), None

    def decode(self, reply: bytes, pos: int, ts: float, ctx: Any, env: Env) -> int:
        values = self.reply.unpack_from(reply, pos)
        if self.sum_path is None:
            env.update(zip(self.keys, values, strict=True))
            return pos + self.reply.size
        i = 0
        for count_key, sum_key in self.sum_keys:
            env[count_key] = values[i]
            total = values[i + 1]
            env[sum_key] = round(total, 6) if total > 1e-9 else 0.0
            i += 2
        for key in self.distinct_keys:
            env[key] = values[i]
            i += 1
        return pos + self.reply.size


class _BaselineCodec(_Codec):
    __slots__ = ("head", "keys", "log", "min_count", "path", "prefix")

    def __init__(self, kind: Baseline, ttl: int) -> None:
        self.path = kind.path
        self.log = kind.log
        self.min_count = kind.min_count
        self.keys = (kind._count, kind._mean, kind._std, kind._z, kind._ratio)
        prefix = _op_prefix(_BASELINE, ttl) + _DOUBLE.pack(kind.max_count)
        self.prefix = struct.Struct(f"<{len(prefix)}sBd")
        self.head = prefix

    def encode(self, ts: float, update: bool, fields: Env) -> tuple[bytes, Any]:
        raw = fields.get(self.path)
        x: float | None = None
        if raw is not None:
            if self.log:
                if not raw < 0:
                    x = math.log1p(raw)
            else:
                x = float(raw)
        if x is None:
            return self.prefix.pack(self.head, 0, 0.0), None
        return self.prefix.pack(self.head, 1 if update else 0, x), x

    def decode(self, reply: bytes, pos: int, ts: float, ctx: Any, env: Env) -> int:
        n, mean, var = _DOUBLES3.unpack_from(reply, pos)
        count_key, mean_key, std_key, z_key, ratio_key = self.keys
        env[count_key] = int(n)
        if n > 0:
            env[mean_key] = math.expm1(mean) if self.log else mean
            env[std_key] = math.sqrt(var)
        x: float | None = ctx
        if x is not None and n >= self.min_count:
            floor = 0.05 if self.log else max(abs(mean) * 0.05, 1e-6)
            env[z_key] = (x - mean) / max(math.sqrt(var), floor)
            if self.log:
                env[ratio_key] = math.exp(x - mean)
            elif mean:
                env[ratio_key] = x / mean
        return pos + _DOUBLES3.size


class _HourProfileCodec(_Codec):
    __slots__ = ("head", "keys", "prefix")

    def __init__(self, kind: HourProfile, ttl: int) -> None:
        self.keys = (kind._total, kind._count, kind._share, kind._age)
        self.head = _op_prefix(_HOUR_PROFILE, ttl)
        self.prefix = struct.Struct(f"<{len(self.head)}sBdBd")

    def encode(self, ts: float, update: bool, fields: Env) -> tuple[bytes, Any]:
        absolute = ts // 3600
        return self.prefix.pack(self.head, update, absolute, int(absolute) % 24, ts), None

    def decode(self, reply: bytes, pos: int, ts: float, ctx: Any, env: Env) -> int:
        before, at, after, total, first = _DOUBLES5.unpack_from(reply, pos)
        total_key, count_key, share_key, age_key = self.keys
        near = before + at + after
        env[total_key] = int(total)
        env[count_key] = near
        env[share_key] = near / total if total else None
        env[age_key] = max(ts - first, 0.0) if first >= 0 else 0.0
        return pos + _DOUBLES5.size


class _NoveltyCodec(_Codec):
    __slots__ = ("head", "keys", "paths", "prefix")

    def __init__(self, kind: Novelty, ttl: int) -> None:
        self.paths = kind.paths
        self.keys = (kind._is_new, kind._known, kind._age, kind._entity_age)
        self.head = _op_prefix(_NOVELTY, ttl) + struct.pack("<H", kind.capacity)
        self.prefix = struct.Struct(f"<{len(self.head)}sBd8s")

    def encode(self, ts: float, update: bool, fields: Env) -> tuple[bytes, Any]:
        if len(self.paths) == 1:
            value = fields.get(self.paths[0])
        else:
            parts = [fields.get(p) for p in self.paths]
            value = None if None in parts else KEY_SEPARATOR.join([str(p) for p in parts])
        if value is None:
            return self.prefix.pack(self.head, 1 if update else 0, ts, _NO_DIGEST), False
        return self.prefix.pack(self.head, 3 if update else 2, ts, value_digest(value)), True

    def decode(self, reply: bytes, pos: int, ts: float, ctx: Any, env: Env) -> int:
        known, has_first, first, seen, first_seen = _NOVELTY_REPLY.unpack_from(reply, pos)
        is_new_key, known_key, age_key, entity_age_key = self.keys
        env[known_key] = int(known)
        env[entity_age_key] = max(ts - first, 0.0) if has_first else 0.0
        if ctx:
            env[is_new_key] = not seen
            if seen:
                env[age_key] = ts - first_seen
        return pos + _NOVELTY_REPLY.size


class _GeoVelocityCodec(_Codec):
    __slots__ = ("keys", "prefix")

    def __init__(self, kind: GeoVelocity, ttl: int) -> None:
        self.keys = (kind._distance, kind._speed, kind._since, kind._changed, kind._prev)
        self.prefix = _op_prefix(_GEO, ttl)

    def encode(self, ts: float, update: bool, fields: Env) -> tuple[bytes, Any]:
        lat = fields.get("context.geo.lat")
        lon = fields.get("context.geo.lon")
        country = fields.get("context.geo.country")
        if lat is None or lon is None:
            lat = lon = None
        flags = (1 if update else 0) | (0 if lat is None else 2) | (0 if country is None else 4)
        blob = self.prefix + _GEO_ARGS.pack(
            flags, ts, 0.0 if lat is None else lat, 0.0 if lon is None else lon
        )
        if country is not None:
            blob += str(country).encode("utf-8", "surrogatepass")
        return blob, (lat, lon, country)

    def decode(self, reply: bytes, pos: int, ts: float, ctx: Any, env: Env) -> int:
        length: int = _LENGTH.unpack_from(reply, pos)[0]
        pos += _LENGTH.size
        if not length:
            return pos
        distance_key, speed_key, since_key, changed_key, prev_key = self.keys
        prev_ts, prev_lat, prev_lon, has_country = _GEO_STATE.unpack_from(reply, pos)
        lat, lon, country = ctx
        env[since_key] = ts - prev_ts
        if has_country:
            start = pos + _GEO_STATE.size
            prev_country = reply[start : pos + length].decode("utf-8", "surrogatepass")
            env[prev_key] = prev_country
            if country is not None:
                env[changed_key] = country != prev_country
        if lat is not None:
            dist = haversine_km(prev_lat, prev_lon, lat, lon)
            env[distance_key] = dist
            env[speed_key] = dist / (max(abs(ts - prev_ts), 60.0) / 3600.0)
        return pos + length


class _ContinuityCodec(_Codec):
    __slots__ = ("attributes", "events_key", "prefix")

    def __init__(self, kind: Continuity) -> None:
        self.events_key = kind._events
        self.attributes = tuple((path, key) for _, path, key in kind._attributes)
        self.prefix = _op_prefix(_CONTINUITY, CONTINUITY_TTL_S) + bytes([len(self.attributes)])

    def encode(self, ts: float, update: bool, fields: Env) -> tuple[bytes, Any]:
        parts = [self.prefix, b"\x01" if update else b"\x00"]
        for path, _ in self.attributes:
            value = fields.get(path)
            if value is None:
                parts.append(_ABSENT_ATTRIBUTE)
            else:
                data = canonical_bytes(value)
                parts.append(_ATTRIBUTE.pack(1, len(data)))
                parts.append(data)
        return b"".join(parts), None

    def decode(self, reply: bytes, pos: int, ts: float, ctx: Any, env: Env) -> int:
        (events,) = _DOUBLE.unpack_from(reply, pos)
        env[self.events_key] = int(events)
        pos += _DOUBLE.size
        for _, key in self.attributes:
            code = reply[pos]
            if code:
                env[key] = code == 2
            pos += 1
        return pos


class _LastSeenCodec(_Codec):
    __slots__ = ("head", "key", "prefix")

    def __init__(self, kind: LastSeen, ttl: int) -> None:
        self.key = kind._since
        self.head = _op_prefix(_LAST_SEEN, ttl)
        self.prefix = struct.Struct(f"<{len(self.head)}sBd")

    def encode(self, ts: float, update: bool, fields: Env) -> tuple[bytes, Any]:
        return self.prefix.pack(self.head, 1 if update else 0, ts), None

    def decode(self, reply: bytes, pos: int, ts: float, ctx: Any, env: Env) -> int:
        seen, previous = _FLAG_DOUBLE.unpack_from(reply, pos)
        if seen:
            env[self.key] = ts - previous
        return pos + _FLAG_DOUBLE.size


def _codec_for(kind: FeatureKind, profile_ttl: int) -> _Codec:
    if isinstance(kind, Velocity):
        return _VelocityCodec(kind)
    if isinstance(kind, Baseline):
        return _BaselineCodec(kind, profile_ttl)
    if isinstance(kind, HourProfile):
        return _HourProfileCodec(kind, profile_ttl)
    if isinstance(kind, Novelty):
        return _NoveltyCodec(kind, profile_ttl)
    if isinstance(kind, GeoVelocity):
        return _GeoVelocityCodec(kind, profile_ttl)
    if isinstance(kind, Continuity):
        return _ContinuityCodec(kind)
    if isinstance(kind, LastSeen):
        return _LastSeenCodec(kind, profile_ttl)
    raise TypeError(f"no Redis encoding for feature kind {type(kind).__name__}")


# --------------------------------------------------------------------------------------------


class RedisStateStore:
    """Feature state and idempotency claims of every tenant in one Redis, one script per event."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "rg",
        claim_ttl_s: int = 86_400,
        profile_ttl_s: int = 90 * 86_400,
        timeout_s: float = 0.25,
        max_connections: int = 64,
    ) -> None:
        if claim_ttl_s < 1 or profile_ttl_s < 1:
            raise ValueError("claim_ttl_s and profile_ttl_s must be at least 1 second")
        self.prefix = prefix
        self.claim_ttl_s = int(claim_ttl_s)
        self.profile_ttl_s = int(profile_ttl_s)
        self.timeout_s = timeout_s
        password = urlsplit(url).password
        self._secret = unquote(password) if password else None
        self._raw_secret = password
        # No retries: an EVALSHA that failed half-way may have run, and a claim must not be
        # taken twice by one request. The pool reconnects on the next call instead.
        self._pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._client = aioredis.Redis(connection_pool=self._pool)
        # The hot path speaks RESP itself over plain TCP or a Unix socket (resp.py); TLS
        # (rediss://) stays with redis-py's connections.
        self._endpoint: Endpoint | None = None
        if self._pool.connection_class in (aioredis.Connection, UnixDomainSocketConnection):
            self._endpoint = Endpoint.from_kwargs(self._pool.connection_kwargs)
        self._idle: list[Any] = []
        self._live: set[RespConnection] = set()
        self._free = max_connections  # calls that may start now (each takes a connection)
        self._waiting: deque[asyncio.Future[None]] = deque()
        # Kinds hash by identity; the map holds them (and is cleared if packs pile up).
        self._codecs: dict[FeatureKind, _Codec] = {}
        claim_ttl = _text(str(self.claim_ttl_s).encode())
        self._header_base = _HEADER.pack(0, 1 if _COMPENSATED_SUM else 0) + claim_ttl
        self._header_claim = _HEADER.pack(1, 1 if _COMPENSATED_SUM else 0) + claim_ttl

    # keys --------------------------------------------------------------------------------

    def state_key(self, tenant_id: str, op_key: str) -> str:
        """The Redis key of the state the engine names ``op_key`` (``<feature>@<fp>|<entity>``)."""
        feature, _, entity = op_key.partition("|")
        return f"{self.prefix}:{{{tenant_id}:{entity}}}:{feature}"

    def claim_key(self, tenant_id: str, event_id: str) -> str:
        return f"{self.prefix}:{{{tenant_id}:{event_id}}}:claim"

    # the port ----------------------------------------------------------------------------

    async def apply(
        self,
        tenant_id: str,
        ops: Sequence[FeatureOp],
        ts: float,
        fields: Env,
        env: Env,
        claim: Claim | None,
    ) -> str | None:
        if claim is None and not ops:
            return None
        command: list[Any] = ["EVALSHA", SCRIPT_SHA, len(ops)]
        if claim is None:
            args = [self._header_base]
        else:
            command[2] += 1
            command.append(f"{self.prefix}:{{{tenant_id}:{claim.event_id}}}:claim")
            args = [self._header_claim + claim.body_hash.encode("utf-8")]
        decoders: list[Any] = []
        codecs = self._codecs
        head = f"{self.prefix}:{{{tenant_id}:"
        for key, feature, update in ops:
            codec = codecs.get(feature.kind)
            if codec is None:
                codec = self._codec(feature.kind)
            blob, ctx = codec.encode(ts, update, fields)
            name, _, entity = key.partition("|")
            command.append(f"{head}{entity}}}:{name}")
            args.append(blob)
            decoders.append(codec)
            decoders.append(ctx)
        command += args
        payload = await self._run(command)
        if payload.__class__ is not bytes:  # [the stored body hash]: claimed before
            held = payload[0]
            return held.decode("utf-8") if held is not None else ""
        pos = 0
        pairs = iter(decoders)
        for codec, ctx in zip(pairs, pairs, strict=False):
            pos = codec.decode(payload, pos, ts, ctx, env)
        return None

    async def release(self, tenant_id: str, event_id: str) -> None:
        try:
            await self._client.delete(self.claim_key(tenant_id, event_id))
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from None

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from None

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in self._live:
            conn.close()
        self._live.clear()
        if self._endpoint is None:
            for conn in idle:
                await conn.disconnect(nowait=True)
        await self._client.aclose()
        await self._pool.disconnect()

    # internals ---------------------------------------------------------------------------

    def _codec(self, kind: FeatureKind) -> _Codec:
        if len(self._codecs) >= 4096:  # packs republished many times: forget the old kinds
            self._codecs.clear()
        codec = self._codecs[kind] = _codec_for(kind, self.profile_ttl_s)
        return codec

    async def _run(self, command: list[Any]) -> Any:
        # The hot path keeps its own stack of idle connections (and its own count of free
        # slots) rather than going through Redis.execute_command and the blocking pool: their
        # retry, locking and stream-reading layers cost more CPU per call than the script
        # itself. A connection that fails or is interrupted (the latency budget cancels the
        # call) is dropped, never reused.
        if self._endpoint is None:
            return await self._run_redis_py(command)
        if self._free > 0 and not self._waiting:
            self._free -= 1
        else:
            await self._wait_for_slot()
        try:
            idle = self._idle
            while idle:
                conn = idle.pop()
                if not conn.closed:
                    break
                self._live.discard(conn)
            else:
                try:
                    conn = await open_connection(self._endpoint, self.timeout_s)
                except (ReplyErrorRaised, OSError, TimeoutError, hiredis.HiredisError) as exc:
                    raise self._unavailable(exc) from None
                self._live.add(conn)
            try:
                reply = await conn.call(hiredis.pack_command(tuple(command)), self.timeout_s)
                if reply.__class__ is hiredis.ReplyError:
                    if not str(reply).startswith("NOSCRIPT"):
                        raise ResponseError(str(reply))
                    # Redis restarted (or flushed its scripts): EVAL runs and caches the script.
                    command[0], command[1] = "EVAL", SCRIPT
                    reply = await conn.call(hiredis.pack_command(tuple(command)), self.timeout_s)
                    if reply.__class__ is hiredis.ReplyError:
                        raise ResponseError(str(reply))
            except (RedisError, OSError, TimeoutError, hiredis.HiredisError) as exc:
                conn.close()
                self._live.discard(conn)
                raise self._unavailable(exc) from None
            except BaseException:
                conn.close()
                self._live.discard(conn)
                raise
            idle.append(conn)
            return reply
        finally:
            self._release_slot()

    async def _wait_for_slot(self) -> None:
        """Wait (first come, first served) until a call ends and hands its slot over."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.cancelled():
                with contextlib.suppress(ValueError):
                    self._waiting.remove(waiter)
            else:  # a slot was handed over just as this call was cancelled: pass it on
                self._release_slot()
            raise

    def _release_slot(self) -> None:
        waiting = self._waiting
        while waiting:
            waiter = waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    async def _run_redis_py(self, command: list[Any]) -> Any:
        if self._free > 0 and not self._waiting:
            self._free -= 1
        else:
            await self._wait_for_slot()
        try:
            conn = self._idle.pop() if self._idle else self._pool.make_connection()  # type: ignore[no-untyped-call]
            try:
                try:
                    reply = await self._call(conn, command)
                except NoScriptError:
                    command[0], command[1] = "EVAL", SCRIPT
                    reply = await self._call(conn, command)
            except (RedisError, OSError, TimeoutError) as exc:
                await conn.disconnect(nowait=True)
                raise self._unavailable(exc) from None
            except BaseException:
                await asyncio.shield(conn.disconnect(nowait=True))
                raise
            self._idle.append(conn)
            return reply
        finally:
            self._release_slot()

    @staticmethod
    async def _call(conn: aioredis.Connection, command: list[Any]) -> Any:
        await conn.send_packed_command(hiredis.pack_command(tuple(command)), check_health=False)
        return await conn.read_response()

    def _unavailable(self, exc: BaseException) -> DependencyUnavailable:
        message = str(exc) or type(exc).__name__
        for secret in (self._secret, self._raw_secret):
            if secret:
                message = message.replace(secret, "***")
        return DependencyUnavailable(f"redis: {type(exc).__name__}: {message}")


__all__ = ["RedisStateStore", "canonical_bytes", "value_digest"]
