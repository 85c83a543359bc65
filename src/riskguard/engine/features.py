"""Declared features: definitions are data, one engine computes them for rules and models alike.

Each feature kind owns a bounded state per entity and a ``step`` that, for one event, writes the
feature's outputs into the evaluation environment and (when the event matches the feature's
``when`` filter) folds the event into the state. Reads see the state *before* the event, except
velocity windows, which count the event itself ("the 12th payment in 5 minutes").

Kinds and outputs (``features.<name>.<output>`` in expressions):

=============  ================================================================================
velocity       ``count_<w>``, ``sum_<w>``, ``distinct_<w>`` for each window ``w`` (e.g. ``5m``)
baseline       ``count``, ``mean``, ``std``, ``zscore``, ``ratio`` of a numeric value
hour_profile   ``total``, ``hour_count`` (this hour ±1 h), ``hour_share``, ``entity_age_s``
novelty        ``is_new``, ``known``, ``age_s``, ``entity_age_s``
geo_velocity   ``distance_km``, ``speed_kmh``, ``since_s``, ``country_changed``, ``prev_country``
continuity     ``events`` and ``<attribute>_changed`` per attribute (``ip_changed`` ...)
last_seen      ``since_s``
=============  ================================================================================

Error bounds of the approximations (checked by property tests against exact references):

- velocity count/sum over window ``W`` with ``B`` buckets of width ``w = W/B`` cover every event
  in ``(t - W, t]`` and possibly events in ``(t - W - w, t - W]``: exact(W) <= value <=
  exact(W + w). Events arriving later than ``W`` behind the entity's newest event are dropped.
- distinct over ``W`` keeps the ``capacity`` most recently seen values: value = min(exact, cap).
- novelty keeps the ``capacity`` most recently seen values; a value evicted since is new again.
- baseline is Welford's running mean/variance with the count capped at ``max_count``, after
  which it forgets exponentially (weight ``1/max_count`` per event).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from riskguard.engine.durations import parse_duration
from riskguard.engine.events import EVENT_TYPES, FIELD_TYPES
from riskguard.engine.expr import ExprError, FunctionRegistry, compile_expression

Env = dict[str, Any]
EARTH_RADIUS_KM: Final = 6371.0088
WINDOW_BUCKETS: Final = 12
# Joins the parts of composite keys and values; ids cannot contain it (no control characters).
KEY_SEPARATOR: Final = "\x1f"


class FeatureConfigError(ValueError):
    """A feature definition that cannot be used; the message names the feature and the field."""


# --------------------------------------------------------------------------------------------
# Definitions (validated config)


class FeatureSpec(BaseModel):
    """One feature as written in a pack."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    kind: Literal[
        "velocity",
        "baseline",
        "hour_profile",
        "novelty",
        "geo_velocity",
        "continuity",
        "last_seen",
    ]
    events: tuple[str, ...] = Field(min_length=1)
    entity: tuple[str, ...] = Field(min_length=1, max_length=4)
    when: str | None = None
    description: str = ""
    # velocity
    windows: tuple[str, ...] = ()
    sum: str | None = None
    distinct: str | None = None
    # baseline / novelty
    value: str | tuple[str, ...] | None = None
    transform: Literal["none", "log"] = "none"
    min_count: int = Field(default=5, ge=1)
    max_count: int = Field(default=500, ge=2)
    capacity: int = Field(default=32, ge=1, le=1024)
    # continuity
    attributes: tuple[str, ...] = ()

    @field_validator("events")
    @classmethod
    def _known_events(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for e in v:
            if e not in EVENT_TYPES:
                raise ValueError(f"unknown event type {e!r}; expected one of {EVENT_TYPES}")
        return v


def _check_path(spec: FeatureSpec, what: str, path: str, want: set[str] | None = None) -> None:
    kind = union_schema(spec.events).get(path)
    if kind is None:
        raise FeatureConfigError(
            f"feature {spec.name!r}: {what} {path!r} is not a field of "
            + " or ".join(spec.events)
            + " events"
        )
    if want is not None and kind not in want:
        raise FeatureConfigError(
            f"feature {spec.name!r}: {what} {path!r} is a {kind}; expected "
            + " or ".join(sorted(want))
        )


def union_schema(event_types: Sequence[str]) -> dict[str, str]:
    """Fields of any of ``event_types`` (absent from an event, a field reads as null).

    A path whose type differs between the event types is left out.
    """
    schema: dict[str, str] = {}
    conflicts: set[str] = set()
    for event_type in event_types:
        for path, kind in FIELD_TYPES[event_type].items():
            if schema.setdefault(path, kind) != kind:
                conflicts.add(path)
    for path in conflicts:
        del schema[path]
    return schema


# --------------------------------------------------------------------------------------------
# Kinds: each owns its state shape, its outputs and its step.


_pack_hash = struct.Struct("<q").pack


def new_recent_values() -> list[Any]:
    """An empty recent-values map: ``[hashes, times]``.

    ``hashes`` is a ``bytearray`` of 8-byte value hashes and ``times`` an ``array('d')`` of one
    time per value, least recently seen first: 16 bytes a value, found with one C-level byte
    search. Hashing keeps the state small whatever the values' length; two distinct values
    colliding among a few dozen 64-bit hashes is vanishingly unlikely (the in-memory store uses
    Python's hash, stable within a process).
    """
    return [bytearray(), array("d")]


def _digest(value: Any) -> bytes:
    # Numbers hash through their text: hash(-1) == hash(-2) in CPython, repr() does not collide.
    return _pack_hash(hash(value if value.__class__ is str else repr(value)))


def _index(hashes: bytearray, digest: bytes) -> int:
    at = hashes.find(digest)
    while at > 0 and at % 8:  # a match straddling two entries: keep looking
        at = hashes.find(digest, at + 1)
    return at >> 3 if at >= 0 else -1


def recent_time(state: list[Any], value: Any) -> float | None:
    """The time stored for ``value``, or None if the map does not hold it."""
    index = _index(state[0], _digest(value))
    return state[1][index] if index >= 0 else None


def see_recent(state: list[Any], value: Any, when: float, capacity: int, keep: str) -> float | None:
    """Record ``value`` as the most recently seen and return the time stored for it before.

    The stored time becomes the earlier (``keep="first"``) or later (``keep="last"``) of the old
    one and ``when``; beyond ``capacity`` the least recently seen value is forgotten.
    """
    hashes: bytearray = state[0]
    times: array[float] = state[1]
    digest = _digest(value)
    index = _index(hashes, digest)
    previous = None
    if index >= 0:
        previous = times[index]
        if (previous < when) is (keep == "first"):
            when = previous
        del hashes[8 * index : 8 * index + 8]
        del times[index]
    hashes += digest
    times.append(when)
    if len(times) > capacity:
        del hashes[:8]
        del times[0]
    return previous


class FeatureKind:
    """Behaviour shared by every kind: the outputs it declares and how one event steps it.

    Output keys are built once (``features.<name>.<output>``) so the hot path never
    concatenates strings.
    """

    outputs: dict[str, str]  # output name -> expression type ("number" | "string" | "bool")

    def __init__(self, spec: FeatureSpec) -> None:
        self.prefix = f"features.{spec.name}."

    def key(self, output: str) -> str:
        """The environment key of one of this feature's outputs."""
        return self.prefix + output

    def new_state(self) -> Any:
        raise NotImplementedError

    def step(self, state: Any, ts: float, update: bool, fields: Env, env: Env) -> None:
        """Write this feature's outputs for the event into ``env``; fold it in if ``update``."""
        raise NotImplementedError


class Velocity(FeatureKind):
    """Count, sum and distinct-count over sliding windows, bucketed for bounded state.

    State: one ``array('d')`` holding, per window, ``[last_bucket, total_count, total_sum,
    count_0..count_B, sum_0..sum_B]`` (B+1 slots so the window is always fully covered), plus a
    recent-values map (:func:`new_recent_values`) value -> last seen time for distinct counts.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__(spec)
        if not spec.windows:
            raise FeatureConfigError(f"feature {spec.name!r}: velocity needs windows")
        names = tuple(w.strip() for w in spec.windows)
        try:
            spans = tuple(parse_duration(w) for w in names)
        except ValueError as exc:
            raise FeatureConfigError(f"feature {spec.name!r}: {exc}") from None
        if spec.sum is not None:
            _check_path(spec, "sum", spec.sum, {"number"})
        if spec.distinct is not None:
            _check_path(spec, "distinct", spec.distinct)
        self.slots = WINDOW_BUCKETS + 1
        self.stride = 3 + 2 * self.slots
        self.spans = spans
        self.sum_path = spec.sum
        self.distinct_path = spec.distinct
        self.capacity = spec.capacity
        self._zeros = array("d", bytes(8 * (self.stride - 1)))
        # Per window: bucket width, count key, sum key (or None); distinct windows shortest first.
        self._windows = tuple(
            (
                span / WINDOW_BUCKETS,
                self.key(f"count_{name}"),
                self.key(f"sum_{name}") if spec.sum is not None else None,
            )
            for name, span in zip(names, spans, strict=True)
        )
        self._distinct = tuple(
            sorted(
                (span, self.key(f"distinct_{name}"))
                for name, span in zip(names, spans, strict=True)
            )
        )
        self.outputs = {}
        for name in names:
            self.outputs[f"count_{name}"] = "number"
            if spec.sum is not None:
                self.outputs[f"sum_{name}"] = "number"
            if spec.distinct is not None:
                self.outputs[f"distinct_{name}"] = "number"

    def new_state(self) -> list[Any]:
        buckets = array("d", bytes(8 * self.stride * len(self.spans)))
        for i in range(len(self.spans)):
            buckets[i * self.stride] = -1.0
        return [buckets, new_recent_values() if self.distinct_path is not None else None]

    def step(self, state: Any, ts: float, update: bool, fields: Env, env: Env) -> None:
        buckets: array[float] = state[0]
        amount = 0.0
        if self.sum_path is not None:
            raw = fields.get(self.sum_path)
            if raw is not None:
                amount = float(raw)
        slots = self.slots
        stride = self.stride
        zeros = self._zeros
        base = 0
        for width, count_key, sum_key in self._windows:
            idx = ts // width
            last = buckets[base]
            if idx > last:
                # Expire the slots the window slid past since the entity's last event.
                if last < 0 or idx - last >= slots:
                    buckets[base + 1 : base + stride] = zeros
                else:
                    expired_sum = False
                    for k in range(int(last) + 1, int(idx) + 1):
                        c = base + 3 + k % slots
                        if buckets[c]:
                            buckets[base + 1] -= buckets[c]  # counts are whole: exact
                            buckets[c] = 0.0
                            if buckets[c + slots]:
                                buckets[c + slots] = 0.0
                                expired_sum = True
                    if expired_sum:
                        # Re-add the amounts left rather than subtract those that left: a large
                        # amount leaving must not take the small ones' precision with it.
                        first = base + 3 + slots
                        buckets[base + 2] = sum(buckets[first : first + slots])
                buckets[base] = last = idx
            if update and idx > last - slots:
                c = base + 3 + int(idx) % slots
                buckets[c] += 1.0
                buckets[base + 1] += 1.0
                if amount:
                    buckets[c + slots] += amount
                    buckets[base + 2] += amount
            env[count_key] = buckets[base + 1]
            if sum_key is not None:
                total = buckets[base + 2]
                env[sum_key] = round(total, 6) if total > 1e-9 else 0.0
            base += stride
        if self.distinct_path is not None:
            self._step_distinct(state[1], ts, update, fields, env)

    def _step_distinct(
        self, seen: list[Any], ts: float, update: bool, fields: Env, env: Env
    ) -> None:
        assert self.distinct_path is not None
        value = fields.get(self.distinct_path)
        if update and value is not None:
            see_recent(seen, value, ts, self.capacity, "last")
        # Walk from the most recent value back; windows are visited shortest first, so the walk
        # stops at the longest window's horizon. Exact for events in time order.
        windows = self._distinct
        i, n, count = 0, len(windows), 0
        horizon = ts - windows[0][0]
        for last_seen in reversed(seen[1]):
            while last_seen <= horizon:
                env[windows[i][1]] = count
                i += 1
                if i == n:
                    return
                horizon = ts - windows[i][0]
            count += 1
        while i < n:
            env[windows[i][1]] = count
            i += 1


class Baseline(FeatureKind):
    """Running mean and variance of a numeric value (Welford, count capped so it keeps adapting).

    ``zscore`` and ``ratio`` compare the event's value with the state *before* it; they are null
    until ``min_count`` values were seen. ``ratio`` is value / mean in original units (for the
    ``log`` transform, which works on log(1 + value): the ratio of 1 + value to its geometric
    mean).
    """

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__(spec)
        if not isinstance(spec.value, str):
            raise FeatureConfigError(f"feature {spec.name!r}: baseline needs one numeric value")
        _check_path(spec, "value", spec.value, {"number"})
        self.path = spec.value
        self.log = spec.transform == "log"
        self.min_count = spec.min_count
        self.max_count = float(spec.max_count)
        self.outputs = dict.fromkeys(("count", "mean", "std", "zscore", "ratio"), "number")
        self._count, self._mean, self._std, self._z, self._ratio = (
            self.key(o) for o in self.outputs
        )

    def new_state(self) -> list[float]:
        return [0.0, 0.0, 0.0]  # n, mean, variance

    def step(self, state: Any, ts: float, update: bool, fields: Env, env: Env) -> None:
        n, mean, var = state
        env[self._count] = int(n)
        if n > 0:
            env[self._mean] = math.expm1(mean) if self.log else mean
            env[self._std] = math.sqrt(var)
        raw = fields.get(self.path)
        if raw is None:
            return
        if self.log:
            if raw < 0:
                return  # the log scale is for sizes and amounts; a negative value is not counted
            x = math.log1p(raw)
        else:
            x = float(raw)
        if n >= self.min_count:
            # A floor on the deviation keeps a perfectly regular history from turning a cent of
            # difference into an infinite z-score.
            floor = 0.05 if self.log else max(abs(mean) * 0.05, 1e-6)
            env[self._z] = (x - mean) / max(math.sqrt(var), floor)
            if self.log:
                env[self._ratio] = math.exp(x - mean)
            elif mean:
                env[self._ratio] = x / mean
        if update:
            # Welford's update written with a weight: 1/n while n grows, 1/max_count after.
            n = min(n + 1.0, self.max_count)
            alpha = 1.0 / n
            delta = x - mean
            state[0] = n
            state[1] = mean + alpha * delta
            state[2] = (1.0 - alpha) * (var + alpha * delta * delta)


class HourProfile(FeatureKind):
    """How often the entity acted at each UTC hour, before its current spell of activity.

    Events join the profile only once their clock hour and the next one have passed, so a burst
    of activity at a new hour (a login, then a payout minutes later) is compared with the
    entity's habits, not with itself. ``hour_count`` spans this hour ±1; ``entity_age_s`` tells
    how long the profile has been learning. Counts halve when the total passes 2,000, so the
    profile follows habits that change. State: 24 hourly counts, the total, the pending counts
    of the last two clock hours and the first event's time.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__(spec)
        self.outputs = dict.fromkeys(
            ("total", "hour_count", "hour_share", "entity_age_s"), "number"
        )
        self._total, self._count, self._share, self._age = (self.key(o) for o in self.outputs)

    def new_state(self) -> array[float]:
        # 0..23 hourly counts, 24 total, 25/26 pending (absolute hour, count), 27/28 the next,
        # 29 the first event's time
        state = array("d", bytes(8 * 30))
        state[25] = state[27] = state[29] = -1.0
        return state

    def step(self, state: Any, ts: float, update: bool, fields: Env, env: Env) -> None:
        hours: array[float] = state
        absolute = ts // 3600
        if 0 <= hours[25] < absolute - 1:
            self._fold(hours, int(hours[25]) % 24, hours[26])
            hours[25], hours[26] = -1.0, 0.0
        if 0 <= hours[27] < absolute - 1:
            self._fold(hours, int(hours[27]) % 24, hours[28])
            hours[27], hours[28] = -1.0, 0.0
        hour = int(absolute) % 24
        total = hours[24]
        near = hours[(hour - 1) % 24] + hours[hour] + hours[(hour + 1) % 24]
        env[self._total] = int(total)
        env[self._count] = near
        env[self._share] = near / total if total else None
        env[self._age] = max(ts - hours[29], 0.0) if hours[29] >= 0 else 0.0
        if not update:
            return
        if hours[29] < 0:
            hours[29] = ts
        if hours[25] == absolute:
            hours[26] += 1.0
        elif hours[27] == absolute:
            hours[28] += 1.0
        elif hours[25] < 0:
            hours[25], hours[26] = absolute, 1.0
        elif hours[27] < 0:
            hours[27], hours[28] = absolute, 1.0
        else:  # both pending slots hold other hours (a late event): count it straight away
            self._fold(hours, hour, 1.0)

    @staticmethod
    def _fold(hours: array[float], hour: int, count: float) -> None:
        hours[hour] += count
        hours[24] += count
        if hours[24] > 2000.0:
            for h in range(25):
                hours[h] /= 2.0


class Novelty(FeatureKind):
    """First-seen times of values (devices, countries, counterparties, endpoints) per entity.

    State: the entity's first event time and a recent-values map (:func:`new_recent_values`)
    value -> first seen time of at most ``capacity`` values (the least recently seen is
    forgotten first).
    """

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__(spec)
        if spec.value is None:
            raise FeatureConfigError(f"feature {spec.name!r}: novelty needs value")
        self.paths = (spec.value,) if isinstance(spec.value, str) else spec.value
        for path in self.paths:
            _check_path(spec, "value", path)
        self.capacity = spec.capacity
        self.outputs = {
            "is_new": "bool",
            "known": "number",
            "age_s": "number",
            "entity_age_s": "number",
        }
        self._is_new, self._known, self._age, self._entity_age = (self.key(o) for o in self.outputs)

    def new_state(self) -> list[Any]:
        return [None, new_recent_values()]

    def step(self, state: Any, ts: float, update: bool, fields: Env, env: Env) -> None:
        first_ts: float | None = state[0]
        values: list[Any] = state[1]
        if len(self.paths) == 1:
            value = fields.get(self.paths[0])
        else:
            parts = [fields.get(p) for p in self.paths]
            value = None if None in parts else KEY_SEPARATOR.join([str(p) for p in parts])
        env[self._known] = len(values[1])
        env[self._entity_age] = max(ts - first_ts, 0.0) if first_ts is not None else 0.0
        if value is None:
            return
        if update:
            first_seen = see_recent(values, value, ts, self.capacity, "first")
            if first_ts is None:
                state[0] = ts
        else:
            first_seen = recent_time(values, value)
        env[self._is_new] = first_seen is None
        if first_seen is not None:
            env[self._age] = ts - first_seen


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in kilometres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


class GeoVelocity(FeatureKind):
    """Distance and implied speed since the entity's previous located event.

    Speed divides by the elapsed time floored at 60 s, so two events a second apart read as a
    jump in one minute rather than an infinite speed.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__(spec)
        self.outputs = {
            "distance_km": "number",
            "speed_kmh": "number",
            "since_s": "number",
            "country_changed": "bool",
            "prev_country": "string",
        }
        self._distance, self._speed, self._since, self._changed, self._prev = (
            self.key(o) for o in self.outputs
        )

    def new_state(self) -> list[Any]:
        return [None, 0.0, 0.0, None]  # ts, lat, lon, country

    def step(self, state: Any, ts: float, update: bool, fields: Env, env: Env) -> None:
        lat = fields.get("context.geo.lat")
        lon = fields.get("context.geo.lon")
        country = fields.get("context.geo.country")
        prev_ts, prev_lat, prev_lon, prev_country = state
        if prev_ts is not None:
            env[self._since] = ts - prev_ts
            if prev_country is not None:
                env[self._prev] = prev_country
                if country is not None:
                    env[self._changed] = country != prev_country
            if lat is not None and lon is not None:
                dist = haversine_km(prev_lat, prev_lon, lat, lon)
                env[self._distance] = dist
                # abs(): an event arriving late is still that far from the previous one in time.
                env[self._speed] = dist / (max(abs(ts - prev_ts), 60.0) / 3600.0)
        if update and lat is not None and lon is not None and (prev_ts is None or ts >= prev_ts):
            state[0], state[1], state[2], state[3] = ts, lat, lon, country


class Continuity(FeatureKind):
    """Whether attributes (ip, device, user agent, country) changed since the entity began.

    Keyed by a session id this detects session hijacking: the same session seen again from a
    new address or device. State: the first non-null value of each attribute and an event count.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__(spec)
        if not spec.attributes:
            raise FeatureConfigError(f"feature {spec.name!r}: continuity needs attributes")
        for path in spec.attributes:
            _check_path(spec, "attribute", path)
        names = tuple(p.rsplit(".", 1)[-1] + "_changed" for p in spec.attributes)
        self.outputs = {"events": "number", **dict.fromkeys(names, "bool")}
        self._events = self.key("events")
        self._attributes = tuple(
            (i + 1, path, self.key(name))
            for i, (path, name) in enumerate(zip(spec.attributes, names, strict=True))
        )

    def new_state(self) -> list[Any]:
        return [0, *([None] * len(self._attributes))]

    def step(self, state: Any, ts: float, update: bool, fields: Env, env: Env) -> None:
        env[self._events] = state[0]
        for slot, path, key in self._attributes:
            value = fields.get(path)
            if value is None:
                continue
            first = state[slot]
            if first is not None:
                env[key] = value != first
            elif update:
                state[slot] = value
        if update:
            state[0] += 1


class LastSeen(FeatureKind):
    """Seconds since the entity's previous event that matched ``when``."""

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__(spec)
        self.outputs = {"since_s": "number"}
        self._since = self.key("since_s")

    def new_state(self) -> list[float | None]:
        return [None]

    def step(self, state: Any, ts: float, update: bool, fields: Env, env: Env) -> None:
        previous = state[0]
        if previous is not None:
            env[self._since] = ts - previous
        if update and (previous is None or ts > previous):
            state[0] = ts


_KINDS: Final[dict[str, Callable[[FeatureSpec], FeatureKind]]] = {
    "velocity": Velocity,
    "baseline": Baseline,
    "hour_profile": HourProfile,
    "novelty": Novelty,
    "geo_velocity": GeoVelocity,
    "continuity": Continuity,
    "last_seen": LastSeen,
}


# --------------------------------------------------------------------------------------------
# A compiled feature set and the per-event plan.


@dataclass(frozen=True, slots=True)
class Feature:
    """A validated, compiled feature: its spec, its kind and its filter."""

    spec: FeatureSpec
    kind: FeatureKind
    entity: tuple[str, ...]
    when: Callable[[Mapping[str, Any]], Any] | None
    key_prefix: str  # "<name>@<fingerprint>|" — the start of its state keys

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def prefix(self) -> str:
        """``features.<name>.`` — where its outputs live in the environment."""
        return self.kind.prefix


FeatureOp = tuple[str, Feature, bool]
"""One feature to step for one event: (state key, feature, whether the event updates it)."""


@dataclass(frozen=True)
class FeatureSet:
    """Every feature of a pack, indexed by event type."""

    features: tuple[Feature, ...]
    by_type: Mapping[str, tuple[Feature, ...]] = field(default_factory=dict)

    def schema(self) -> dict[str, str]:
        """Expression types of every feature output, as ``features.<name>.<output>`` paths."""
        return {f.prefix + out: kind for f in self.features for out, kind in f.kind.outputs.items()}

    def plan(self, event_type: str, fields: Mapping[str, Any]) -> list[FeatureOp]:
        """The state operations one event needs (pure: reads nothing but the event).

        A feature whose entity fields are not all present in the event is left out.
        """
        ops: list[FeatureOp] = []
        get = fields.get
        for feature in self.by_type.get(event_type, ()):
            entity = feature.entity
            if len(entity) == 1:
                value = get(entity[0])
                if value is None:
                    continue
                key = feature.key_prefix + (value if value.__class__ is str else str(value))
            else:
                parts = [get(path) for path in entity]
                if None in parts:
                    continue
                key = feature.key_prefix + KEY_SEPARATOR.join([str(p) for p in parts])
            when = feature.when
            ops.append((key, feature, when is None or bool(when(fields))))
        return ops


def state_fingerprint(spec: FeatureSpec) -> str:
    """8 hex digits naming what a feature's state means: its spec without the description.

    State keys carry it, so publishing a pack that changes a feature (a window, a filter, the
    entity) starts that feature afresh instead of reading state built under the old definition,
    while unchanged features keep theirs.
    """
    body = json.dumps(
        spec.model_dump(mode="json", exclude={"description"}), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(body.encode()).hexdigest()[:8]


def build_features(
    specs: Sequence[FeatureSpec],
    functions: FunctionRegistry,
    lists: Mapping[str, frozenset[str]] | None = None,
) -> FeatureSet:
    """Validate and compile feature specs; raises FeatureConfigError naming the feature."""
    seen: set[str] = set()
    features = []
    for spec in specs:
        if spec.name in seen:
            raise FeatureConfigError(f"feature {spec.name!r} is defined twice")
        seen.add(spec.name)
        for path in spec.entity:
            _check_path(spec, "entity", path, {"string", "number"})
        when = None
        if spec.when is not None:
            when = _compile_filter(spec, functions, lists or {})
        features.append(
            Feature(
                spec=spec,
                kind=_KINDS[spec.kind](spec),
                entity=spec.entity,
                when=when,
                key_prefix=f"{spec.name}@{state_fingerprint(spec)}|",
            )
        )
    by_type = {t: tuple(f for f in features if t in f.spec.events) for t in EVENT_TYPES}
    return FeatureSet(features=tuple(features), by_type=by_type)


def _compile_filter(
    spec: FeatureSpec, functions: FunctionRegistry, lists: Mapping[str, frozenset[str]]
) -> Callable[[Any], Any]:
    assert spec.when is not None
    schema = union_schema(spec.events)
    try:
        compiled = compile_expression(spec.when, schema=schema, functions=functions, lists=lists)
    except ExprError as exc:
        raise FeatureConfigError(f"feature {spec.name!r}: when: {exc}") from None
    if compiled.type.name != "BOOL":
        raise FeatureConfigError(f"feature {spec.name!r}: when must be a boolean expression")
    return compiled.fn
