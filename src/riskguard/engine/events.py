"""Typed, validated models of the four event types of the public contract (v1).

The engine never reads the wall clock: every event carries ``occurred_at``. The HTTP shell fills
it with the time received when a caller leaves it out; files given to ``riskguard score`` must
carry it. ``Event.fields()`` flattens an event into the dotted paths that rule expressions read.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

EventType = Literal["transaction", "login", "session", "api_call"]
_EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST: Final = datetime(2200, 1, 1, tzinfo=UTC)
EVENT_TYPES: Final[tuple[str, ...]] = ("transaction", "login", "session", "api_call")

# Ids carry no control characters (they become parts of state keys joined by one).
Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
ShortText = Annotated[str, Field(max_length=256)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class Geo(_Model):
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] | None = None
    lat: Annotated[float, Field(ge=-90, le=90, strict=True, allow_inf_nan=False)] | None = None
    lon: Annotated[float, Field(ge=-180, le=180, strict=True, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _lat_and_lon_together(self) -> Geo:
        if (self.lat is None) != (self.lon is None):
            raise PydanticCustomError("geo_pair", "lat and lon must be given together")
        return self


class Context(_Model):
    ip: str | None = None
    device_id: Id | None = None
    user_agent: Annotated[str, Field(max_length=512)] | None = None
    geo: Geo | None = None

    @field_validator("ip")
    @classmethod
    def _valid_ip(cls, v: str | None) -> str | None:
        if v is None:
            return None
        try:
            return _normal_ip(v)
        except ValueError:
            raise ValueError("must be an IPv4 or IPv6 address") from None


@functools.lru_cache(maxsize=16_384)
def _normal_ip(text: str) -> str:
    """The canonical text of an IP address. Cached: the same addresses recur (an account's
    devices, a botnet's hosts) and parsing one costs more than the rest of the context."""
    return str(ipaddress.ip_address(text))


# Numbers and booleans are strict: "12.5" or "yes" is a client bug to report, not to guess at.
Amount = Annotated[float, Field(gt=0, le=1e15, strict=True, allow_inf_nan=False)]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]


class TransactionData(_Model):
    account_id: Id
    counterparty_id: Id
    amount: Amount
    currency: Currency
    counterparty_name: ShortText | None = None
    counterparty_country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] | None = None
    channel: Annotated[str, Field(max_length=64)] | None = None
    merchant_category: Annotated[str, Field(max_length=64)] | None = None


class LoginData(_Model):
    user_id: Id
    success: StrictBool
    method: Annotated[str, Field(max_length=64)] | None = None


class SessionData(_Model):
    user_id: Id
    session_id: Id
    action: Annotated[str, Field(min_length=1, max_length=64)]
    amount: Amount | None = None
    currency: Currency | None = None


HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class ApiCallData(_Model):
    service_id: Id
    target: Id
    method: HttpMethod
    path: Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^/")]
    request_bytes: Annotated[int, Field(ge=0, le=2**53, strict=True)] | None = None


class _EventBase(_Model):
    event_id: Id
    occurred_at: AwareDatetime
    context: Context = Context()

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _a_date_time_string(cls, v: Any) -> Any:
        if not isinstance(v, str | datetime):
            raise ValueError("must be an RFC 3339 date-time string")
        return v

    @field_validator("occurred_at")
    @classmethod
    def _plausible_time(cls, v: datetime) -> datetime:
        # Feature state keys time buckets on seconds since 1970; nothing real happens outside.
        if not _EARLIEST <= v < _LATEST:
            raise ValueError("must be between 1970-01-01 and 2200-01-01")
        return v

    @property
    def ts(self) -> float:
        """Event time in seconds since the Unix epoch."""
        return self.occurred_at.timestamp()

    def fields(self, ts: float | None = None) -> dict[str, Any]:
        """Flatten into the dotted paths that rule expressions read (absent values omitted).

        ``ts`` is the event's time if the caller already has it (saves converting it again).
        """
        if ts is None:
            ts = self.occurred_at.timestamp()
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "type": self.type_name(),
            "hour": int(ts // 3600) % 24,  # UTC hour
        }
        ctx = self.context
        if ctx.ip is not None:
            out["context.ip"] = ctx.ip
        if ctx.device_id is not None:
            out["context.device_id"] = ctx.device_id
        if ctx.user_agent is not None:
            out["context.user_agent"] = ctx.user_agent
        geo = ctx.geo
        if geo is not None:
            if geo.country is not None:
                out["context.geo.country"] = geo.country
            if geo.lat is not None:
                out["context.geo.lat"] = geo.lat
                out["context.geo.lon"] = geo.lon
        data: BaseModel = getattr(self, "data")  # noqa: B009 - every concrete event has data
        for key, value in data.__dict__.items():
            if value is not None:
                out["data." + key] = value
        return out

    def type_name(self) -> str:
        raise NotImplementedError


class TransactionEvent(_EventBase):
    type: Literal["transaction"]
    data: TransactionData

    def type_name(self) -> str:
        return "transaction"


class LoginEvent(_EventBase):
    type: Literal["login"]
    data: LoginData

    def type_name(self) -> str:
        return "login"


class SessionEvent(_EventBase):
    type: Literal["session"]
    data: SessionData

    def type_name(self) -> str:
        return "session"


class ApiCallEvent(_EventBase):
    type: Literal["api_call"]
    data: ApiCallData

    def type_name(self) -> str:
        return "api_call"


Event = TransactionEvent | LoginEvent | SessionEvent | ApiCallEvent
_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Annotated[Event, Field(discriminator="type")])

# The value type of every path an expression may read, per event type ("number" | "string" |
# "bool"). Keep in step with the models above; tests check the two agree.
_CONTEXT_FIELDS: Final[dict[str, str]] = {
    "event_id": "string",
    "type": "string",
    "hour": "number",
    "context.ip": "string",
    "context.device_id": "string",
    "context.user_agent": "string",
    "context.geo.country": "string",
    "context.geo.lat": "number",
    "context.geo.lon": "number",
}
FIELD_TYPES: Final[Mapping[str, Mapping[str, str]]] = {
    "transaction": {
        **_CONTEXT_FIELDS,
        "data.account_id": "string",
        "data.counterparty_id": "string",
        "data.amount": "number",
        "data.currency": "string",
        "data.counterparty_name": "string",
        "data.counterparty_country": "string",
        "data.channel": "string",
        "data.merchant_category": "string",
    },
    "login": {
        **_CONTEXT_FIELDS,
        "data.user_id": "string",
        "data.success": "bool",
        "data.method": "string",
    },
    "session": {
        **_CONTEXT_FIELDS,
        "data.user_id": "string",
        "data.session_id": "string",
        "data.action": "string",
        "data.amount": "number",
        "data.currency": "string",
    },
    "api_call": {
        **_CONTEXT_FIELDS,
        "data.service_id": "string",
        "data.target": "string",
        "data.method": "string",
        "data.path": "string",
        "data.request_bytes": "number",
    },
}


class FieldIssue(_Model):
    """One problem with one field of an input event."""

    field: str
    message: str


class InvalidEventError(ValueError):
    """An event that does not match the contract; ``issues`` name each field and its problem."""

    def __init__(self, issues: list[FieldIssue]) -> None:
        self.issues = issues
        super().__init__("; ".join(f"{i.field}: {i.message}" for i in issues))


def _issue_from(err: Mapping[str, Any]) -> FieldIssue:
    loc = [str(p) for p in err.get("loc", ())]
    # Drop the discriminator tag pydantic inserts ("transaction", ...) after the root.
    if loc and loc[0] in EVENT_TYPES:
        loc = loc[1:]
    message = str(err.get("msg", "invalid value"))
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if err.get("type") == "extra_forbidden":
        message = "unknown field"
    return FieldIssue(field=".".join(loc) or "(event)", message=message)


def parse_event(raw: Any) -> Event:
    """Validate a decoded JSON object as an event, or raise :class:`InvalidEventError`."""
    if not isinstance(raw, Mapping):
        raise InvalidEventError([FieldIssue(field="(event)", message="must be a JSON object")])
    kind = raw.get("type")
    if kind not in EVENT_TYPES:
        message = "must be one of " + ", ".join(EVENT_TYPES)
        raise InvalidEventError([FieldIssue(field="type", message=message)])
    try:
        return _EVENT_ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise InvalidEventError([_issue_from(e) for e in exc.errors()]) from None
