"""Training data as model inputs computed the way serving computes them.

Each loader returns a :class:`Frame`: one row per event in time order, its input values (from
the compiled input expressions of :mod:`.inputs`), its label and its time.

- ``creditcard`` (ULB): inputs V1..V28 and Amount, read as the event fields ``data.v1`` ...
  ``data.amount``; time is the ``Time`` column (seconds from the first row). No entities, so no
  engine features.
- ``fdh`` (Fraud Detection Handbook): every transaction is replayed in time order through the
  engine's own feature definitions (``packs/fdh.yaml``) and :class:`InMemoryStateStore`, with
  each label fed back as an event 7 days after its transaction (:mod:`.feedback`). Inputs are the
  handbook's: amount, night (hour <= 6), the customer's count and mean amount over 1/7/30 days,
  the terminal's count and fraud rate over 1/7/30 days of delayed labels. (Its weekend flag has no
  field in the v1 contract and is left out.)
- ``events``: riskguard's own decisions (the feature snapshot every decision stored, and the
  event's own fields) joined with ``/v1/labels`` labels: exactly the environment the engine
  decided on.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Final

import numpy as np

from riskguard.adapters.ml.artifact import DataFile, InputSpec, canonical, sha256_file
from riskguard.adapters.ml.feedback import apply_label, label_fields
from riskguard.adapters.ml.inputs import compile_inputs
from riskguard.engine.events import FIELD_TYPES
from riskguard.engine.rules import Ruleset, load_ruleset_text
from riskguard.engine.state import InMemoryStateStore

DATASETS: Final = ("creditcard", "fdh", "events")
FDH_LABEL_DELAY_DAYS: Final = 7
_DAY: Final = 86_400.0


class DatasetError(ValueError):
    """Input data that cannot be read as the dataset it was named as."""


@dataclass
class Frame:
    """Rows of model inputs in time order."""

    dataset: str
    inputs: tuple[InputSpec, ...]
    schema: dict[str, str]  # every path the inputs read, with its type
    x: np.ndarray[Any, np.dtype[np.float64]]  # (rows, inputs), NaN where missing
    y: np.ndarray[Any, np.dtype[np.int8]]  # 1 fraud, 0 not
    ts: np.ndarray[Any, np.dtype[np.float64]]  # event time (creditcard: the Time column)
    files: tuple[DataFile, ...]
    params: dict[str, Any] = field(default_factory=dict)
    entity: np.ndarray[Any, Any] | None = None  # fdh: the customer of each row
    envs: list[dict[str, Any]] | None = None  # the decision environments, when kept

    @property
    def epoch_time(self) -> bool:
        return self.dataset != "creditcard"

    def time_text(self, value: float) -> str:
        """A row time as the CLI's range options write it."""
        if not self.epoch_time:
            return f"{value:g}"
        return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")

    def take(self, mask: np.ndarray[Any, Any]) -> Frame:
        return Frame(
            dataset=self.dataset,
            inputs=self.inputs,
            schema=self.schema,
            x=self.x[mask],
            y=self.y[mask],
            ts=self.ts[mask],
            files=self.files,
            params=self.params,
            entity=self.entity[mask] if self.entity is not None else None,
            envs=[e for e, keep in zip(self.envs, mask.tolist(), strict=True) if keep]
            if self.envs is not None
            else None,
        )


def parse_bound(text: str, *, dataset: str, end: bool) -> float:
    """A range option as a row time: seconds for creditcard; a date (a whole day: an end date
    is inclusive) or an ISO 8601 date-time (UTC when no offset is given) otherwise."""
    text = text.strip()
    if dataset == "creditcard":
        try:
            return float(text)
        except ValueError:
            raise DatasetError(f"{text!r} is not a number of seconds (the Time column)") from None
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = datetime.fromisoformat(text).replace(tzinfo=UTC)
            return (day + timedelta(days=1 if end else 0)).timestamp()
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise DatasetError(f"{text!r} is not a date (YYYY-MM-DD) or an ISO date-time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _open_text(path: Path) -> io.TextIOBase:
    try:
        if path.suffix == ".gz":
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
        return path.open("r", encoding="utf-8", newline="")
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None


def _data_file(path: Path) -> DataFile:
    digest, size = sha256_file(path)
    return DataFile(name=path.name, sha256=digest, bytes=size)


def _csv_columns(path: Path, wanted: Sequence[str]) -> tuple[list[str], list[int]]:
    with _open_text(path) as fh:
        header = next(csv.reader(fh), None)
    if header is None:
        raise DatasetError(f"{path} is empty")
    names = [h.strip() for h in header]
    missing = [w for w in wanted if w not in names]
    if missing:
        raise DatasetError(f"{path} lacks the columns {', '.join(missing)}")
    return names, [names.index(w) for w in wanted]


def _load_numbers(path: Path, columns: Sequence[int]) -> np.ndarray[Any, np.dtype[np.float64]]:
    try:
        with _open_text(path) as fh:
            fh.readline()
            data = np.loadtxt(
                fh, delimiter=",", usecols=columns, dtype=np.float64, quotechar='"', ndmin=2
            )
    except (ValueError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"{path} is not readable as numbers: {exc}") from None
    if len(data) == 0:
        raise DatasetError(f"{path} has no rows")
    return data


# ------------------------------------------------------------------------------------------
# creditcard


CREDITCARD_INPUTS: Final = tuple(
    [InputSpec(name=f"v{i}", expr=f"data.v{i}") for i in range(1, 29)]
    + [InputSpec(name="amount", expr="data.amount")]
)


def load_creditcard(path: Path) -> Frame:
    """The ULB credit card CSV (plain or gzip), in file (time) order."""
    wanted = ["Time", *(f"V{i}" for i in range(1, 29)), "Amount", "Class"]
    _, columns = _csv_columns(path, wanted)
    data = _load_numbers(path, columns)
    order = np.argsort(data[:, 0], kind="stable")
    data = data[order]
    labels = data[:, -1]
    if not np.all((labels == 0) | (labels == 1)):
        raise DatasetError(f"{path}: Class must be 0 or 1")
    schema = {spec.expr: "number" for spec in CREDITCARD_INPUTS}
    return Frame(
        dataset="creditcard",
        inputs=CREDITCARD_INPUTS,
        schema=schema,
        x=np.ascontiguousarray(data[:, 1:-1]),
        y=labels.astype(np.int8),
        ts=np.ascontiguousarray(data[:, 0]),
        files=(_data_file(path),),
    )


# ------------------------------------------------------------------------------------------
# fdh


def fdh_pack() -> Ruleset:
    """The FDH feature pack shipped with riskguard (``packs/fdh.yaml``)."""
    text = resources.files("riskguard.packs").joinpath("fdh.yaml").read_text("utf-8")
    return load_ruleset_text(text, source="fdh.yaml")


def _fdh_inputs() -> tuple[InputSpec, ...]:
    specs = [
        InputSpec(name="amount", expr="data.amount"),
        InputSpec(name="night", expr="hour <= 6"),
    ]
    for w in ("1d", "7d", "30d"):
        c, t = "features.customer_tx", "features.terminal_labels"
        specs += [
            InputSpec(name=f"customer_nb_tx_{w}", expr=f"{c}.count_{w}"),
            InputSpec(name=f"customer_avg_amount_{w}", expr=f"{c}.sum_{w} / {c}.count_{w}"),
        ]
        specs += [
            InputSpec(name=f"terminal_nb_tx_{w}", expr=f"{t}.count_{w}"),
            InputSpec(name=f"terminal_risk_{w}", expr=f"{t}.sum_{w} / max({t}.count_{w}, 1)"),
        ]
    return tuple(specs)


FDH_INPUTS: Final = _fdh_inputs()


def fdh_fields(
    tx_id: int, ts: float, customer: int, terminal: int, amount: float
) -> dict[str, Any]:
    """A handbook row as the fields of its ``transaction`` event (what ``Event.fields`` gives
    for ``{"type": "transaction", "data": {"account_id": customer, "counterparty_id": terminal,
    "amount": amount, "currency": "EUR"}, ...}``)."""
    return {
        "event_id": f"fdh-{tx_id}",
        "type": "transaction",
        "hour": int(ts // 3600) % 24,
        "data.account_id": str(customer),
        "data.counterparty_id": str(terminal),
        "data.amount": amount,
        "data.currency": "EUR",
    }


def _fdh_epoch(path: Path, names: Sequence[str]) -> float:
    """Unix time of TX_TIME_SECONDS = 0, from the first row's TX_DATETIME."""
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        next(reader)
        first = next(reader, None)
    if first is None:
        raise DatasetError(f"{path} has no rows")
    try:
        moment = datetime.fromisoformat(first[names.index("TX_DATETIME")]).replace(tzinfo=UTC)
        seconds = float(first[names.index("TX_TIME_SECONDS")])
    except ValueError:
        raise DatasetError(f"{path}: TX_DATETIME / TX_TIME_SECONDS are not readable") from None
    return moment.timestamp() - seconds


def load_fdh(
    path: Path,
    *,
    start: float | None = None,
    end: float | None = None,
    delay_days: int = FDH_LABEL_DELAY_DAYS,
    progress: Callable[[str], None] | None = None,
    keep_envs: bool = False,
) -> Frame:
    """Replay a handbook CSV through the FDH pack from its first row; keep rows in
    ``[start, end)`` (everything before ``start`` still builds the state they read), and
    their environments too with ``keep_envs`` (to serve them to a model as the engine would)."""
    wanted = [
        "TRANSACTION_ID",
        "CUSTOMER_ID",
        "TERMINAL_ID",
        "TX_AMOUNT",
        "TX_TIME_SECONDS",
        "TX_FRAUD",
    ]
    names, columns = _csv_columns(path, [*wanted, "TX_DATETIME"])
    epoch = _fdh_epoch(path, names)
    data = _load_numbers(path, columns[:-1])
    data = data[np.argsort(data[:, 4], kind="stable")]
    tx_ids = data[:, 0].astype(np.int64)
    customers = data[:, 1].astype(np.int64)
    terminals = data[:, 2].astype(np.int64)
    amounts = data[:, 3]
    times = data[:, 4] + epoch
    frauds = data[:, 5].astype(np.int8)
    n = int(np.searchsorted(times, end, side="left")) if end is not None else len(times)
    first = int(np.searchsorted(times, start, side="left")) if start is not None else 0
    ruleset = fdh_pack()
    features = ruleset.features
    getters, _ = compile_inputs(FDH_INPUTS, _fdh_schema(ruleset))
    store = InMemoryStateStore()
    delay = delay_days * _DAY
    rows: list[list[float]] = []
    envs: list[dict[str, Any]] | None = [] if keep_envs else None
    j = 0  # next label to feed back
    id_list, cust_list, term_list = tx_ids.tolist(), customers.tolist(), terminals.tolist()
    amount_list, time_list, fraud_list = amounts.tolist(), times.tolist(), frauds.tolist()
    for i in range(n):
        ts = time_list[i]
        while time_list[j] + delay <= ts:  # labels known by now go first (ties included)
            known = time_list[j] + delay
            fields = fdh_fields(id_list[j], time_list[j], cust_list[j], term_list[j], 0.0)
            fields = label_fields(fields, fraud=bool(fraud_list[j]), hour=int(known // 3600) % 24)
            apply_label(store, features, "transaction", fields, known)
            j += 1
        env = fdh_fields(id_list[i], ts, cust_list[i], term_list[i], amount_list[i])
        store.apply(features.plan("transaction", env), ts, env, env)
        if i >= first:
            rows.append([get(env) for get in getters])
            if envs is not None:
                envs.append(env)
        if progress is not None and i % 200_000 == 0 and i:
            progress(f"replayed {i:,} of {n:,} transactions")
    kept = slice(first, n)
    x = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(FDH_INPUTS))
    return Frame(
        dataset="fdh",
        inputs=FDH_INPUTS,
        schema=_fdh_schema(ruleset, used_only=True),
        x=x,
        y=frauds[kept].copy(),
        ts=times[kept].copy(),
        files=(_data_file(path),),
        params={"pack": ruleset.version, "label_delay_days": delay_days},
        entity=customers[kept].copy(),
        envs=envs,
    )


def _fdh_schema(ruleset: Ruleset, *, used_only: bool = False) -> dict[str, str]:
    schema = {**FIELD_TYPES["transaction"], **ruleset.features.schema()}
    if not used_only:
        return schema
    _, paths = compile_inputs(FDH_INPUTS, schema)
    return {p: schema[p] for p in paths}


def known_compromised_mask(
    frame: Frame, *, train_start: float, test_start: float, delay_days: int = FDH_LABEL_DELAY_DAYS
) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """The handbook's test-set filter: True for rows whose customer had a fraud known before
    the row's day — a fraud from the training start up to the day ``delay_days + 1`` before
    (as ``get_train_test_set`` adds, per test day, the frauds of the day ``delay + 1`` earlier)."""
    if frame.entity is None:
        raise DatasetError("the known-compromised filter needs customer ids (fdh)")
    days = np.floor((frame.ts - train_start) / _DAY).astype(np.int64)
    fraud_days: dict[int, int] = {}  # customer -> first fraud day (relative to train start)
    for customer, day, label in zip(
        frame.entity.tolist(), days.tolist(), frame.y.tolist(), strict=True
    ):
        if label and day >= 0 and customer not in fraud_days:
            fraud_days[customer] = day
    first_test_day = int(np.floor((test_start - train_start) / _DAY))
    out = np.zeros(len(frame.ts), dtype=bool)
    for i, (customer, day) in enumerate(zip(frame.entity.tolist(), days.tolist(), strict=True)):
        if day < first_test_day:
            continue
        known = fraud_days.get(customer)
        out[i] = known is not None and known <= day - delay_days - 1
    return out


# ------------------------------------------------------------------------------------------
# events (riskguard's own decisions)

_EXCLUDED_PATHS: Final = frozenset({"context.geo.lat", "context.geo.lon"})


def _input_name(path: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9_]", "_", path.removeprefix("features.").removeprefix("data.").lower())
    base = re.sub(r"_+", "_", base).strip("_") or "input"
    if not base[0].isalpha():
        base = "f_" + base
    name = base[:60]
    n = 2
    while name in taken:
        name = f"{base[:56]}_{n}"
        n += 1
    taken.add(name)
    return name


def inputs_for_envs(
    envs: Iterable[Mapping[str, Any]],
) -> tuple[tuple[InputSpec, ...], dict[str, str]]:
    """Inputs for every numeric or boolean path the environments hold (geo coordinates and
    identifiers aside): the amount and hour first, then features by name."""
    types: dict[str, str] = {}
    for env in envs:
        for path, value in env.items():
            if path in _EXCLUDED_PATHS or value is None or path in types:
                continue
            if isinstance(value, bool):
                types[path] = "bool"
            elif isinstance(value, int | float):
                types[path] = "number"
    if not types:
        raise DatasetError("no numeric fields or features to train on")
    front = [p for p in ("data.amount", "hour") if p in types]
    paths = front + sorted(p for p in types if p not in front)
    taken: set[str] = set()
    inputs = tuple(InputSpec(name=_input_name(p, taken), expr=p) for p in paths)
    return inputs, {p: types[p] for p in paths}


def load_events(
    url: str,
    *,
    tenant: str,
    event_type: str = "transaction",
    start: float | None = None,
    end: float | None = None,
    unlabelled: str = "legitimate",
    inputs: tuple[InputSpec, ...] | None = None,
    schema: Mapping[str, str] | None = None,
) -> Frame:
    """Decisions of one tenant (id or name) and event type, with their latest label.

    ``unlabelled`` decides what an event nobody labelled is: ``legitimate`` (the usual reading
    when frauds are reported and the rest is presumed good) or ``skip``. Inputs are every
    numeric path found (training) or the given ones (evaluating a model).
    """
    import asyncio

    if unlabelled not in ("legitimate", "skip"):
        raise DatasetError("unlabelled must be legitimate or skip")
    return asyncio.run(
        _load_events(url, tenant, event_type, start, end, unlabelled, inputs, schema)
    )


async def _load_events(
    url: str,
    tenant: str,
    event_type: str,
    start: float | None,
    end: float | None,
    unlabelled: str,
    given_inputs: tuple[InputSpec, ...] | None,
    given_schema: Mapping[str, str] | None,
) -> Frame:
    from sqlalchemy import or_, select

    from riskguard.adapters.sql.alerts import labels
    from riskguard.adapters.sql.engines import is_db_error, make_engine
    from riskguard.adapters.sql.tables import decisions, tenants
    from riskguard.adapters.sql.urls import redact
    from riskguard.engine.events import InvalidEventError, parse_event

    engine = make_engine(url, null_pool=True)
    try:
        async with engine.connect() as conn:
            found = (
                await conn.execute(
                    select(tenants.c.id).where(
                        or_(tenants.c.id == tenant, tenants.c.name == tenant)
                    )
                )
            ).first()
            if found is None:
                raise DatasetError(f"no tenant {tenant!r} in {redact(url)}")
            tenant_id = found[0]
            query = (
                select(
                    decisions.c.decision_id,
                    decisions.c.event_id,
                    decisions.c.occurred_at,
                    decisions.c.event,
                    decisions.c.features,
                    decisions.c.degraded,
                )
                .where(decisions.c.tenant_id == tenant_id, decisions.c.event_type == event_type)
                .order_by(decisions.c.occurred_at, decisions.c.decision_id)
            )
            if start is not None:
                query = query.where(decisions.c.occurred_at >= datetime.fromtimestamp(start, UTC))
            if end is not None:
                query = query.where(decisions.c.occurred_at < datetime.fromtimestamp(end, UTC))
            rows = (await conn.execute(query)).all()
            label_rows = (
                await conn.execute(
                    select(labels.c.event_id, labels.c.label, labels.c.labelled_at)
                    .where(labels.c.tenant_id == tenant_id)
                    .order_by(labels.c.labelled_at, labels.c.id)
                )
            ).all()
    except DatasetError:
        raise
    except Exception as exc:
        if is_db_error(exc):
            raise DatasetError(
                f"cannot read decisions from {redact(url)}: {type(exc).__name__}"
            ) from None
        raise
    finally:
        await engine.dispose()

    latest = {event_id: label == "fraud" for event_id, label, _ in label_rows}  # last one wins
    envs: list[dict[str, Any]] = []
    ys: list[int] = []
    times: list[float] = []
    digest = hashlib.sha256()
    hashed = 0
    for decision_id, event_id, _occurred, body, snapshot, degraded in rows:
        if degraded:
            continue  # decided without features: nothing to learn from
        label = latest.get(event_id)
        if label is None and unlabelled == "skip":
            continue
        try:
            event = parse_event(body)
        except InvalidEventError:
            continue
        env: dict[str, Any] = event.fields()
        env.update({f"features.{k}": v for k, v in (snapshot or {}).items()})
        envs.append(env)
        ys.append(1 if label else 0)
        times.append(event.occurred_at.timestamp())
        line = canonical([decision_id, event_id, snapshot, label]) + b"\n"
        digest.update(line)
        hashed += len(line)
    if not envs:
        raise DatasetError(f"tenant {tenant} has no usable {event_type} decisions in that range")
    if given_inputs is not None and given_schema is not None:
        inputs, schema = given_inputs, dict(given_schema)
    else:
        inputs, schema = inputs_for_envs(envs)
    getters, _ = compile_inputs(inputs, schema)
    x = np.array([[get(env) for get in getters] for env in envs], dtype=np.float64)
    data = digest.hexdigest()
    return Frame(
        dataset="events",
        inputs=inputs,
        schema=schema,
        x=x,
        y=np.asarray(ys, dtype=np.int8),
        ts=np.asarray(times, dtype=np.float64),
        files=(DataFile(name=f"decisions:{tenant_id}:{event_type}", sha256=data, bytes=hashed),),
        params={"tenant": tenant_id, "event_type": event_type, "unlabelled": unlabelled},
    )
