"""Deterministic synthetic traffic with labelled attacks, for measuring detection quality.

``simulate`` builds a small world (users with homes, devices, IPs, habits and counterparties;
internal services with their usual routes), generates realistic, noisy benign activity for it
and injects sixteen kinds of attack episodes after the first two days. It returns the events in
the public contract (plain dicts, sorted by ``occurred_at``) and one label row per attack event.

Everything is derived from the seed through private ``random.Random`` streams: no global random
state, no wall clock, no set iteration, so the same arguments give byte-identical output in any
process. Only the standard library is used. See ``docs/simulator.md`` for the behaviour model.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

__all__ = [
    "ATTACK_TYPES",
    "DEFAULT_START",
    "SANCTIONED_COUNTRIES",
    "SENSITIVE_ROUTES",
    "GatewayScene",
    "SceneService",
    "gateway_config_path_for",
    "labels_path_for",
    "simulate",
    "simulate_gateway",
    "write_jsonl",
]

Row = dict[str, Any]
Label = tuple[str, str]

ATTACK_TYPES: Final[tuple[str, ...]] = (
    "payment_velocity",
    "amount_anomaly",
    "new_counterparty_high_amount",
    "structuring",
    "card_testing",
    "sanctioned_country",
    "brute_force",
    "credential_stuffing",
    "impossible_travel",
    "new_device_new_country",
    "account_takeover",
    "session_hijacking",
    "lateral_movement",
    "api_burst",
    "exfiltration_size",
    "odd_hours",
)
DEFAULT_START: Final[datetime] = datetime(2026, 11, 2, tzinfo=UTC)
SANCTIONED_COUNTRIES: Final[tuple[str, ...]] = ("KP", "IR", "SY", "CU")
# (method, path) pairs no service calls in benign traffic; only lateral movement uses them.
SENSITIVE_ROUTES: Final[tuple[tuple[str, str], ...]] = (
    ("GET", "/admin/users"),
    ("POST", "/admin/roles"),
    ("GET", "/v1/keys"),
    ("GET", "/v1/keys/{id}"),
    ("GET", "/internal/export"),
    ("POST", "/internal/export"),
    ("GET", "/v1/accounts/{id}/credentials"),
    ("GET", "/internal/config/secrets"),
)

MINUTE: Final = 60.0
HOUR: Final = 3600.0
DAY: Final = 86400.0
ATTACK_FREE_DAYS: Final = 2  # attacks start after this many days, so baselines have history
_ATTACK_TAIL: Final = 14 * HOUR  # no episode starts later than this before the end
_PLATFORM_UTC_OFFSET: Final = 1.0  # internal services run on Central European time (CET)
_FLIGHT_KMH: Final = 800.0  # benign trips never move faster than this
_EPOCH_WEEKDAY: Final = 3  # 1970-01-01 was a Thursday (Monday = 0)


# --------------------------------------------------------------------------------------------
# Static world data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Country:
    code: str
    city: str
    lat: float
    lon: float
    utc_offset: float  # hours, in November
    weight: int  # relative share of users
    ip_octets: tuple[int, int] = (0, 0)  # first octets of the country's public address blocks


_COUNTRY_ROWS: Final[tuple[tuple[str, str, float, float, float, int], ...]] = (
    ("ZA", "Johannesburg", -26.2041, 28.0473, 2.0, 5),
    ("GB", "London", 51.5074, -0.1278, 0.0, 10),
    ("DE", "Berlin", 52.5200, 13.4050, 1.0, 10),
    ("FR", "Paris", 48.8566, 2.3522, 1.0, 8),
    ("NL", "Amsterdam", 52.3676, 4.9041, 1.0, 5),
    ("ES", "Madrid", 40.4168, -3.7038, 1.0, 6),
    ("IT", "Rome", 41.9028, 12.4964, 1.0, 6),
    ("PT", "Lisbon", 38.7223, -9.1393, 0.0, 3),
    ("IE", "Dublin", 53.3498, -6.2603, 0.0, 3),
    ("BE", "Brussels", 50.8503, 4.3517, 1.0, 3),
    ("PL", "Warsaw", 52.2297, 21.0122, 1.0, 4),
    ("SE", "Stockholm", 59.3293, 18.0686, 1.0, 3),
    ("CH", "Zurich", 47.3769, 8.5417, 1.0, 2),
    ("AT", "Vienna", 48.2082, 16.3738, 1.0, 2),
    ("US", "New York", 40.7128, -74.0060, -5.0, 8),
    ("CA", "Toronto", 43.6532, -79.3832, -5.0, 3),
    ("BR", "Sao Paulo", -23.5505, -46.6333, -3.0, 4),
    ("MX", "Mexico City", 19.4326, -99.1332, -6.0, 2),
    ("IN", "Mumbai", 19.0760, 72.8777, 5.5, 4),
    ("SG", "Singapore", 1.3521, 103.8198, 8.0, 2),
    ("JP", "Tokyo", 35.6762, 139.6503, 9.0, 2),
    ("AU", "Sydney", -33.8688, 151.2093, 11.0, 3),
    ("NG", "Lagos", 6.5244, 3.3792, 1.0, 3),
    ("KE", "Nairobi", -1.2921, 36.8219, 3.0, 2),
    ("AE", "Dubai", 25.2048, 55.2708, 4.0, 2),
    ("TR", "Istanbul", 41.0082, 28.9784, 3.0, 3),
)
_PUBLIC_FIRST_OCTETS: Final[tuple[int, ...]] = (
    *(2, 5, 24, 31, 37, 41, 46, 49, 58, 62, 64, 66, 72, 77, 78, 79, 80, 81, 82, 83, 84, 85),
    *(86, 87, 88, 89, 90, 91, 93, 94, 95, 102, 105, 109, 110, 112, 118, 121, 126, 133, 139),
    *(145, 151, 154, 176, 177, 178, 185, 186, 187, 189, 190, 196, 197, 200, 201),
)
COUNTRIES: Final[tuple[_Country, ...]] = tuple(
    _Country(*row, ip_octets=(_PUBLIC_FIRST_OCTETS[2 * i], _PUBLIC_FIRST_OCTETS[2 * i + 1]))
    for i, row in enumerate(_COUNTRY_ROWS)
)
_COUNTRY_WEIGHTS: Final[tuple[int, ...]] = tuple(c.weight for c in COUNTRIES)
_ACCOUNT_CURRENCY: Final[Mapping[str, str]] = {"GB": "GBP", "US": "USD", "CH": "CHF"}
_ONLINE_HUBS: Final[tuple[str, ...]] = ("IE", "NL", "US", "GB", "DE")

# Local-hour activity weights for the three user rhythms (index = local hour).
_HOUR_WEIGHTS: Final[Mapping[str, tuple[float, ...]]] = {
    "day": (*(0.0,) * 8, 3, 4, 5, 5, 6, 5, 4, 4, 5, 5, 4, 3, *(0.0,) * 4),
    "normal": (
        *(0.4, 0.2, 0.1, 0.06, 0.06, 0.15, 0.6, 1.8, 3, 3.5, 4, 4.5),
        *(5.5, 5, 4.5, 4.5, 5, 5.5, 6.5, 7, 6.5, 5.5, 3.5, 1.5),
    ),
    "night": (
        *(5, 4, 2.5, 1.2, 0.4, 0.1, 0.05, 0.05, 0.2, 0.6, 1.2, 2),
        *(3, 3.5, 3.5, 3.5, 4, 4.5, 5, 5.5, 6, 6.5, 6.5, 6),
    ),
}
_HOUR_CUM: Final[Mapping[str, list[float]]] = {
    name: list(itertools.accumulate(w)) for name, w in _HOUR_WEIGHTS.items()
}
# Share of load by platform-local hour for internal services.
_SERVICE_DAY_SHAPE: Final[tuple[float, ...]] = (
    *(0.15, 0.1, 0.08, 0.07, 0.08, 0.12, 0.25, 0.5, 0.8, 0.95, 1.0, 1.0),
    *(0.95, 1.0, 1.0, 0.95, 0.9, 0.8, 0.65, 0.5, 0.4, 0.3, 0.25, 0.2),
)
_BUSINESS_HOURS: Final = range(7, 20)

_PHONE_UAS: Final[tuple[str, ...]] = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SM-S921B) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/130.0.6723.86 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 15; Pixel 8) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.6778.39 Mobile Safari/537.36",
    "RiskBank/5.12.0 (iOS 18.1; iPhone15,2)",
    "RiskBank/5.12.0 (Android 14; SM-A546B)",
    "RiskBank/5.11.3 (Android 13; Redmi Note 12)",
)
_DESKTOP_UAS: Final[tuple[str, ...]] = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36 Edg/130.0.0.0",
)
_TABLET_UAS: Final[tuple[str, ...]] = (
    "Mozilla/5.0 (iPad; CPU OS 17_6 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SM-X710) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
)
_BOT_UAS: Final[tuple[str, ...]] = (
    "python-requests/2.32.3",
    "curl/8.10.1",
    "Go-http-client/1.1",
    "okhttp/4.12.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) HeadlessChrome/130.0.0.0 Safari/537.36",
)
_BROWSER_UAS: Final[tuple[str, ...]] = _DESKTOP_UAS + _PHONE_UAS[:3]

# merchant category -> (share of merchants, typical channel)
_MERCHANT_CATEGORIES: Final[tuple[tuple[str, int, str], ...]] = (
    ("grocery", 18, "card"),
    ("restaurants", 14, "card"),
    ("transport", 8, "wallet"),
    ("fuel", 6, "card"),
    ("pharmacy", 5, "card"),
    ("clothing", 8, "card"),
    ("electronics", 5, "card"),
    ("travel", 4, "card"),
    ("entertainment", 6, "wallet"),
    ("utilities", 5, "transfer"),
    ("telecom", 4, "transfer"),
    ("online_retail", 12, "card"),
    ("subscriptions", 5, "card"),
)
_ONLINE_CATEGORIES: Final[tuple[str, ...]] = ("online_retail", "subscriptions", "entertainment")

_SESSION_ACTIONS: Final[tuple[tuple[str, float], ...]] = (
    ("view", 82.0),
    ("view_statement", 9.0),
    ("update_profile", 3.0),
    ("payout", 2.5),
    ("add_payee", 0.6),
    ("change_password", 0.08),
    ("change_email", 0.03),
)
_SESSION_ACTION_NAMES: Final[tuple[str, ...]] = tuple(a for a, _ in _SESSION_ACTIONS)
_SESSION_ACTION_CUM: Final[list[float]] = list(itertools.accumulate(w for _, w in _SESSION_ACTIONS))

_SERVICE_NAMES: Final[tuple[str, ...]] = (
    *("payments", "ledger", "accounts", "notifications", "reporting", "kyc", "cards", "auth"),
    *("fx", "statements", "webhooks", "search", "loans", "savings", "pricing", "audit"),
    *("support", "billing", "identity", "rewards"),
)
# Back-office services are the ones that may run during office hours only.
_BACK_OFFICE: Final[tuple[str, ...]] = ("reporting", "kyc", "statements", "audit", "support")
_SERVICE_ROUTES: Final[Mapping[str, tuple[tuple[str, str], ...]]] = {
    "payments": (
        ("POST", "/v1/payments"),
        ("GET", "/v1/payments/{id}"),
        ("POST", "/v1/payments/{id}/capture"),
        ("POST", "/v1/payments/{id}/refunds"),
        ("GET", "/v1/payments/{id}/status"),
    ),
    "ledger": (
        ("POST", "/v1/entries"),
        ("GET", "/v1/entries/{id}"),
        ("GET", "/v1/accounts/{id}/entries"),
        ("POST", "/v1/transfers"),
    ),
    "accounts": (
        ("GET", "/v1/accounts/{id}"),
        ("GET", "/v1/accounts/{id}/balance"),
        ("POST", "/v1/accounts/{id}/holds"),
        ("DELETE", "/v1/accounts/{id}/holds/{id}"),
        ("GET", "/v1/accounts/{id}/limits"),
        ("PATCH", "/v1/accounts/{id}"),
    ),
    "cards": (
        ("GET", "/v1/cards/{id}"),
        ("POST", "/v1/cards/{id}/authorizations"),
        ("PATCH", "/v1/cards/{id}"),
        ("GET", "/v1/cards/{id}/transactions"),
    ),
    "notifications": (
        ("POST", "/v1/notifications"),
        ("POST", "/v1/emails"),
        ("POST", "/v1/push"),
        ("GET", "/v1/notifications/{id}"),
    ),
    "auth": (
        ("POST", "/v1/tokens/introspect"),
        ("POST", "/v1/tokens/refresh"),
        ("GET", "/v1/sessions/{id}"),
        ("GET", "/.well-known/jwks.json"),
    ),
    "kyc": (
        ("GET", "/v1/customers/{id}/status"),
        ("POST", "/v1/checks"),
        ("GET", "/v1/checks/{id}"),
        ("PUT", "/v1/customers/{id}/documents/{id}"),
    ),
    "fx": (("GET", "/v1/rates"), ("POST", "/v1/quotes"), ("GET", "/v1/quotes/{id}")),
    "reporting": (
        ("POST", "/v1/reports"),
        ("GET", "/v1/reports/{id}"),
        ("GET", "/v1/metrics/daily"),
    ),
    "statements": (
        ("GET", "/v1/statements/{id}"),
        ("POST", "/v1/statements"),
        ("GET", "/v1/accounts/{id}/statements"),
    ),
}
_GENERIC_ROUTES: Final[tuple[tuple[str, str], ...]] = (
    ("GET", "/v1/{res}/{id}"),
    ("GET", "/v1/{res}"),
    ("POST", "/v1/{res}"),
    ("PUT", "/v1/{res}/{id}"),
    ("PATCH", "/v1/{res}/{id}"),
    ("GET", "/v1/{res}/{id}/history"),
)
_SERVICE_LIBS: Final[tuple[str, ...]] = (
    "grpc-go/1.64.0",
    "okhttp/4.12.0",
    "python-httpx/0.27.2",
    "Go-http-client/1.1",
    "Java-http-client/21.0.4",
)


# --------------------------------------------------------------------------------------------
# World model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Device:
    device_id: str
    user_agent: str
    kind: str  # phone | desktop | tablet


@dataclass(slots=True)
class _Counterparty:
    cp_id: str
    country: str
    channel: str  # card | wallet | transfer
    category: str | None  # merchant category; None for people
    factor: float = 1.0  # typical amount relative to the payer's median


@dataclass(frozen=True, slots=True)
class _Nat:
    ip: str
    kind: str  # corporate (office hours) | carrier (mobile data)


@dataclass(slots=True)
class _Trip:
    depart: float
    arrive: float
    leave: float
    back: float
    country: _Country
    ips: list[str]
    hotel_device: _Device | None

    def phase(self, t: float) -> str:
        """Where the traveller is at ``t``: ``home``, ``air`` or ``away``."""
        if t < self.depart or t >= self.back:
            return "home"
        if t < self.arrive or t >= self.leave:
            return "air"
        return "away"


@dataclass(frozen=True, slots=True)
class _SessionRef:
    session_id: str
    start: float
    end: float


@dataclass(slots=True)
class _User:
    n: int
    country: _Country
    rhythm: str  # day | normal | night
    ips: list[str]
    devices: list[_Device]
    method: str
    median: float
    sigma: float
    tx_rate: float
    login_rate: float
    typo_rate: float
    nat: _Nat | None = None
    new_phone: _Device | None = None
    new_phone_at: float = math.inf
    trip: _Trip | None = None
    counterparties: list[_Counterparty] = field(default_factory=list)
    cp_cum: list[float] = field(default_factory=list)
    known_cp: set[str] = field(default_factory=set)  # ever paid; membership only, never iterated
    logins: list[float] = field(default_factory=list)
    payments: list[float] = field(default_factory=list)
    sessions: list[_SessionRef] = field(default_factory=list)

    @property
    def user_id(self) -> str:
        return f"user-{self.n}"

    @property
    def account_id(self) -> str:
        return f"acct-{self.n}"

    @property
    def currency(self) -> str:
        return _ACCOUNT_CURRENCY.get(self.country.code, "EUR")

    def devices_at(self, t: float) -> list[_Device]:
        """The devices in use at ``t`` (a new phone replaces the old one from its first day)."""
        if self.new_phone is not None and t >= self.new_phone_at:
            return [self.new_phone, *self.devices[1:]]
        return self.devices

    def add_counterparty(self, cp: _Counterparty, weight: float) -> None:
        self.counterparties.append(cp)
        self.known_cp.add(cp.cp_id)
        self.cp_cum.append((self.cp_cum[-1] if self.cp_cum else 0.0) + weight)


@dataclass(slots=True)
class _Route:
    target: str
    method: str
    path: str
    rate: float  # calls per hour at peak load
    bytes_median: float
    bytes_sigma: float
    since: float = 0.0  # seconds from start; > 0 for routes added by a deployment


@dataclass(slots=True)
class _Service:
    service_id: str
    resource: str
    ips: list[str]
    user_agent: str
    upgraded_agent: str
    business_hours_only: bool
    routes: list[_Route] = field(default_factory=list)
    deployed_at: float | None = None

    def route_keys(self) -> list[tuple[str, str, str]]:
        return [(r.target, r.method, r.path) for r in self.routes]


@dataclass(slots=True)
class _World:
    start: datetime
    start_epoch: float
    days: int
    horizon: float
    users: list[_User]
    merchants_by_country: dict[str, list[_Counterparty]]
    online_merchants: list[_Counterparty]
    services: list[_Service]
    ip_geo: dict[str, dict[str, Any]]

    def local_hour(self, t: float, utc_offset: float) -> float:
        return ((self.start_epoch + t) / HOUR + utc_offset) % 24.0

    def local_weekday(self, t: float, utc_offset: float) -> int:
        return int(((self.start_epoch + t) / HOUR + utc_offset) // 24 + _EPOCH_WEEKDAY) % 7

    def local_midnight(self, day: int, utc_offset: float) -> float:
        """Seconds from start of local midnight ``day`` days after the start's local date."""
        local_hours = self.start_epoch / HOUR + utc_offset
        return ((local_hours // 24 + day) * 24 - utc_offset) * HOUR - self.start_epoch


@dataclass(slots=True)
class _Draft:
    ms: int
    seq: int
    kind: str
    data: Row
    context: Row
    label: Label | None


class _Sink:
    """Collects events (with their time in seconds from start) and drops out-of-range ones."""

    def __init__(self, horizon: float) -> None:
        self.horizon_ms = int(horizon * 1000)
        self.drafts: list[_Draft] = []

    def add(self, t: float, kind: str, data: Row, context: Row, label: Label | None = None) -> bool:
        ms = math.floor(t * 1000)
        if ms < 0 or ms >= self.horizon_ms:
            return False
        self.drafts.append(_Draft(ms, len(self.drafts), kind, data, context, label))
        return True


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine) in kilometres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(a)))


def _country_distance(a: _Country, b: _Country) -> float:
    return _distance_km(a.lat, a.lon, b.lat, b.lon)


def _count_before(times: list[float], t: float) -> int:
    """How many of the sorted ``times`` are earlier than ``t``."""
    return bisect.bisect_left(times, t)


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _money(amount: float) -> float:
    return max(0.01, round(amount, 2))


def _hex(rng: random.Random, bits: int = 40) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


def _public_ip(rng: random.Random, country: _Country) -> str:
    first = rng.choice(country.ip_octets)
    return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def _jittered_geo(rng: random.Random, country: _Country, spread: float = 0.05) -> Row:
    """A city-level geo-IP location: the country's city plus a few kilometres of jitter."""
    return {
        "country": country.code,
        "lat": round(country.lat + rng.uniform(-spread, spread), 4),
        "lon": round(country.lon + rng.uniform(-spread, spread), 4),
    }


def _new_device(rng: random.Random, kind: str) -> _Device:
    pool = {"phone": _PHONE_UAS, "desktop": _DESKTOP_UAS, "tablet": _TABLET_UAS}[kind]
    return _Device(f"d-{_hex(rng)}", rng.choice(pool), kind)


def _register_ip(world: _World, ip: str, geo: Row) -> str:
    world.ip_geo.setdefault(ip, geo)
    return ip


def _context_for(world: _World, ip: str, device: _Device) -> Row:
    return {
        "ip": ip,
        "device_id": device.device_id,
        "user_agent": device.user_agent,
        "geo": dict(world.ip_geo[ip]),
    }


def _transaction(user: _User, cp: _Counterparty, amount: float, channel: str | None = None) -> Row:
    data: Row = {
        "account_id": user.account_id,
        "counterparty_id": cp.cp_id,
        "amount": _money(amount),
        "currency": user.currency,
        "counterparty_country": cp.country,
        "channel": channel or cp.channel,
    }
    if cp.category is not None:
        data["merchant_category"] = cp.category
    return data


def _login(user_id: str, success: bool, method: str) -> Row:
    return {"user_id": user_id, "success": success, "method": method}


def _session(user: _User, session_id: str, action: str, amount: float | None = None) -> Row:
    data: Row = {"user_id": user.user_id, "session_id": session_id, "action": action}
    if amount is not None:
        data["amount"] = _money(amount)
        data["currency"] = user.currency
    return data


def _api_call(service: _Service, target: str, method: str, path: str, size: int) -> Row:
    return {
        "service_id": service.service_id,
        "target": target,
        "method": method,
        "path": path,
        "request_bytes": max(0, size),
    }


def _route_size(rng: random.Random, route: _Route) -> int:
    return round(route.bytes_median * math.exp(rng.gauss(0.0, route.bytes_sigma)))


def _is_work_time(world: _World, user: _User, t: float) -> bool:
    offset = user.country.utc_offset
    return world.local_weekday(t, offset) < 5 and 8 <= world.local_hour(t, offset) < 18


def _user_context(
    world: _World, user: _User, t: float, rng: random.Random, device: _Device | None = None
) -> Row | None:
    """Where, on what and through which IP ``user`` acts at ``t``; None while in the air."""
    phase = user.trip.phase(t) if user.trip is not None else "home"
    if phase == "air":
        return None
    if device is None:
        device = _pick_device(user, t, rng, abroad=phase == "away")
    if phase == "away" and user.trip is not None:
        return _context_for(world, rng.choice(user.trip.ips), device)
    return _context_for(world, _home_ip(world, user, t, device, rng), device)


def _pick_device(user: _User, t: float, rng: random.Random, *, abroad: bool = False) -> _Device:
    if abroad and user.trip is not None and user.trip.hotel_device and rng.random() < 0.25:
        return user.trip.hotel_device
    devices = user.devices_at(t)
    if len(devices) == 1 or rng.random() < 0.7:
        return devices[0]
    return rng.choice(devices[1:])


def _home_ip(world: _World, user: _User, t: float, device: _Device, rng: random.Random) -> str:
    nat = user.nat
    if nat is not None:
        if nat.kind == "corporate" and _is_work_time(world, user, t) and rng.random() < 0.7:
            return nat.ip
        if nat.kind == "carrier" and device.kind == "phone" and rng.random() < 0.6:
            return nat.ip
    if len(user.ips) == 1 or rng.random() < 0.75:
        return user.ips[0]
    return rng.choice(user.ips[1:])


# --------------------------------------------------------------------------------------------
# Building the world
# --------------------------------------------------------------------------------------------


def _build_world(
    rng: random.Random, *, start: datetime, days: int, users: int, services: int
) -> _World:
    world = _World(
        start=start,
        start_epoch=start.timestamp(),
        days=days,
        horizon=days * DAY,
        users=[],
        merchants_by_country={},
        online_merchants=[],
        services=[],
        ip_geo={},
    )
    _build_merchants(world, rng, max(150, users // 2))
    world.users = [_build_user(world, rng, n) for n in range(users)]
    for user in world.users:
        _assign_counterparties(world, user, rng)
    _build_shared_nats(world, rng)
    for user in world.users:
        _plan_life_events(world, user, rng)
    world.services = [_build_service(world, rng, i, services) for i in range(services)]
    _assign_service_profiles(world, rng)
    return world


def _build_merchants(world: _World, rng: random.Random, count: int) -> None:
    categories = [c for c, _, _ in _MERCHANT_CATEGORIES]
    cum = list(itertools.accumulate(share for _, share, _ in _MERCHANT_CATEGORIES))
    channels = {c: ch for c, _, ch in _MERCHANT_CATEGORIES}
    for i in range(count):
        online = rng.random() < 0.12
        if online:
            country = rng.choice(_ONLINE_HUBS)
            category = rng.choice(_ONLINE_CATEGORIES)
        else:
            country = rng.choices(COUNTRIES, weights=_COUNTRY_WEIGHTS)[0].code
            category = rng.choices(categories, cum_weights=cum)[0]
        channel = channels[category]
        if channel == "card" and rng.random() < 0.15:
            channel = "wallet"
        merchant = _Counterparty(f"m-{i}", country, channel, category, rng.lognormvariate(0, 0.35))
        if online:
            world.online_merchants.append(merchant)
        else:
            world.merchants_by_country.setdefault(country, []).append(merchant)


def _build_user(world: _World, rng: random.Random, n: int) -> _User:
    country = rng.choices(COUNTRIES, weights=_COUNTRY_WEIGHTS)[0]
    home_geo = _jittered_geo(rng, country)
    ips = [
        _register_ip(world, _public_ip(rng, country), home_geo) for _ in range(rng.randint(1, 3))
    ]
    kinds = ["phone", *rng.sample(["desktop", "tablet", "desktop"], rng.choice([0, 0, 1, 1, 2]))]
    method = rng.choices(["password", "sso", "otp"], weights=[70, 15, 15])[0]
    return _User(
        n=n,
        country=country,
        rhythm=rng.choices(["day", "normal", "night"], weights=[30, 60, 10])[0],
        ips=ips,
        devices=[_new_device(rng, kind) for kind in kinds],
        method=method,
        median=_log_uniform(rng, 20.0, 300.0),
        sigma=rng.uniform(0.6, 1.0),
        tx_rate=min(8.0, max(0.2, rng.lognormvariate(math.log(1.8), 0.6))),
        login_rate=min(4.0, max(0.15, rng.lognormvariate(math.log(1.4), 0.6))),
        typo_rate=rng.uniform(0.02, 0.08),
    )


def _new_merchant(world: _World, user: _User, rng: random.Random, country: str) -> _Counterparty:
    """A merchant ``user`` never paid: local to ``country`` (or online when none is left)."""
    local = world.merchants_by_country.get(country, [])
    for _ in range(8):
        pool = local if local and rng.random() < 0.8 else world.online_merchants or local
        if not pool:
            break
        merchant = rng.choice(pool)
        if merchant.cp_id not in user.known_cp:
            return merchant
    return _Counterparty(f"m-x{_hex(rng, 32)}", country, "card", "online_retail")


def _new_person(world: _World, user: _User, rng: random.Random) -> _Counterparty:
    """Another customer (``acct-<k>``) or an external account (``ext-<hex>``) not yet paid."""
    if len(world.users) > 1 and rng.random() < 0.6:
        other = world.users[rng.randrange(len(world.users))]
        if other.n != user.n and other.account_id not in user.known_cp:
            return _Counterparty(other.account_id, other.country.code, "transfer", None)
    country = user.country.code if rng.random() < 0.85 else rng.choice(COUNTRIES).code
    return _Counterparty(f"ext-{_hex(rng, 32)}", country, "transfer", None, rng.uniform(0.8, 2.0))


def _assign_counterparties(world: _World, user: _User, rng: random.Random) -> None:
    count = rng.randint(5, 30)
    people = round(count * rng.uniform(0.15, 0.4))
    for rank in range(count):
        if rank % max(1, count // max(1, people)) == 1 and people > 0:
            cp = _new_person(world, user, rng)
            people -= 1
        else:
            cp = _new_merchant(world, user, rng, user.country.code)
        if cp.cp_id not in user.known_cp:
            user.add_counterparty(cp, 1.0 / (rank + 1) ** 1.6)


def _build_shared_nats(world: _World, rng: random.Random) -> None:
    """Groups of 5-20 same-country users behind one corporate or carrier NAT address."""
    by_country: dict[str, list[_User]] = {}
    for user in world.users:
        by_country.setdefault(user.country.code, []).append(user)
    for code, members in by_country.items():
        country = next(c for c in COUNTRIES if c.code == code)
        free = list(members)
        rng.shuffle(free)
        for _ in range(int(len(members) * 0.15 / 10 + rng.random())):
            size = min(len(free), rng.randint(5, 20))
            if size < 5:
                break
            kind = rng.choice(["corporate", "corporate", "carrier"])
            nat = _Nat(
                _register_ip(world, _public_ip(rng, country), _jittered_geo(rng, country)), kind
            )
            for user in free[:size]:
                user.nat = nat
            free = free[size:]


def _plan_life_events(world: _World, user: _User, rng: random.Random) -> None:
    """Rare benign changes: a new phone, one trip abroad."""
    if rng.random() < min(0.5, 0.004 * world.days):
        user.new_phone = _new_device(rng, "phone")
        user.new_phone_at = rng.uniform(0.0, world.horizon)
    if world.days >= 2 and rng.random() < min(0.5, 0.01 * world.days):
        user.trip = _plan_trip(world, user, rng)


def _plan_trip(world: _World, user: _User, rng: random.Random) -> _Trip:
    dest = rng.choice([c for c in COUNTRIES if c.code != user.country.code])
    flight = (_country_distance(user.country, dest) / _FLIGHT_KMH + rng.uniform(0.5, 1.5)) * HOUR
    depart = rng.uniform(0.3 * DAY, max(0.4 * DAY, world.horizon - DAY))
    leave = depart + flight + rng.uniform(1.5, 6.0) * DAY
    geo = _jittered_geo(rng, dest)
    ips = [_register_ip(world, _public_ip(rng, dest), geo) for _ in range(rng.randint(1, 2))]
    hotel = _new_device(rng, "desktop") if rng.random() < 0.15 else None
    return _Trip(depart, depart + flight, leave, leave + flight, dest, ips, hotel)


def _build_service(world: _World, rng: random.Random, index: int, total: int) -> _Service:
    base = _SERVICE_NAMES[index % len(_SERVICE_NAMES)]
    name = base if index < len(_SERVICE_NAMES) else f"{base}-{index // len(_SERVICE_NAMES)}"
    ips = [f"10.{(index >> 8) & 255}.{index & 255}.{10 + i}" for i in range(rng.randint(2, 4))]
    lib = rng.choice(_SERVICE_LIBS)
    major, minor = rng.randint(1, 4), rng.randint(0, 30)
    return _Service(
        service_id=f"svc-{name}",
        resource=name,
        ips=ips,
        user_agent=f"svc-{name}/{major}.{minor}.0 {lib}",
        upgraded_agent=f"svc-{name}/{major}.{minor + 1}.0 {lib}",
        business_hours_only=False,
    )


def _catalog(service: _Service) -> tuple[tuple[str, str], ...]:
    """The (method, path) routes ``service`` serves, with ids templated as ``{id}``."""
    routes = _SERVICE_ROUTES.get(service.resource.split("-")[0])
    if routes is not None:
        return routes
    res = service.resource
    return tuple((m, p.replace("{res}", res)) for m, p in _GENERIC_ROUTES)


def _new_route(rng: random.Random, target: _Service, method: str, path: str) -> _Route:
    writes = method in {"POST", "PUT", "PATCH"}
    median = rng.uniform(400, 6000) if writes else rng.uniform(120, 600)
    return _Route(
        target=target.service_id,
        method=method,
        path=path,
        rate=_log_uniform(rng, 1.5, 30.0),
        bytes_median=median,
        bytes_sigma=rng.uniform(0.2, 0.5),
    )


def _assign_service_profiles(world: _World, rng: random.Random) -> None:
    """Usual routes, business-hours-only back offices and the period's legitimate deployments."""
    services = world.services
    for service in services:
        others = [s for s in services if s is not service]
        candidates = [(s, m, p) for s in others for m, p in _catalog(s)]
        for target, method, path in rng.sample(
            candidates, min(len(candidates), rng.randint(3, 10))
        ):
            service.routes.append(_new_route(rng, target, method, path))
    order = list(range(len(services)))
    rng.shuffle(order)
    order.sort(key=lambda i: services[i].resource.split("-")[0] not in _BACK_OFFICE)
    n_office = min(len(services) - 1, max(1, round(0.3 * len(services))))
    for i in order[:n_office]:
        services[i].business_hours_only = True
    n_deploys = min(len(services) - 1, rng.randint(1, 2) + len(services) // 20)
    for i in order[len(order) - n_deploys :]:
        _deploy_new_route(world, services[i], rng)


def _deploy_new_route(world: _World, service: _Service, rng: random.Random) -> None:
    """A legitimate release: the service starts calling one more, non-sensitive route."""
    by_id = {s.service_id: s for s in world.services}
    used = set(service.route_keys())
    fresh = [
        (s, m, p)
        for s in world.services
        if s is not service
        for m, p in _catalog(s)
        if (s.service_id, m, p) not in used
    ]
    if fresh and rng.random() < 0.5:
        target, method, path = rng.choice(fresh)
    else:
        base = rng.choice(service.routes)
        target, method = by_id[base.target], base.method
        path = base.path.replace("/v1/", "/v2/", 1) if base.path.startswith("/v1/") else base.path
        if (target.service_id, method, path) in used:
            path = path.rstrip("/") + "/summary"
    route = _new_route(rng, target, method, path)
    route.since = service.deployed_at = rng.uniform(0.5 * DAY, max(0.6 * DAY, world.horizon - DAY))
    service.routes.append(route)


# --------------------------------------------------------------------------------------------
# Benign behaviour
# --------------------------------------------------------------------------------------------


class _UserActivity:
    """A user's normal days: payments, logins (with typos) and the sessions that follow."""

    def __init__(self, world: _World, user: _User, rng: random.Random, sink: _Sink) -> None:
        self.world, self.user, self.rng, self.sink = world, user, rng, sink

    def run(self) -> None:
        for day in range(-1, self.world.days + 1):
            self._day(day)
        self.user.logins.sort()
        self.user.payments.sort()
        self.user.sessions.sort(key=lambda s: s.start)

    def _day(self, day: int) -> None:
        offset = self.user.country.utc_offset
        midnight = self.world.local_midnight(day, offset)
        weekend = self.world.local_weekday(midnight + 12 * HOUR, offset) >= 5
        for _ in range(_poisson(self.rng, self.user.tx_rate * (1.1 if weekend else 1.0))):
            self._payment(self._time_of_day(midnight))
        for _ in range(min(4, _poisson(self.rng, self.user.login_rate))):
            self._login_and_session(self._time_of_day(midnight))

    def _time_of_day(self, midnight: float) -> float:
        hour = self.rng.choices(range(24), cum_weights=_HOUR_CUM[self.user.rhythm])[0]
        return midnight + (hour + self.rng.random()) * HOUR

    def _payment(self, t: float) -> None:
        user, rng = self.user, self.rng
        ctx = _user_context(self.world, user, t, rng)
        if ctx is None:
            return
        here = ctx["geo"]["country"]
        if here != user.country.code and rng.random() < 0.6:
            cp = _new_merchant(self.world, user, rng, here)
        elif rng.random() < 0.10:
            cp = self._new_counterparty()
        else:
            cp = rng.choices(user.counterparties, cum_weights=user.cp_cum)[0]
        user.known_cp.add(cp.cp_id)
        if rng.random() < 0.004:
            amount = user.median * rng.uniform(3.0, 8.0)  # a rare big purchase
        else:
            z = max(-3.5, min(3.5, rng.gauss(0.0, 1.0)))
            amount = max(1.0, user.median * cp.factor * math.exp(user.sigma * z))
        if self.sink.add(t, "transaction", _transaction(user, cp, amount), ctx):
            user.payments.append(t)

    def _new_counterparty(self) -> _Counterparty:
        user, rng = self.user, self.rng
        if rng.random() < 0.75:
            cp = _new_merchant(self.world, user, rng, user.country.code)
        else:
            cp = _new_person(self.world, user, rng)
        if cp.cp_id not in user.known_cp and rng.random() < 0.3:
            user.add_counterparty(cp, 0.3)  # some new ones become regulars
        return cp

    def _login_and_session(self, t: float) -> None:
        user, rng = self.user, self.rng
        ctx = _user_context(self.world, user, t, rng)
        if ctx is None:
            return
        method = user.method if rng.random() < 0.9 else rng.choice(["password", "sso", "otp"])
        if rng.random() < user.typo_rate:
            typos = rng.choices([1, 2, 3], weights=[70, 25, 5])[0]
            for k in range(typos, 0, -1):
                t_fail = t - k * rng.uniform(6.0, 40.0)
                self.sink.add(t_fail, "login", _login(user.user_id, False, method), dict(ctx))
        if self.sink.add(t, "login", _login(user.user_id, True, method), ctx):
            user.logins.append(t)
        self._session(t, ctx)

    def _session(self, t: float, ctx: Row) -> None:
        user, rng = self.user, self.rng
        session_id = f"s-{_hex(rng, 48)}"
        start = t
        for _ in range(1 + min(7, int(rng.expovariate(1 / 1.8)))):
            t += rng.lognormvariate(math.log(25.0), 0.9)
            action = rng.choices(_SESSION_ACTION_NAMES, cum_weights=_SESSION_ACTION_CUM)[0]
            amount = None
            if action == "payout":
                amount = user.median * 1.5 * rng.lognormvariate(0.0, 0.7)
            self.sink.add(t, "session", _session(user, session_id, action, amount), dict(ctx))
        user.sessions.append(_SessionRef(session_id, start, t))


def _service_intensity(world: _World, service: _Service, t: float) -> float:
    """Share of peak load at ``t``: 24/7 with a daytime peak, or office hours only."""
    hour = int(world.local_hour(t, _PLATFORM_UTC_OFFSET))
    weekend = world.local_weekday(t, _PLATFORM_UTC_OFFSET) >= 5
    shape = _SERVICE_DAY_SHAPE[hour]
    if service.business_hours_only:
        return shape * (0.35 if weekend else 1.0) if hour in _BUSINESS_HOURS else 0.0
    return (0.2 + 0.8 * shape) * (0.6 if weekend else 1.0)


def _service_context(service: _Service, t: float, rng: random.Random, ip: str | None = None) -> Row:
    upgraded = service.deployed_at is not None and t >= service.deployed_at
    agent = service.upgraded_agent if upgraded else service.user_agent
    return {"ip": ip or rng.choice(service.ips), "user_agent": agent}


def _service_traffic(world: _World, service: _Service, rng: random.Random, sink: _Sink) -> None:
    """Each route as a Poisson process thinned by the service's time-of-day load."""
    for route in service.routes:
        peak_per_second = route.rate / HOUR
        t = route.since
        while True:
            t += rng.expovariate(peak_per_second)
            if t >= world.horizon:
                break
            if rng.random() < _service_intensity(world, service, t):
                data = _api_call(
                    service, route.target, route.method, route.path, _route_size(rng, route)
                )
                sink.add(t, "api_call", data, _service_context(service, t, rng))


# --------------------------------------------------------------------------------------------
# Attacks
# --------------------------------------------------------------------------------------------


def _episodes_per_type(days: int, users: int) -> int:
    """About 12 episodes per attack type for 7 days x 1000 users; at least 2 when possible."""
    attack_days = days - ATTACK_FREE_DAYS
    if attack_days <= 0:
        return 0
    return max(2, round(12 * attack_days / 5 * math.sqrt(users / 1000)))


class _Attacks:
    """Injects labelled attack episodes; one method per attack type."""

    def __init__(self, world: _World, rng: random.Random, sink: _Sink) -> None:
        self.world, self.rng, self.sink = world, rng, sink
        self.window_start = ATTACK_FREE_DAYS * DAY
        self.window_end = max(self.window_start + HOUR, world.horizon - _ATTACK_TAIL)
        self.victims = [u for u in world.users if u.trip is None]
        rng.shuffle(self.victims)
        self.used_sensitive: dict[str, set[tuple[str, str, str]]] = {}
        self.label: Label = ("", "")

    def run(self) -> None:
        n = _episodes_per_type(self.world.days, len(self.world.users))
        if n == 0:
            return
        handlers: dict[str, Callable[[float, int], None]] = {
            "payment_velocity": self.payment_velocity,
            "amount_anomaly": self.amount_anomaly,
            "new_counterparty_high_amount": self.new_counterparty_high_amount,
            "structuring": self.structuring,
            "card_testing": self.card_testing,
            "sanctioned_country": self.sanctioned_country,
            "brute_force": self.brute_force,
            "credential_stuffing": self.credential_stuffing,
            "impossible_travel": self.impossible_travel,
            "new_device_new_country": self.new_device_new_country,
            "account_takeover": self.account_takeover,
            "session_hijacking": self.session_hijacking,
            "lateral_movement": self.lateral_movement,
            "api_burst": self.api_burst,
            "exfiltration_size": self.exfiltration_size,
            "odd_hours": self.odd_hours,
        }
        assert tuple(handlers) == ATTACK_TYPES
        span = (self.window_end - self.window_start) / n
        for attack, handler in handlers.items():
            for k in range(n):
                self.label = (attack, f"{attack}-{k + 1:03d}")
                handler(self.window_start + (k + self.rng.random()) * span, k)

    # -- shared pieces -------------------------------------------------------------------------

    def emit(self, t: float, kind: str, data: Row, context: Row) -> None:
        self.sink.add(t, kind, data, dict(context), self.label)
        if kind == "login" and data["success"]:
            self._note_login(str(data["user_id"]), t)

    def _note_login(self, user_id: str, t: float) -> None:
        """Keep successful attack logins in the user's history, so later episodes see them."""
        n = int(user_id.removeprefix("user-"))
        if n < len(self.world.users):
            bisect.insort(self.world.users[n].logins, t)

    def victim(self, accept: Callable[[_User], bool] = lambda u: True) -> _User:
        """A user not yet attacked (and not travelling) when possible."""
        for i, user in enumerate(self.victims):
            if accept(user):
                return self.victims.pop(i)
        fitting = [u for u in self.world.users if accept(u)] or self.world.users
        return self.rng.choice(fitting)

    def in_window(self, t: float) -> float:
        return min(max(t, self.window_start), self.window_end)

    def local_daytime(self, user: _User, t: float, first: float = 9.0, last: float = 20.0) -> float:
        """Move ``t`` into ``first``-``last`` o'clock local time on its local day (owner acts)."""
        hour = self.world.local_hour(t, user.country.utc_offset)
        if first <= hour < last:
            return t
        return self.in_window(t - hour * HOUR + self.rng.uniform(first, last) * HOUR)

    def home_context(self, user: _User, t: float) -> Row:
        ctx = _user_context(self.world, user, t, self.rng)
        if ctx is None:  # only travellers fly; fall back to the home address
            ctx = _context_for(self.world, user.ips[0], user.devices_at(t)[0])
        return ctx

    def attacker_context(self, country: _Country, agents: Sequence[str] = _BROWSER_UAS) -> Row:
        ip = _register_ip(
            self.world, _public_ip(self.rng, country), _jittered_geo(self.rng, country)
        )
        device = _Device(f"d-{_hex(self.rng)}", self.rng.choice(agents), "desktop")
        return _context_for(self.world, ip, device)

    def other_country(
        self, home: _Country, min_km: float = 0.0, max_km: float = math.inf, nearest: int = 0
    ) -> _Country:
        """A random country within the distance band; else one of the ``nearest`` (or any)."""
        others = sorted(
            (c for c in COUNTRIES if c.code != home.code), key=lambda c: _country_distance(home, c)
        )
        fitting = [c for c in others if min_km <= _country_distance(home, c) <= max_km]
        return self.rng.choice(fitting or others[: nearest or len(others)])

    def mule(self, user: _User) -> _Counterparty:
        country = user.country if self.rng.random() < 0.7 else self.rng.choice(COUNTRIES)
        return _Counterparty(f"ext-{_hex(self.rng, 32)}", country.code, "transfer", None)

    def spread(self, t: float, count: int, seconds: float) -> list[float]:
        return sorted(t + self.rng.uniform(0.0, seconds) for _ in range(count))

    # -- payments ------------------------------------------------------------------------------

    def payment_velocity(self, t: float, _k: int) -> None:
        """8-20 transfers within 3-10 minutes to one to three counterparties."""
        user, rng = self.victim(), self.rng
        if rng.random() < 0.5:
            ctx = self.home_context(user, t)  # malware on the customer's own device
        else:
            ctx = self.attacker_context(user.country)
        if rng.random() < 0.7:
            cps = [self.mule(user) for _ in range(rng.randint(1, 3))]
        else:
            cps = rng.sample(user.counterparties, min(len(user.counterparties), rng.randint(1, 2)))
        count = rng.randint(8, 20)
        for ti in self.spread(t, count, rng.uniform(3.0, 10.0) * MINUTE):
            amount = user.median * rng.uniform(0.5, 3.0)
            self.emit(ti, "transaction", _transaction(user, rng.choice(cps), amount), ctx)

    def amount_anomaly(self, t: float, _k: int) -> None:
        """One payment 15-60x the account's median, from the customer's own device.

        The victim has paid at least five times before, so the stream shows a usual amount.
        """
        user, rng = self.victim(lambda u: _count_before(u.payments, t - DAY) >= 5), self.rng
        t = self.local_daytime(user, t)
        if rng.random() < 0.6:
            cp = rng.choices(user.counterparties, cum_weights=user.cp_cum)[0]
        else:
            cp = self.mule(user)
        amount = user.median * rng.uniform(15.0, 60.0)
        self.emit(t, "transaction", _transaction(user, cp, amount), self.home_context(user, t))

    def new_counterparty_high_amount(self, t: float, _k: int) -> None:
        """One payment to a never-seen counterparty, 8-20x the median and at least 1,500.

        The victim has paid at least five times before, so the stream shows a usual amount.
        """
        user, rng = (
            self.victim(lambda u: u.median >= 100 and _count_before(u.payments, t - DAY) >= 5),
            self.rng,
        )
        t = self.local_daytime(user, t)
        if rng.random() < 0.7:
            cp = self.mule(user)
        else:
            cp = _new_merchant(self.world, user, rng, user.country.code)
        amount = max(user.median * rng.uniform(8.0, 20.0), 1500.0 * rng.uniform(1.0, 1.2))
        self.emit(t, "transaction", _transaction(user, cp, amount), self.home_context(user, t))

    def structuring(self, t: float, _k: int) -> None:
        """3-6 payments of 9,000-9,990 within 1-8 daytime hours, to one to three payees."""
        user, rng = self.victim(), self.rng
        t = self.local_daytime(user, t, 9.0, 12.0)
        cps = [self.mule(user) for _ in range(rng.randint(1, 3))]
        for ti in self.spread(t, rng.randint(3, 6), rng.uniform(1.0, 8.0) * HOUR):
            amount = rng.uniform(9000.0, 9990.0)
            tx = _transaction(user, rng.choice(cps), amount)
            self.emit(ti, "transaction", tx, self.home_context(user, ti))

    def card_testing(self, t: float, _k: int) -> None:
        """10-40 payments of 0.50-2.00 by card to distinct new merchants within minutes."""
        user, rng = self.victim(), self.rng
        ctx = self.attacker_context(rng.choice(COUNTRIES), _BOT_UAS)
        count = rng.randint(10, 40)
        merchants: list[_Counterparty] = []
        seen: set[str] = set()
        for _ in range(count * 4):
            country = rng.choice(COUNTRIES).code
            m = _new_merchant(self.world, user, rng, country)
            if m.cp_id not in seen:
                seen.add(m.cp_id)
                merchants.append(m)
            if len(merchants) == count:
                break
        for ti, merchant in zip(
            self.spread(t, len(merchants), rng.uniform(2.0, 8.0) * MINUTE), merchants, strict=True
        ):
            tx = _transaction(user, merchant, rng.uniform(0.5, 2.0), channel="card")
            self.emit(ti, "transaction", tx, ctx)

    def sanctioned_country(self, t: float, _k: int) -> None:
        """One transfer to a new counterparty in KP, IR, SY or CU."""
        user, rng = self.victim(), self.rng
        t = self.local_daytime(user, t)
        cp = _Counterparty(
            f"ext-{_hex(rng, 32)}", rng.choice(SANCTIONED_COUNTRIES), "transfer", None
        )
        amount = user.median * rng.uniform(1.0, 5.0)
        self.emit(t, "transaction", _transaction(user, cp, amount), self.home_context(user, t))

    # -- logins --------------------------------------------------------------------------------

    def brute_force(self, t: float, _k: int) -> None:
        """15-60 failed password logins on one user from 1-3 IPs; sometimes a final success."""
        user, rng = self.victim(), self.rng
        country = rng.choice(COUNTRIES)
        base = self.attacker_context(country, _BOT_UAS + _BROWSER_UAS)
        ips = [base["ip"]] + [
            _register_ip(self.world, _public_ip(rng, country), base["geo"])
            for _ in range(rng.randint(0, 2))
        ]
        attempts = rng.randint(15, 60)
        for i in range(attempts + (1 if rng.random() < 0.3 else 0)):
            t += rng.uniform(1.0, 12.0)
            ctx = {**base, "ip": rng.choice(ips)}
            self.emit(t, "login", _login(user.user_id, i >= attempts, "password"), ctx)

    def credential_stuffing(self, t: float, _k: int) -> None:
        """One IP tries 20-100 distinct user ids (mostly real, some unknown), almost all fail."""
        rng, users = self.rng, self.world.users
        tries = rng.randint(20, 100)
        real = min(len(users), round(tries * rng.uniform(0.6, 0.9)))
        attempts = [(u.user_id, True) for u in rng.sample(users, real)]
        unknown = rng.sample(range(len(users), 20 * len(users) + tries), tries - real)
        attempts += [(f"user-{n}", False) for n in unknown]
        rng.shuffle(attempts)
        base = self.attacker_context(rng.choice(COUNTRIES))
        agents = rng.sample(_BROWSER_UAS, 3)
        for user_id, exists in attempts:
            t += rng.uniform(0.5, 8.0)
            ctx = {**base, "user_agent": rng.choice(agents)}
            success = exists and rng.random() < 0.02
            self.emit(t, "login", _login(user_id, success, "password"), ctx)

    def impossible_travel(self, t: float, _k: int) -> None:
        """A success >= 3,000 km from the previous login, 15-110 minutes after it."""
        rng = self.rng
        lo, hi = self.window_start, self.window_end - 2 * HOUR
        user = self.victim(lambda u: bool(self._logins_between(u, lo, hi)))
        logins = self._logins_between(user, lo, hi) or [t]
        previous = min(logins, key=lambda x: abs(x - t))
        t = previous + rng.uniform(15.0, 110.0) * MINUTE
        country = self.other_country(user.country, min_km=3000.0)
        ctx = self.attacker_context(country)
        if rng.random() < 0.5:  # the customer's own device id (cloned / synced)
            own = user.devices_at(t)[0]
            ctx.update(device_id=own.device_id, user_agent=own.user_agent)
        self._login_then_browse(user, t, ctx)

    def new_device_new_country(self, t: float, _k: int) -> None:
        """A success from a never-seen device in a never-seen country, with plausible timing.

        The victim has logged in at least three times before: with no login history, no device
        or country is "never seen before" in any meaningful sense.
        """
        user = self.victim(lambda u: _count_before(u.logins, t - DAY) >= 3)
        country = self.other_country(user.country, min_km=300.0, max_km=2500.0, nearest=3)
        needed = (_country_distance(user.country, country) / 700.0 + 1.0) * HOUR
        t = self._quiet_time(user, t, needed)
        self._login_then_browse(user, t, self.attacker_context(country))

    def _quiet_time(self, user: _User, t: float, needed: float) -> float:
        """The window time nearest ``t`` that is at least ``needed`` after any earlier login."""
        gaps = []
        for previous, following in itertools.pairwise([-math.inf, *user.logins, math.inf]):
            lo = max(previous + needed, self.window_start)
            hi = min(following - MINUTE, self.window_end)
            if lo < hi:
                gaps.append((lo, hi))
        if not gaps:
            return t
        lo, hi = min(gaps, key=lambda g: max(g[0] - t, t - g[1], 0.0))
        return min(max(t, lo), hi)

    def _logins_between(self, user: _User, lo: float, hi: float) -> list[float]:
        return [x for x in user.logins if lo <= x <= hi]

    def _login_then_browse(self, user: _User, t: float, ctx: Row) -> None:
        self.emit(t, "login", _login(user.user_id, True, user.method), ctx)
        session_id = f"s-{_hex(self.rng, 48)}"
        for _ in range(self.rng.randint(0, 3)):
            t += self.rng.uniform(5.0, 90.0)
            self.emit(t, "session", _session(user, session_id, "view"), ctx)

    # -- sessions ------------------------------------------------------------------------------

    def account_takeover(self, t: float, _k: int) -> None:
        """New-device login (maybe after failures), a credential/payee change, then a payout."""
        user, rng = self.victim(), self.rng
        country = user.country if rng.random() < 0.5 else self.other_country(user.country)
        ctx = self.attacker_context(country)
        failures = rng.choice([0, 0, 0, 1, 2, 3, 4])
        for k in range(failures, 0, -1):
            self.emit(
                t - k * rng.uniform(10.0, 50.0),
                "login",
                _login(user.user_id, False, "password"),
                ctx,
            )
        self.emit(t, "login", _login(user.user_id, True, "password"), ctx)
        session_id = f"s-{_hex(rng, 48)}"
        changes = ["change_password", "change_email", "add_payee"]
        steps = sorted(rng.sample(changes, rng.randint(1, 2)), key=changes.index)
        now = t
        for action in ["view"] * rng.randint(0, 2) + steps:
            now += rng.uniform(20.0, 240.0)
            self.emit(now, "session", _session(user, session_id, action), ctx)
        payout_at = max(now + MINUTE, t + rng.uniform(5.0, 60.0) * MINUTE)
        amount = user.median * rng.uniform(3.0, 10.0)
        self.emit(payout_at, "session", _session(user, session_id, "payout", amount), ctx)

    def session_hijacking(self, t: float, _k: int) -> None:
        """A live session continues from another IP, device and (usually) country."""
        rng = self.rng
        user = self.victim(lambda u: bool(self._sessions_between(u)))
        sessions = self._sessions_between(user)
        if not sessions:
            return
        session = min(sessions, key=lambda s: abs(s.start - t))
        foreign = rng.random() < 0.8
        country = self.other_country(user.country) if foreign else user.country
        ctx = self.attacker_context(country)
        now = session.end
        actions = ["view"] * rng.randint(0, 1) + (["add_payee"] if rng.random() < 0.7 else [])
        for action in [*actions, "payout"]:
            now += rng.uniform(30.0, 300.0)
            amount = user.median * rng.uniform(2.0, 8.0) if action == "payout" else None
            self.emit(now, "session", _session(user, session.session_id, action, amount), ctx)

    def _sessions_between(self, user: _User) -> list[_SessionRef]:
        return [s for s in user.sessions if self.window_start <= s.start <= self.window_end]

    # -- services ------------------------------------------------------------------------------

    def lateral_movement(self, t: float, _k: int) -> None:
        """A long-running service calls 1-3 sensitive routes it never called, within minutes."""
        rng = self.rng
        running = [s for s in self.world.services if s.deployed_at is None]
        service = rng.choice(running or self.world.services)
        used = self.used_sensitive.setdefault(service.service_id, set())
        combos = [
            (target.service_id, method, path)
            for target in self.world.services
            if target is not service
            for method, path in SENSITIVE_ROUTES
            if (target.service_id, method, path) not in used
        ]
        chosen = rng.sample(combos, min(len(combos), rng.randint(1, 3)))
        used.update(chosen)
        ip = rng.choice(service.ips)
        for ti in self.spread(t, rng.randint(4, 15), rng.uniform(2.0, 10.0) * MINUTE):
            target, method, path = rng.choice(chosen)
            size = rng.randint(80, 600) if method == "GET" else rng.randint(300, 2500)
            data = _api_call(service, target, method, path, size)
            self.emit(ti, "api_call", data, _service_context(service, ti, rng, ip))

    def api_burst(self, t: float, _k: int) -> None:
        """One route called at 20-50x its usual peak rate for 3-8 minutes."""
        rng = self.rng
        service = rng.choice(self.world.services)
        active = [r for r in service.routes if r.since <= t]
        if rng.random() < 0.75:
            busy = [r for r in active if r.rate >= 4.0] or active
            route = rng.choice(busy)
        else:
            route = self._unusual_route(service, active)
        minutes = rng.uniform(3.0, 8.0)
        count = max(12, round(rng.uniform(20.0, 50.0) * route.rate / 60.0 * minutes))
        for ti in self.spread(t, count, minutes * MINUTE):
            data = _api_call(
                service, route.target, route.method, route.path, _route_size(rng, route)
            )
            self.emit(ti, "api_call", data, _service_context(service, ti, rng))

    def _unusual_route(self, service: _Service, active: list[_Route]) -> _Route:
        """A non-sensitive route the service does not call, at its median route's rate."""
        used = set(service.route_keys())
        fresh = [
            (s, m, p)
            for s in self.world.services
            if s is not service
            for m, p in _catalog(s)
            if (s.service_id, m, p) not in used
        ]
        rates = sorted(r.rate for r in active)
        if not fresh:
            return self.rng.choice(active)
        target, method, path = self.rng.choice(fresh)
        route = _new_route(self.rng, target, method, path)
        route.rate = max(4.0, rates[len(rates) // 2])
        return route

    def exfiltration_size(self, t: float, _k: int) -> None:
        """2-6 calls whose request bodies are 50-500x the route's usual size."""
        rng = self.rng
        service = rng.choice(self.world.services)
        active = [r for r in service.routes if r.since <= t]
        writes = [r for r in active if r.method in {"POST", "PUT", "PATCH"}]
        route = rng.choice(writes or active)
        ip = rng.choice(service.ips)
        for ti in self.spread(t, rng.randint(2, 6), rng.uniform(1.0, 10.0) * MINUTE):
            size = round(route.bytes_median * rng.uniform(50.0, 500.0))
            data = _api_call(service, route.target, route.method, route.path, size)
            self.emit(ti, "api_call", data, _service_context(service, ti, rng, ip))

    # -- time of day ---------------------------------------------------------------------------

    def odd_hours(self, t: float, k: int) -> None:
        """A daytime-only user or office-hours service acts at 02:00-04:00 local time."""
        office = [s for s in self.world.services if s.business_hours_only]
        day_users = [u for u in self.victims if self._clearly_daytime(u)]
        if office and (k % 2 == 1 or not day_users):
            self._odd_hours_service(self.rng.choice(office), t)
        else:
            self._odd_hours_user(t)

    def _clearly_daytime(self, user: _User) -> bool:
        return user.rhythm == "day" and user.login_rate >= 1.0 and user.tx_rate >= 1.0

    def _night_time(self, t: float, utc_offset: float) -> float:
        """02:00-04:00 local on ``t``'s local day, kept inside the attack window."""
        hour = self.world.local_hour(t, utc_offset)
        night = t - hour * HOUR + self.rng.uniform(2.0, 4.0) * HOUR
        if night < self.window_start:
            night += DAY
        return night if night <= self.window_end else night - DAY

    def _odd_hours_user(self, t: float) -> None:
        rng = self.rng
        user = self.victim(self._clearly_daytime)
        t = self._night_time(t, user.country.utc_offset)
        ctx = self.home_context(user, t)
        self.emit(t, "login", _login(user.user_id, True, user.method), ctx)
        session_id = f"s-{_hex(rng, 48)}"
        actions = ["view"] * rng.randint(0, 2)
        if rng.random() < 0.6:
            actions.append("add_payee")
        actions.append("payout")
        for action in actions:
            t += rng.uniform(20.0, 180.0)
            amount = user.median * rng.uniform(1.0, 4.0) if action == "payout" else None
            self.emit(t, "session", _session(user, session_id, action, amount), ctx)

    def _odd_hours_service(self, service: _Service, t: float) -> None:
        rng = self.rng
        t = self._night_time(t, _PLATFORM_UTC_OFFSET)
        route = rng.choice([r for r in service.routes if r.since <= t] or service.routes)
        for ti in self.spread(t, rng.randint(3, 10), rng.uniform(1.0, 15.0) * MINUTE):
            data = _api_call(
                service, route.target, route.method, route.path, _route_size(rng, route)
            )
            self.emit(ti, "api_call", data, _service_context(service, ti, rng))


# --------------------------------------------------------------------------------------------
# The gateway scene
# --------------------------------------------------------------------------------------------

# Sensitive routes an attacker tries although no service declares them.
_UNDECLARED_SENSITIVE: Final[tuple[tuple[str, str], ...]] = (
    ("GET", "/admin/config"),
    ("POST", "/admin/impersonate"),
    ("GET", "/internal/dump"),
    ("GET", "/v1/secrets"),
)
_ATTACK_TOOLS: Final[tuple[str, ...]] = ("curl/8.10.1", "python-requests/2.32.3", "kubectl/v1.31.2")
_RELEASE_HOURS: Final = (9.0, 17.0)  # releases go out on weekdays between these CET hours
_LONG_RUNNING: Final = DAY  # a compromised service has run its deployment at least this long


@dataclass(slots=True)
class _Release:
    at: float  # seconds from start; -inf for the deployment running when the scene starts
    deployment: str
    ips: list[str]
    agent: str
    rollout: float  # seconds during which the previous deployment's instances still serve


@dataclass(slots=True)
class _SceneRoute:
    target: str
    method: str
    template: str
    rate: float  # calls per hour at peak load
    bytes_median: float
    bytes_sigma: float
    uuid_ids: bool
    since: float = 0.0
    until: float = math.inf
    release: int = 0  # the release that started calling it (0: called from the start)
    ended_by: int = 0  # the release that stopped calling it (0: never stopped)


@dataclass(slots=True)
class _SceneService:
    base: _Service
    index: int
    lib: str
    version: list[int]
    declared: list[tuple[str, str]]
    releases: list[_Release]
    routes: list[_SceneRoute] = field(default_factory=list)
    added: list[str] = field(default_factory=list)  # "METHOD target path" added by releases

    @property
    def service_id(self) -> str:
        return self.base.service_id

    def release_index(self, t: float) -> int:
        """The release serving at ``t`` (the latest one at or before it)."""
        return bisect.bisect_right([r.at for r in self.releases], t) - 1

    def called_before(self, t: float) -> list[tuple[str, str, str]]:
        return [(r.target, r.method, r.template) for r in self.routes if r.since <= t]


@dataclass(frozen=True, slots=True)
class SceneService:
    """One internal service of the gateway scene, as it stands at the end of the scene."""

    service_id: str
    declared: tuple[str, ...]  # the routes it serves: "METHOD /template"
    calls: tuple[tuple[str, str, str], ...]  # the routes it calls: (target, method, template)
    deployment: str  # its deployment id (the token claim)
    deployed_at: datetime | None  # its latest release; None: running since the scene started
    ips: tuple[str, ...]  # its instances
    user_agent: str
    office_hours: bool  # calls only during office hours (07:00-20:00 CET)
    releases: int  # releases during the scene
    added_routes: tuple[str, ...]  # routes its releases started calling: "METHOD target path"


@dataclass(frozen=True, slots=True)
class GatewayScene:
    """Internal services calling each other through the gateway, with labelled lateral movement.

    ``events`` are v1 ``api_call`` events in time order whose ``data.path`` is the concrete path
    at the target (ids filled in, as the gateway sees it) and ``context.device_id`` the caller's
    deployment id (its token's ``deployment`` claim); ``labels`` as for :func:`simulate`.
    """

    events: list[Row]
    labels: list[Row]
    services: tuple[SceneService, ...]
    start: datetime
    days: int

    def gateway_config(self, urls: Mapping[str, str] | None = None) -> dict[str, Any]:
        """A ``riskguard gateway`` configuration for the scene: one upstream per service (its
        declared routes), reached under ``/<service id>/`` with the prefix stripped. ``urls``
        maps service ids to upstream URLs (default ``http://<service id>.internal:8080``)."""
        urls = urls or {}
        upstreams = {
            s.service_id: {
                "url": urls.get(s.service_id, f"http://{s.service_id}.internal:8080"),
                "routes": list(s.declared),
            }
            for s in self.services
        }
        routes = [
            {"prefix": f"/{s.service_id}", "upstream": s.service_id, "strip_prefix": True}
            for s in self.services
        ]
        return {
            "listen": {"host": "127.0.0.1", "port": 8080},
            "upstreams": upstreams,
            "routes": routes,
            "risk": {"tenant": "gateway"},
        }


def _concrete(rng: random.Random, template: str, uuid_ids: bool) -> str:
    """``template`` with each ``{id}`` filled in: a number, or a UUID for routes that use them."""
    if "{" not in template:
        return template
    parts = []
    for segment in template.split("/"):
        if segment.startswith("{"):
            if uuid_ids:
                h = f"{rng.getrandbits(128):032x}"
                segment = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"
            else:
                segment = str(rng.randint(1_000, 99_999_999))
        parts.append(segment)
    return "/".join(parts)


def _v2(path: str) -> str:
    return path.replace("/v1/", "/v2/", 1)


class _GatewayScene:
    """Builds the scene: services, their calls and releases, the traffic and the attacks."""

    def __init__(
        self, rng: random.Random, start: datetime, days: int, services: int, rate_scale: float
    ) -> None:
        self.rng = rng
        self.rate_scale = rate_scale
        self.world = _World(
            start=start,
            start_epoch=start.timestamp(),
            days=days,
            horizon=days * DAY,
            users=[],
            merchants_by_country={},
            online_merchants=[],
            services=[],
            ip_geo={},
        )
        self.world.services = [
            _build_service(self.world, rng, i, services) for i in range(services)
        ]
        self.services = [self._scene_service(s, i) for i, s in enumerate(self.world.services)]
        self.sink = _Sink(self.world.horizon)

    # -- the world -----------------------------------------------------------------------------

    def _scene_service(self, base: _Service, index: int) -> _SceneService:
        rng = self.rng
        business = list(_catalog(base))
        v2 = [(m, _v2(p)) for m, p in rng.sample(business, min(2, len(business)))]
        v2 = [(m, p) for m, p in v2 if p.startswith("/v2/")]
        sensitive = rng.sample(list(SENSITIVE_ROUTES), rng.randint(3, 6))
        sensitive.sort(key=SENSITIVE_ROUTES.index)
        lib = base.user_agent.split(" ", 1)[1]
        version = [rng.randint(1, 4), rng.randint(0, 30), 0]
        return _SceneService(
            base=base,
            index=index,
            lib=lib,
            version=version,
            declared=[*business, *v2, *sensitive],
            releases=[self._release(base, index, 0, -math.inf, version)],
        )

    def _release(
        self, base: _Service, index: int, generation: int, at: float, version: list[int]
    ) -> _Release:
        rng = self.rng
        name = base.resource
        tag = ".".join(str(v) for v in version)
        lib = base.user_agent.split(" ", 1)[1]
        ips = [
            f"10.{20 + generation % 200}.{index & 255}.{rng.randint(2, 250)}"
            for _ in range(rng.randint(2, 4))
        ]
        return _Release(
            at=at,
            deployment=f"{name}-v{tag}-{_hex(rng, 28)}",
            ips=ips,
            agent=f"svc-{name}/{tag} {lib}",
            rollout=rng.uniform(2.0, 10.0) * MINUTE,
        )

    def _route(
        self, target: _SceneService, method: str, template: str, *, sensitive: bool = False
    ) -> _SceneRoute:
        rng = self.rng
        writes = method in {"POST", "PUT", "PATCH"}
        median = rng.uniform(400, 6000) if writes else rng.uniform(120, 600)
        rate = _log_uniform(rng, 1.0, 6.0) if sensitive else _log_uniform(rng, 1.5, 30.0)
        return _SceneRoute(
            target=target.service_id,
            method=method,
            template=template,
            rate=rate,
            bytes_median=median,
            bytes_sigma=rng.uniform(0.2, 0.5),
            uuid_ids=rng.random() < 0.3,
        )

    def _fresh_business(self, service: _SceneService) -> list[tuple[_SceneService, str, str]]:
        called = set(service.called_before(math.inf))
        return [
            (s, m, p)
            for s in self.services
            if s is not service
            for m, p in _catalog(s.base)
            if (s.service_id, m, p) not in called
        ]

    def _fresh_sensitive(self, service: _SceneService) -> list[tuple[_SceneService, str, str]]:
        called = set(service.called_before(math.inf))
        return [
            (s, m, p)
            for s in self.services
            if s is not service
            for m, p in s.declared
            if (m, p) in SENSITIVE_ROUTES and (s.service_id, m, p) not in called
        ]

    def plan(self) -> None:
        """Usual calls, office hours and each service's releases."""
        rng = self.rng
        for service in self.services:
            for target, method, path in rng.sample(
                fresh := self._fresh_business(service), min(len(fresh), rng.randint(3, 8))
            ):
                service.routes.append(self._route(target, method, path))
            back_office = service.base.resource.split("-")[0] in _BACK_OFFICE
            sensitive = self._fresh_sensitive(service)
            if sensitive and rng.random() < (0.6 if back_office else 0.15):
                target, method, path = rng.choice(sensitive)
                service.routes.append(self._route(target, method, path, sensitive=True))
            service.base.business_hours_only = back_office and rng.random() < 0.8
        for service in self.services:
            self._plan_releases(service)

    def _plan_releases(self, service: _SceneService) -> None:
        rng, world = self.rng, self.world
        per_weekday = rng.choice((0.0, 0.2, 0.4, 0.6, 0.9))
        for day in range(world.days):
            midnight = world.local_midnight(day, _PLATFORM_UTC_OFFSET)
            if world.local_weekday(midnight + 12 * HOUR, _PLATFORM_UTC_OFFSET) >= 5:
                continue
            if rng.random() >= per_weekday:
                continue
            at = midnight + rng.uniform(*_RELEASE_HOURS) * HOUR
            if at < 0.5 * DAY or at > world.horizon - HOUR:
                continue
            self._release_at(service, at)

    def _release_at(self, service: _SceneService, at: float) -> None:
        rng = self.rng
        if rng.random() < 0.7:
            service.version[1] += 1
            service.version[2] = 0
        else:
            service.version[2] += 1
        k = len(service.releases)
        release = self._release(service.base, service.index, k, at, service.version)
        service.releases.append(release)
        change = rng.random()
        by_id = {s.service_id: s for s in self.services}
        route: _SceneRoute | None = None
        if change < 0.30:  # a new call to another service's route
            fresh = self._fresh_business(service)
            if fresh:
                route = self._route(*rng.choice(fresh))
        elif change < 0.42:  # a migration to a /v2/ route its target serves
            movable = [
                r
                for r in service.routes
                if r.until == math.inf
                and (r.method, _v2(r.template)) in by_id[r.target].declared
                and _v2(r.template) != r.template
                and (r.target, r.method, _v2(r.template)) not in service.called_before(math.inf)
            ]
            if movable:
                old = rng.choice(movable)
                old.until, old.ended_by = at + release.rollout, k
                route = self._route(by_id[old.target], old.method, _v2(old.template))
                route.rate, route.uuid_ids = old.rate, old.uuid_ids
        elif change < 0.50:  # a new job reading another service's sensitive route
            fresh_sensitive = self._fresh_sensitive(service)
            if fresh_sensitive:
                target, method, path = rng.choice(fresh_sensitive)
                route = self._route(target, method, path, sensitive=True)
        if route is not None:
            route.since, route.release = at, k
            service.routes.append(route)
            service.added.append(f"{route.method} {route.target} {route.template}")

    # -- traffic -------------------------------------------------------------------------------

    def _deployment(self, service: _SceneService, route: _SceneRoute, t: float) -> _Release:
        k = service.release_index(t)
        release = service.releases[k]
        if k == 0 or route.release == k:
            return release
        if route.ended_by == k:  # the old code path: only the previous deployment calls it
            return service.releases[k - 1]
        into = t - release.at
        if into < release.rollout and self.rng.random() >= into / release.rollout:
            return service.releases[k - 1]
        return release

    def _call(
        self,
        service: _SceneService,
        release: _Release,
        route: _SceneRoute | tuple[str, str, str],
        t: float,
        *,
        ip: str | None = None,
        agent: str | None = None,
        label: Label | None = None,
    ) -> None:
        rng = self.rng
        if isinstance(route, _SceneRoute):
            target, method, template = route.target, route.method, route.template
            size = round(route.bytes_median * math.exp(rng.gauss(0.0, route.bytes_sigma)))
            uuid_ids = route.uuid_ids
        else:
            target, method, template = route
            size = rng.randint(80, 600) if method == "GET" else rng.randint(300, 2500)
            uuid_ids = rng.random() < 0.3
        path = _concrete(rng, template, uuid_ids)
        data = _api_call(service.base, target, method, path, size)
        context = {
            "ip": ip or rng.choice(release.ips),
            "user_agent": agent or release.agent,
            "device_id": release.deployment,
        }
        self.sink.add(t, "api_call", data, context, label)

    def traffic(self) -> None:
        rng, world = self.rng, self.world
        for service in self.services:
            for route in service.routes:
                peak_per_second = route.rate * self.rate_scale / HOUR
                t = route.since
                end = min(route.until, world.horizon)
                while True:
                    t += rng.expovariate(peak_per_second)
                    if t >= end:
                        break
                    if rng.random() < _service_intensity(world, service.base, t):
                        self._call(service, self._deployment(service, route, t), route, t)

    # -- attacks -------------------------------------------------------------------------------

    def attacks(self) -> None:
        world = self.world
        n = max(2, round(2.4 * (world.days - ATTACK_FREE_DAYS))) if world.days > 2 else 0
        if n == 0:
            return
        start = ATTACK_FREE_DAYS * DAY
        end = max(start + HOUR, world.horizon - _ATTACK_TAIL)
        span = (end - start) / n
        compromised: list[str] = []
        tried: dict[str, list[tuple[str, str, str]]] = {}
        for k in range(n):
            t = start + (k + self.rng.random()) * span
            label = ("lateral_movement", f"lateral_movement-{k + 1:03d}")
            self._lateral_movement(t, label, compromised, tried, start, end)

    def _night(self, t: float, start: float, end: float) -> float:
        """01:00-04:30 CET on ``t``'s day, kept inside the attack window."""
        hour = self.world.local_hour(t, _PLATFORM_UTC_OFFSET)
        night = t - hour * HOUR + self.rng.uniform(1.0, 4.5) * HOUR
        if night < start:
            night += DAY
        return night if night <= end else night - DAY

    def _long_running(self, service: _SceneService, t: float) -> bool:
        k = service.release_index(t)
        settled = service.releases[k].at <= t - _LONG_RUNNING
        upcoming = service.release_index(t + 2 * HOUR) != k
        return settled and not upcoming

    def _lateral_movement(
        self,
        t: float,
        label: Label,
        compromised: list[str],
        tried: dict[str, list[tuple[str, str, str]]],
        start: float,
        end: float,
    ) -> None:
        """A long-running service, compromised, reaches for sensitive routes it never called
        (now and then after a little reconnaissance): a burst within minutes, or low and slow
        at night."""
        rng = self.rng
        night = rng.random() < 0.4
        if night:
            t = self._night(t, start, end)
        running = [s for s in self.services if self._long_running(s, t)]
        fresh = [s for s in running if s.service_id not in compromised]
        service = rng.choice(fresh or running or self.services)
        compromised.append(service.service_id)
        before = set(service.called_before(t)) | set(tried.get(service.service_id, []))
        recon_pool = [
            (s.service_id, m, p)
            for s in self.services
            if s is not service
            for m, p in _catalog(s.base)
            if m == "GET" and (s.service_id, m, p) not in before
        ]
        recon = rng.sample(recon_pool, min(len(recon_pool), rng.choice((0, 0, 0, 1, 1, 2, 3))))
        sensitive_pool = [
            (s.service_id, m, p)
            for s in self.services
            if s is not service
            for m, p in s.declared
            if (m, p) in SENSITIVE_ROUTES and (s.service_id, m, p) not in before
        ]
        guesses = [
            (s.service_id, m, p)
            for s in self.services
            if s is not service
            for m, p in _UNDECLARED_SENSITIVE
            if (s.service_id, m, p) not in before
        ]
        chosen = rng.sample(sensitive_pool, min(len(sensitive_pool), rng.randint(1, 4)))
        if guesses and (rng.random() < 0.2 or not chosen):
            chosen.append(rng.choice(guesses))
        calls = [*recon, *chosen]
        calls += [rng.choice(chosen) for _ in range(rng.randint(0, 10))]
        tried.setdefault(service.service_id, []).extend(calls)
        if night:
            times, ti = [], t
            for _ in calls:
                times.append(ti)
                ti += rng.uniform(1.0, 8.0) * MINUTE
        else:
            times = sorted(t + rng.uniform(0.0, rng.uniform(1.0, 10.0) * MINUTE) for _ in calls)
        release = service.releases[service.release_index(t)]
        ip = rng.choice(release.ips)
        agent = release.agent if rng.random() < 0.5 else rng.choice(_ATTACK_TOOLS)
        for ti, call in zip(times, calls, strict=True):
            self._call(service, release, call, ti, ip=ip, agent=agent, label=label)

    def result(self, start: datetime, prefix: str) -> GatewayScene:
        events, labels = _finish(self.sink, start, prefix)
        services = []
        for s in self.services:
            latest = s.releases[-1]
            services.append(
                SceneService(
                    service_id=s.service_id,
                    declared=tuple(f"{m} {p}" for m, p in s.declared),
                    calls=tuple(
                        (r.target, r.method, r.template) for r in s.routes if r.until == math.inf
                    ),
                    deployment=latest.deployment,
                    deployed_at=None
                    if latest.at == -math.inf
                    else start + timedelta(seconds=latest.at),
                    ips=tuple(latest.ips),
                    user_agent=latest.agent,
                    office_hours=s.base.business_hours_only,
                    releases=len(s.releases) - 1,
                    added_routes=tuple(s.added),
                )
            )
        return GatewayScene(events, labels, tuple(services), start, self.world.days)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def simulate(
    *,
    days: int,
    users: int,
    seed: int,
    start: datetime = DEFAULT_START,
    services: int | None = None,
) -> tuple[list[Row], list[Row]]:
    """Generate ``days`` of traffic for ``users`` customers and their internal services.

    Returns ``(events, labels)``: events as contract dicts sorted by ``occurred_at`` (ties keep
    generation order), and one ``{"event_id", "attack", "episode"}`` row per attack event, in
    event order. ``services`` defaults to ``max(6, users // 100)``. ``start`` must be
    timezone-aware. Attacks begin after the first two days, so ``days <= 2`` yields only benign
    traffic. The same arguments always give the same output.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    if users < 10:
        raise ValueError("users must be at least 10")
    n_services = max(6, users // 100) if services is None else services
    if n_services < 2:
        raise ValueError("services must be at least 2")
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError("start must be timezone-aware")
    start = start.astimezone(UTC)

    def stream(name: str) -> random.Random:
        return random.Random(f"riskguard-simulate/{seed}/{name}")

    world = _build_world(stream("world"), start=start, days=days, users=users, services=n_services)
    sink = _Sink(world.horizon)
    benign_rng = stream("users")
    for user in world.users:
        _UserActivity(world, user, benign_rng, sink).run()
    services_rng = stream("services")
    for service in world.services:
        _service_traffic(world, service, services_rng, sink)
    _Attacks(world, stream("attacks"), sink).run()
    return _finish(sink, start, f"{stream('ids').getrandbits(32):08x}")


def simulate_gateway(
    *,
    days: int = 7,
    seed: int = 1,
    services: int = 12,
    start: datetime = DEFAULT_START,
    rate_scale: float = 1.0,
) -> GatewayScene:
    """The gateway scene: ``services`` internal services calling each other for ``days`` (their
    usual routes, office hours, releases that start calling new routes), and after the first two
    days labelled ``lateral_movement`` episodes — a long-running service, compromised, reaching
    for sensitive routes it never called. Deterministic like :func:`simulate`; see
    docs/simulator.md and docs/gateway.md. ``rate_scale`` multiplies every route's rate
    (quieter or busier services)."""
    if days < 1:
        raise ValueError("days must be at least 1")
    if services < 3:
        raise ValueError("services must be at least 3")
    if not 0.01 <= rate_scale <= 100:
        raise ValueError("rate_scale must be between 0.01 and 100")
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError("start must be timezone-aware")
    start = start.astimezone(UTC)

    def stream(name: str) -> random.Random:
        return random.Random(f"riskguard-simulate-gateway/{seed}/{name}")

    scene = _GatewayScene(stream("world"), start, days, services, rate_scale)
    scene.plan()
    scene.rng = stream("traffic")
    scene.traffic()
    scene.rng = stream("attacks")
    scene.attacks()
    return scene.result(start, f"{stream('ids').getrandbits(32):08x}")


def _finish(sink: _Sink, start: datetime, prefix: str) -> tuple[list[Row], list[Row]]:
    drafts = sorted(sink.drafts, key=lambda d: (d.ms, d.seq))
    clock = _Rfc3339Clock(start)
    events: list[Row] = []
    labels: list[Row] = []
    for i, draft in enumerate(drafts):
        event_id = f"ev-{prefix}-{i:07d}"
        events.append(
            {
                "event_id": event_id,
                "type": draft.kind,
                "occurred_at": clock.format(draft.ms),
                "data": draft.data,
                "context": draft.context,
            }
        )
        if draft.label is not None:
            labels.append(
                {"event_id": event_id, "attack": draft.label[0], "episode": draft.label[1]}
            )
    return events, labels


class _Rfc3339Clock:
    """Formats milliseconds after ``start`` as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (fast, exact)."""

    _EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

    def __init__(self, start: datetime) -> None:
        self.start_ms = (start - self._EPOCH) // timedelta(milliseconds=1)
        self.day = -1
        self.date = ""

    def format(self, ms: int) -> str:
        day, rest = divmod(self.start_ms + ms, 86_400_000)
        if day != self.day:
            self.day = day
            self.date = f"{self._EPOCH + timedelta(days=day):%Y-%m-%d}"
        seconds, millis = divmod(rest, 1000)
        minutes, sec = divmod(seconds, 60)
        hour, minute = divmod(minutes, 60)
        return f"{self.date}T{hour:02d}:{minute:02d}:{sec:02d}.{millis:03d}Z"


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> int:
    """Write ``rows`` as JSON Lines (one compact object per line); return how many."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, separators=(",", ":"), ensure_ascii=False))
            out.write("\n")
            count += 1
    return count


def gateway_config_path_for(events_path: str | os.PathLike[str]) -> Path:
    """``EVENTS.jsonl`` -> ``EVENTS.gateway.json``: the gateway configuration of a scene."""
    path = Path(events_path)
    stem = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.name
    return path.with_name(f"{stem}.gateway.json")


def labels_path_for(events_path: str | os.PathLike[str]) -> Path:
    """``EVENTS.jsonl`` -> ``EVENTS.labels.jsonl`` (beside it); other names get the suffix."""
    path = Path(events_path)
    stem = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.name
    return path.with_name(f"{stem}.labels.jsonl")
