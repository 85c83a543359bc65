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

**State encoding.** One string per key, doubles packed with ``struct``: velocity ``[last bucket,
count, sum, 13 counts, 13 sums]`` per window then the distinct map (8-byte digests, then one
double per value); baseline 3 doubles; hour profile 30; novelty a flag, the first time and its
map; geo velocity time, lat, lon and the country; continuity the event count and each
attribute's first value; last seen one double. The default pack's largest state is the payment
velocity (4 windows and a 16-value map: about 1.2 KB). A state is written back (``SET ... EX``)
only when the event changed it.

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

**Failures.** Every Redis error, timeout or refused connection raises
:class:`~riskguard.ports.DependencyUnavailable` (the URL's password never appears in the
message). Commands are not retried — an ``EVALSHA`` that timed out (or whose caller was
cancelled) after it was sent may have run, claim included — and the pool reconnects on the next
call when Redis is back; ``env`` is only written once the reply is in, so a failed call leaves it
untouched; a Redis restarted empty answers ``NOSCRIPT`` and
the store falls back to ``EVAL`` with the script text, which loads it again.

**Cost.** ``bench/state_store.py`` (20,000 simulated events of the default pack, 6.3 feature
ops an event, claims on; a shared 2-vCPU VM, Redis 7.0 on the same host): the script costs about
120 µs of Redis CPU per event (``usec_per_call`` of ``EVALSHA``), some 10 µs of it the fixed cost
of any script call that takes a claim, the most expensive op a 4-window velocity with a distinct
map (about 35 µs: unpacking and repacking its 116 doubles is a fifth of that). One client awaiting
each call sees about 400 µs p50 and 770 µs p99 per event, 13x the in-memory store; most of that
is the client library, not Redis. State costs 24 bytes (a baseline) to 1.1 KB (the payment
velocity) a key, plus Redis's per-key overhead of about 110 bytes; a claim about 180 bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import struct
import weakref
from collections.abc import Sequence
from importlib import resources
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

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

_HEADER = struct.Struct("<BIB")
_DOUBLES3 = struct.Struct("<ddd")
_DOUBLES5 = struct.Struct("<ddddd")
_FLAG_DOUBLE = struct.Struct("<Bd")
_HOUR_ARGS = struct.Struct("<BdBd")
_NOVELTY_REPLY = struct.Struct("<dBdBd")
_GEO_ARGS = struct.Struct("<Bddd")
_GEO_STATE = struct.Struct("<dddB")
_LENGTH = struct.Struct("<I")
_ATTRIBUTE = struct.Struct("<BI")
_DOUBLE = struct.Struct("<d")
_ABSENT_ATTRIBUTE: Final = _ATTRIBUTE.pack(0, 0)


def value_digest(value: Any) -> bytes:
    """8 bytes naming a distinct/novelty value: the in-memory rule (a string's text, ``repr`` of
    anything else), hashed with BLAKE2b so every process agrees."""
    text = value if value.__class__ is str else repr(value)
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
        "prefix",
        "reply",
        "sum_path",
        "widths",
        "window_keys",
    )

    def __init__(self, kind: Velocity) -> None:
        windows = kind._windows
        distinct = kind._distinct if kind.distinct_path is not None else ()
        self.widths = tuple(width for width, _, _ in windows)
        self.window_keys = tuple((count, total) for _, count, total in windows)
        self.distinct_keys = tuple(key for _, key in distinct)
        self.sum_path = kind.sum_path
        self.distinct_path = kind.distinct_path
        longest = max(range(len(kind.spans)), key=lambda i: kind.spans[i])
        ttl = _ttl(kind.spans[longest] + self.widths[longest])
        self.prefix = struct.pack(
            f"<BIBBHB{len(distinct)}d",
            _VELOCITY,
            ttl,
            len(windows),
            kind.slots,
            kind.capacity,
            len(distinct),
            *(span for span, _ in distinct),
        )
        self.args = struct.Struct(f"<Bdd{len(windows)}d")
        self.reply = struct.Struct(f"<{2 * len(windows) + len(distinct)}d")

    def encode(self, ts: float, update: bool, fields: Env) -> tuple[bytes, Any]:
        amount = 0.0
        if self.sum_path is not None:
            raw = fields.get(self.sum_path)
            if raw is not None:
                amount = float(raw)
        value = None if self.distinct_path is None else fields.get(self.distinct_path)
        flags = (1 if update else 0) | (0 if value is None else 2)
        blob = self.prefix + self.args.pack(flags, amount, ts, *[ts // w for w in self.widths])
        if value is not None:
            blob += value_digest(value)
        return blob, None

    def decode(self, reply: bytes, pos: int, ts: float, ctx: Any, env: Env) -> int:
        values = self.reply.unpack_from(reply, pos)
        i = 0
        for count_key, sum_key in self.window_keys:
            env[count_key] = values[i]
            if sum_key is not None:
                total = values[i + 1]
                env[sum_key] = round(total, 6) if total > 1e-9 else 0.0
            i += 2
        for key in self.distinct_keys:
            env[key] = int(values[i])
            i += 1
        return pos + self.reply.size


class _BaselineCodec(_Codec):
    __slots__ = ("keys", "log", "min_count", "path", "prefix")

    def __init__(self, kind: Baseline, ttl: int) -> None:
        self.path = kind.path
        self.log = kind.log
        self.min_count = kind.min_count
        self.keys = (kind._count, kind._mean, kind._std, kind._z, kind._ratio)
        self.prefix = struct.pack("<BId", _BASELINE, ttl, kind.max_count)

    def encode(self, ts: float, update: bool, fields: Env) -> tuple[bytes, Any]:
        raw = fields.get(self.path)
        x: float | None = None
        if raw is not None:
            if self.log:
                if not raw < 0:
                    x = math.log1p(raw)
            else:
                x = float(raw)
        flag = 1 if update and x is not None else 0
        return self.prefix + _FLAG_DOUBLE.pack(flag, 0.0 if x is None else x), x

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
    __slots__ = ("keys", "prefix")

    def __init__(self, kind: HourProfile, ttl: int) -> None:
        self.keys = (kind._total, kind._count, kind._share, kind._age)
        self.prefix = struct.pack("<BI", _HOUR_PROFILE, ttl)

    def encode(self, ts: float, update: bool, fields: Env) -> tuple[bytes, Any]:
        absolute = ts // 3600
        return self.prefix + _HOUR_ARGS.pack(update, absolute, int(absolute) % 24, ts), None

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
    __slots__ = ("keys", "paths", "prefix")

    def __init__(self, kind: Novelty, ttl: int) -> None:
        self.paths = kind.paths
        self.keys = (kind._is_new, kind._known, kind._age, kind._entity_age)
        self.prefix = struct.pack("<BIH", _NOVELTY, ttl, kind.capacity)

    def encode(self, ts: float, update: bool, fields: Env) -> tuple[bytes, Any]:
        if len(self.paths) == 1:
            value = fields.get(self.paths[0])
        else:
            parts = [fields.get(p) for p in self.paths]
            value = None if None in parts else KEY_SEPARATOR.join([str(p) for p in parts])
        if value is None:
            return self.prefix + _FLAG_DOUBLE.pack(1 if update else 0, ts), False
        blob = self.prefix + _FLAG_DOUBLE.pack(3 if update else 2, ts) + value_digest(value)
        return blob, True

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
        self.prefix = struct.pack("<BI", _GEO, ttl)

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
        self.prefix = struct.pack("<BIB", _CONTINUITY, CONTINUITY_TTL_S, len(self.attributes))

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
    __slots__ = ("key", "prefix")

    def __init__(self, kind: LastSeen, ttl: int) -> None:
        self.key = kind._since
        self.prefix = struct.pack("<BI", _LAST_SEEN, ttl)

    def encode(self, ts: float, update: bool, fields: Env) -> tuple[bytes, Any]:
        return self.prefix + _FLAG_DOUBLE.pack(1 if update else 0, ts), None

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
        self._idle: list[aioredis.Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._codecs: weakref.WeakKeyDictionary[FeatureKind, _Codec] = weakref.WeakKeyDictionary()
        self._header_base = _HEADER.pack(0, self.claim_ttl_s, 1 if _COMPENSATED_SUM else 0)

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
        keys: list[str] = []
        args: list[bytes] = []
        if claim is None:
            args.append(self._header_base)
        else:
            keys.append(self.claim_key(tenant_id, claim.event_id))
            args.append(
                _HEADER.pack(1, self.claim_ttl_s, 1 if _COMPENSATED_SUM else 0)
                + claim.body_hash.encode("utf-8")
            )
        decoders: list[tuple[_Codec, Any]] = []
        codecs = self._codecs
        prefix = self.prefix
        for key, feature, update in ops:
            kind = feature.kind
            codec = codecs.get(kind)
            if codec is None:
                codec = codecs[kind] = _codec_for(kind, self.profile_ttl_s)
            blob, ctx = codec.encode(ts, update, fields)
            name, _, entity = key.partition("|")
            keys.append(f"{prefix}:{{{tenant_id}:{entity}}}:{name}")
            args.append(blob)
            decoders.append((codec, ctx))
        status, payload = await self._run(keys, args)
        if status == 0:
            return payload.decode("utf-8") if payload is not None else ""
        pos = 0
        for codec, ctx in decoders:
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
        for conn in idle:
            await conn.disconnect(nowait=True)
        await self._client.aclose()
        await self._pool.disconnect()

    # internals ---------------------------------------------------------------------------

    async def _run(self, keys: list[str], args: list[bytes]) -> list[Any]:
        # The hot path talks to its own idle-connection stack rather than through
        # Redis.execute_command and the blocking pool: their retry, deprecation and locking
        # wrappers cost more CPU per call than the script itself. A connection that fails or
        # is interrupted (the latency budget cancels the call) is dropped, never reused.
        async with self._slots:
            conn = self._idle.pop() if self._idle else self._pool.make_connection()  # type: ignore[no-untyped-call]
            try:
                try:
                    reply = await self._call(conn, "EVALSHA", SCRIPT_SHA, keys, args)
                except NoScriptError:
                    # Redis restarted (or flushed its scripts): EVAL runs and caches the script.
                    reply = await self._call(conn, "EVAL", SCRIPT, keys, args)
            except (RedisError, OSError, TimeoutError) as exc:
                await conn.disconnect(nowait=True)
                raise self._unavailable(exc) from None
            except BaseException:
                await asyncio.shield(conn.disconnect(nowait=True))
                raise
            self._idle.append(conn)
        return list(reply)

    @staticmethod
    async def _call(
        conn: aioredis.Connection, command: str, script: str, keys: list[str], args: list[bytes]
    ) -> Any:
        await conn.send_packed_command(
            conn.pack_command(command, script, len(keys), *keys, *args), check_health=False
        )
        return await conn.read_response()

    def _unavailable(self, exc: BaseException) -> DependencyUnavailable:
        message = str(exc) or type(exc).__name__
        for secret in (self._secret, self._raw_secret):
            if secret:
                message = message.replace(secret, "***")
        return DependencyUnavailable(f"redis: {type(exc).__name__}: {message}")


__all__ = ["RedisStateStore", "canonical_bytes", "value_digest"]
