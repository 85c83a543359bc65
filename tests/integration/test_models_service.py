"""The active model inside the decision service, over real HTTP against ``riskguard serve``.

Models are trained by the command line on the committed FDH subset (tests/data/ml), tenants
decide with the FDH pack (its features are the models' inputs), on both backends: SQLite +
in-memory state and PostgreSQL + Redis. Activation and rollback go through the API and the
command line; the service picks them up (at once in the process that took the request, by
polling elsewhere), records the version in every decision the model takes part in, explains
with the model's contributions, reports a version it cannot load without ever failing a
decision, audits every change, exports PSI metrics and feeds labels into feature state.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

import riskguard
from riskguard.adapters.ml.cli import model_app
from riskguard.engine.rules import parse_pack_text
from tests.integration.conftest import free_port
from tests.integration.service import Backend, Server, TenantKeys, provision_tenant, transaction

pytestmark = pytest.mark.integration

FDH = Path(__file__).resolve().parents[1] / "data" / "ml" / "fdh_sample.csv.gz"
PROBLEM = "application/problem+json"
WAIT_S = 30.0  # a poller's pick-up (every 0.5 s in these servers), with room for a busy machine


@dataclass(frozen=True)
class Models:
    root: Path
    gbm: str
    forest: str


def cli(*args: str, env: dict[str, str] | None = None) -> Any:
    result = CliRunner().invoke(model_app, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """Two FDH models trained by the command line: gbm (TreeSHAP) and isolation_forest."""
    root = tmp_path_factory.mktemp("trained")
    versions = {}
    for kind, params in (
        ("gbm", ["--param", "max_trees=100", "--param", "early_stopping=30"]),
        ("isolation_forest", []),
    ):
        done = cli(
            *("train", "--dataset", "fdh", "--data", str(FDH), "--kind", kind),
            *("--out", str(root), "--train-from", "2018-04-03", "--train-to", "2018-04-11"),
            *params,
            "--json",
            env={"RISKGUARD_AUDIT": "false"},
        )
        assert done.exit_code == 0, done.stderr
        versions[kind] = json.loads(done.stdout)["version"]
    return Models(root, versions["gbm"], versions["isolation_forest"])


def fdh_document() -> dict[str, Any]:
    """The FDH pack, with a lower challenge threshold so a model alone can raise an event."""
    path = Path(riskguard.__file__).parent / "packs" / "fdh.yaml"
    document = parse_pack_text(path.read_text(), source="fdh.yaml")
    document["thresholds"] = {"transaction": {"challenge": 0.3, "review": 0.8, "block": 0.95}}
    return document


def registry_copy(models: Models, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(models.root, root)
    return root


def backend_for(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if kind == "sqlite+memory":
        return Backend(kind, f"sqlite+aiosqlite:///{tmp_path / 'riskguard.db'}")
    return Backend(
        kind,
        request.getfixturevalue("fresh_pg_url"),
        redis_url=request.getfixturevalue("redis_url"),
        redis_prefix=f"{request.getfixturevalue('redis_prefix')}m{uuid.uuid4().hex[:8]}",
    )


def serve(backend: Backend, model_dir: Path, log: Path, **env: str) -> Server:
    backend.extra_env = {"RISKGUARD_MODEL_DIR": str(model_dir), **env}
    return Server(backend, free_port(), log_path=log).start()


class Api:
    """One tenant's view of a running server."""

    def __init__(self, server: Server, keys: TenantKeys) -> None:
        self.server = server
        self.keys = keys
        self.http = httpx.Client(base_url=server.url, timeout=30)

    def call(self, method: str, path: str, role: str = "admin", **kw: Any) -> httpx.Response:
        return self.http.request(method, path, headers=self.keys.headers(role), **kw)

    def decide(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self.call("POST", "/v1/decisions", role="ingest", json=body)
        assert response.status_code == 200, response.text
        decision: dict[str, Any] = response.json()
        return decision

    def stored(self, decision_id: str) -> dict[str, Any]:
        response = self.call("GET", f"/v1/decisions/{decision_id}", role="read")
        assert response.status_code == 200, response.text
        detail: dict[str, Any] = response.json()
        return detail

    def use_fdh_pack(self) -> None:
        put = self.call("PUT", "/v1/rulesets/draft", json=fdh_document())
        assert put.status_code == 200, put.text
        published = self.call("POST", "/v1/rulesets", json={"comment": "fdh"})
        assert published.status_code == 201, published.text

    def models(self) -> dict[str, Any]:
        response = self.call("GET", "/v1/models", role="read")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def metrics(self) -> str:
        return self.http.get("/metrics").text

    def close(self) -> None:
        self.http.close()


def payment(amount: float, *, account: str | None = None, terminal: str = "term-1") -> Any:
    body = transaction(f"pay-{uuid.uuid4().hex[:12]}", account=account or uid("cust"))
    body["data"].update(amount=amount, counterparty_id=terminal)
    return body


def login() -> dict[str, Any]:
    return {
        "event_id": f"login-{uuid.uuid4().hex[:12]}",
        "type": "login",
        "data": {"user_id": uid("user"), "success": True},
    }


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def model_reason(decision: dict[str, Any]) -> dict[str, Any]:
    found = [r for r in decision["reasons"] if r["source"] == "model"]
    assert len(found) == 1, decision["reasons"]
    return found[0]


def eventually(check: Callable[[], Any], what: str) -> Any:
    """Poll ``check`` until it returns something truthy (a poller's pick-up), or fail."""
    deadline = time.monotonic() + WAIT_S
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT_S:g} s: {what}")
        time.sleep(0.1)


def metric(text: str, name: str, **labels: str) -> float | None:
    """A sample's value in a Prometheus text exposition (None when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    prefix = f"{name}{{{wanted}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return None


@pytest.fixture(params=["sqlite+memory", "postgres+redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return backend_for(request.param, request, tmp_path)


@pytest.fixture
def postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return backend_for("postgres+redis", request, tmp_path)


# -- the active model in decisions ---------------------------------------------------------------


def test_decisions_use_the_active_model_record_its_version_and_explain_it(
    backend: Backend, models: Models, tmp_path: Path
) -> None:
    acme = provision_tenant(backend, uid("acme"))
    other = provision_tenant(backend, uid("other"))
    server = serve(backend, registry_copy(models, tmp_path), tmp_path / "server.log")
    api, api_other = Api(server, acme), Api(server, other)
    try:
        api.use_fdh_pack()
        none = api.decide(payment(2500.0))
        assert none["model_version"] is None  # no model active: decided on the pack alone
        assert [r for r in none["reasons"] if r["source"] == "model"] == []
        assert api.models()["serving"] is None

        activated = api.call("POST", f"/v1/models/{models.gbm}/activate")
        assert activated.status_code == 200, activated.text
        assert activated.json()["action"] == "activate"
        admin_key_id = activated.json()["actor"]

        risky = api.decide(payment(2500.0))  # far above a new customer's habit
        assert risky["model_version"] == models.gbm
        assert risky["outcome"] != "allow"
        reason = model_reason(risky)
        assert reason["code"] == "MODEL_SCORE"
        assert reason["value"] > 0.5
        assert reason["contribution"] == pytest.approx(risky["score"], abs=1e-3)
        factors = reason["factors"]
        assert 1 <= len(factors) <= 5
        assert "amount" in factors or any(name.startswith("customer_") for name in factors)
        assert "driven by" in reason["message"]
        assert reason["message"] in risky["explanation"]

        stored = api.stored(risky["decision_id"])  # what the database holds
        assert stored["model_version"] == models.gbm
        assert stored["reasons"] == risky["reasons"]
        assert stored["explanation"] == risky["explanation"]
        assert "customer_tx.count_1d" in stored["features"]

        calm = api.decide(payment(12.0))
        assert calm["model_version"] == models.gbm  # the model was asked, found nothing
        assert calm["outcome"] == "allow"
        assert all("factors" not in r for r in calm["reasons"])  # not explained: allowed
        assert api.stored(calm["decision_id"])["model_version"] == models.gbm

        other_type = api.decide(login())  # a type the model does not score
        assert other_type["model_version"] is None
        assert api_other.decide(payment(2500.0))["model_version"] is None  # another tenant

        listed = api.models()
        assert listed["active"] == models.gbm
        assert listed["serving"] == models.gbm
        assert listed["serving_problem"] is None

        # a PSI monitor per active version, on the service's /metrics
        text = api.metrics()
        assert metric(text, "riskguard_model_psi_observations", model_version=models.gbm) == 2
        assert f'riskguard_model_psi{{model_version="{models.gbm}",variable="score"}}' in text
        assert metric(text, "riskguard_model_load_failing") == 0

        # rollback: activate the forest, then return to the gbm
        assert api.call("POST", f"/v1/models/{models.forest}/activate").status_code == 200
        forest = api.decide(payment(2500.0))
        assert forest["model_version"] == models.forest
        assert model_reason(forest)["factors"]
        back = api.call("POST", "/v1/models/rollback")
        assert back.status_code == 200, back.text
        assert back.json()["action"] == "rollback"
        assert back.json()["version"] == models.gbm
        assert back.json()["previous"] == models.forest
        assert api.decide(payment(2500.0))["model_version"] == models.gbm
        nothing = api.call("POST", "/v1/models/rollback")
        assert nothing.status_code == 409
        assert nothing.headers["content-type"] == PROBLEM
        assert api.call("POST", "/v1/models/rollback", role="read").status_code == 403

        # every change is in the tenant's audit log, by the admin key that made it
        audit = api.call("GET", "/v1/audit", params={"action": "model.activated"})
        assert audit.status_code == 200, audit.text
        records = audit.json()["records"]
        assert [r["body"]["version"] for r in records] == [models.gbm, models.forest]
        assert {r["actor"] for r in records} == {admin_key_id}
        assert {r["tenant_id"] for r in records} == {acme.tenant_id}
        rolled = api.call("GET", "/v1/audit", params={"action": "model.rolled_back"}).json()
        assert [(r["body"]["version"], r["body"]["previous"]) for r in rolled["records"]] == [
            (models.gbm, models.forest)
        ]
        assert (
            api_other.call("GET", "/v1/audit", params={"action": "model.activated"}).json()[
                "records"
            ]
            == []
        )

        # monitors follow the versions in use: the forest's is gone, the gbm's starts afresh
        text = api.metrics()
        assert metric(text, "riskguard_model_psi_observations", model_version=models.gbm) == 1
        assert f'model_version="{models.forest}"' not in text
    finally:
        api.close()
        api_other.close()
        server.stop()


def test_command_line_changes_are_audited_and_picked_up_by_polling(
    postgres: Backend, models: Models, tmp_path: Path
) -> None:
    acme = provision_tenant(postgres, uid("acme"))
    root = registry_copy(models, tmp_path)
    server = serve(postgres, root, tmp_path / "server.log")
    api = Api(server, acme)
    env = {**postgres.env(), "RISKGUARD_MODEL_DIR": str(root)}
    try:
        api.use_fdh_pack()
        for version in (models.forest, models.gbm):
            done = cli("activate", version, "--tenant", acme.tenant_id, env=env)
            assert done.exit_code == 0, done.stderr
        # another process changed the registry: this server sees it at its next poll
        eventually(
            lambda: api.decide(payment(2500.0))["model_version"] == models.gbm,
            "the server serves the version the command line activated",
        )
        done = cli("rollback", "--tenant", acme.tenant_id, "--actor", "ops-alice", env=env)
        assert done.exit_code == 0, done.stderr
        assert f"to {models.forest} (was {models.gbm})" in done.stdout
        eventually(
            lambda: api.decide(payment(2500.0))["model_version"] == models.forest,
            "the server serves the version the command line rolled back to",
        )
        records = api.call("GET", "/v1/audit", params={"after": 0, "limit": 500}).json()["records"]
        changes = [r for r in records if r["action"].startswith("model.")]
        assert [(r["action"], r["actor"], r["body"]["version"]) for r in changes] == [
            ("model.activated", "cli", models.forest),
            ("model.activated", "cli", models.gbm),
            ("model.rolled_back", "cli", models.forest),
        ]
        assert changes[-1]["body"]["operator"] == "ops-alice"
        # with the audit log unusable, the command line changes nothing
        broken = {**env, "RISKGUARD_AUDIT_SIGNING_KEY": str(tmp_path / "missing" / "key")}
        broken["RISKGUARD_ENV"] = "production"
        broken["RISKGUARD_TRUSTED_HOSTS"] = "localhost"
        refused = cli("activate", models.gbm, "--tenant", acme.tenant_id, env=broken)
        assert refused.exit_code == 2
        assert "nothing was changed" in refused.stderr
        assert api.models()["active"] == models.forest
    finally:
        api.close()
        server.stop()


# -- a model that cannot be loaded never breaks deciding ------------------------------------------


def _tamper(root: Path, version: str) -> None:
    path = root / version / "forest.json"
    data = bytearray(path.read_bytes())
    data[-20] = ord("7") if data[-20] != ord("7") else ord("8")
    path.write_bytes(bytes(data))


def _point(root: Path, scope: str, version: str) -> None:
    """Make ``version`` active for ``scope`` behind the registry's back (as a hand edit or a
    restore from backup would), so the service meets an artifact it cannot verify."""
    pointer = root / "active" / f"{scope}.json"
    pointer.parent.mkdir(parents=True, exist_ok=True)
    staging = pointer.with_suffix(".tmp")
    staging.write_text(json.dumps({"version": version, "actor": "hand"}))
    staging.replace(pointer)


def test_a_tampered_active_model_keeps_the_service_deciding_and_is_reported(
    postgres: Backend, models: Models, tmp_path: Path
) -> None:
    acme = provision_tenant(postgres, uid("acme"))
    root = registry_copy(models, tmp_path)
    _tamper(root, models.forest)
    _point(root, acme.tenant_id, models.forest)  # broken from the start
    server = serve(postgres, root, tmp_path / "server.log")
    api = Api(server, acme)
    try:
        api.use_fdh_pack()
        first = api.decide(payment(2500.0))
        assert first["model_version"] is None  # no model it can trust: decided without one
        listed = api.models()
        assert listed["active"] == models.forest
        assert listed["serving"] is None
        assert listed["serving_problem"] == (
            f"{models.forest} cannot be loaded: the artifact was altered after it was written"
        )
        assert str(root) not in json.dumps(listed)
        text = api.metrics()
        assert metric(text, "riskguard_model_load_failing") == 1
        assert (metric(text, "riskguard_model_load_failures_total") or 0) >= 1

        # a good version activated through the API is served; then the pointer is moved to
        # the tampered one again: the good one stays in service
        assert api.call("POST", f"/v1/models/{models.gbm}/activate").status_code == 200
        assert api.decide(payment(2500.0))["model_version"] == models.gbm
        assert api.models()["serving_problem"] is None
        assert metric(api.metrics(), "riskguard_model_load_failing") == 0
        _point(root, acme.tenant_id, models.forest)
        eventually(lambda: api.models()["serving_problem"], "the failed load is reported")
        for _ in range(5):
            kept = api.decide(payment(2500.0))
            assert kept["model_version"] == models.gbm
            assert model_reason(kept)["factors"]
        assert api.models()["serving"] == models.gbm
        assert metric(api.metrics(), "riskguard_model_load_failing") == 1
        assert api.http.get("/readyz").status_code == 200
        refused = api.call("POST", f"/v1/models/{models.forest}/activate")
        assert refused.status_code == 422  # the registry refuses it too
        assert refused.headers["content-type"] == PROBLEM
    finally:
        api.close()
        server.stop()
    log = (tmp_path / "server.log").read_text()
    failures = [json.loads(line) for line in log.splitlines() if "model_load_failed" in line]
    assert failures
    assert failures[0]["version"] == models.forest
    assert failures[0]["tenant"] == acme.tenant_id
    assert "Traceback" not in log


def test_every_worker_picks_up_an_activation(
    postgres: Backend, models: Models, tmp_path: Path
) -> None:
    acme = provision_tenant(postgres, uid("acme"))
    server = serve(
        postgres, registry_copy(models, tmp_path), tmp_path / "s.log", RISKGUARD_WORKERS="2"
    )
    api = Api(server, acme)
    try:
        api.use_fdh_pack()
        assert api.call("POST", f"/v1/models/{models.gbm}/activate").status_code == 200

        def all_switched() -> bool:
            # fresh connections, so the kernel spreads them over both workers' accept queues
            versions = set()
            for _ in range(20):
                response = httpx.post(
                    server.url + "/v1/decisions",
                    json=payment(2500.0),
                    headers=acme.headers("ingest"),
                    timeout=30,
                )
                assert response.status_code == 200, response.text
                versions.add(response.json()["model_version"])
            return versions == {models.gbm}

        eventually(all_switched, "both workers serve the activated version")
    finally:
        api.close()
        server.stop()


# -- labels feed label-based features -------------------------------------------------------------


def test_labels_feed_the_label_based_features(
    backend: Backend, models: Models, tmp_path: Path
) -> None:
    acme = provision_tenant(backend, uid("acme"))
    server = serve(backend, registry_copy(models, tmp_path), tmp_path / "server.log")
    api = Api(server, acme)
    try:
        api.use_fdh_pack()
        terminal = uid("term")
        hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        fraud = api.decide(payment(80.0, terminal=terminal) | {"occurred_at": hour_ago})
        legit = api.decide(payment(30.0, terminal=terminal) | {"occurred_at": hour_ago})
        before = api.stored(fraud["decision_id"])["features"]
        assert before["terminal_labels.count_1d"] == 0

        def label(decision: dict[str, Any], value: str, source: str = "analyst") -> int:
            response = api.call(
                "POST",
                "/v1/labels",
                json={"event_id": decision["event_id"], "label": value, "source": source},
            )
            assert response.status_code in (200, 201), response.text
            return response.status_code

        def terminal_features() -> dict[str, Any]:
            detail = api.stored(api.decide(payment(20.0, terminal=terminal))["decision_id"])
            return {k: v for k, v in detail["features"].items() if k.startswith("terminal_")}

        assert label(fraud, "fraud") == 201
        after_one = terminal_features()
        assert after_one["terminal_labels.count_1d"] == 1
        assert after_one["terminal_labels.sum_1d"] == 1
        assert label(legit, "legitimate") == 201
        after_two = terminal_features()
        assert after_two["terminal_labels.count_7d"] == 2
        assert after_two["terminal_labels.sum_7d"] == 1  # one fraud in two labels
        # a second label of an event (another source, or a correction) is not counted again
        assert label(fraud, "fraud", source="chargeback") == 201
        assert label(legit, "fraud") == 200
        assert terminal_features()["terminal_labels.count_30d"] == 2
        # a label of an event never decided is stored, and changes nothing
        orphan = {"event_id": uid("never"), "label": "fraud"}
        assert api.call("POST", "/v1/labels", json=orphan).status_code == 201
        assert terminal_features()["terminal_labels.count_30d"] == 2
    finally:
        api.close()
        server.stop()
