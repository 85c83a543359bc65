"""``riskguard model`` as a user runs it, riskguard's own decisions as training data, and
``/v1/models`` over real HTTP.

The command line runs as real processes (exit codes and messages are what a user sees); the
``events`` dataset is read from decisions made by the real decision service and labels written
by the real alert service, on SQLite and PostgreSQL; the models router is served by uvicorn on a
loopback port, included in the application ``riskguard.wiring`` builds.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from riskguard.adapters.http.app import create_app
from riskguard.adapters.ml.cli import model_app
from riskguard.adapters.ml.registry import ModelRegistry
from riskguard.adapters.sql.alerts import SqlAlertStore
from riskguard.adapters.sql.migrate import upgrade
from riskguard.adapters.sql.store import SqlDecisionStore
from riskguard.services.alerts import AlertService
from riskguard.settings import load_settings
from riskguard.simulate import simulate
from riskguard.wiring import Container, provision
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data" / "ml"
CREDITCARD = DATA / "creditcard_sample.csv.gz"
FDH = DATA / "fdh_sample.csv.gz"
SECRET = "model-tests-secret-key-0123456789abcdef0123"
PROBLEM = "application/problem+json"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKGUARD_")}
    env["RISKGUARD_AUDIT"] = "false"  # activate/rollback would append to ./riskguard.db's log
    return subprocess.run(
        [sys.executable, "-m", "riskguard", "model", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def invoke(*args: str) -> Done:
    """The same command in this process (Click's runner): exit code, stdout and stderr as a
    user sees them, without a new interpreter loading the libraries again."""
    result = CliRunner().invoke(model_app, list(args), env={"RISKGUARD_AUDIT": "false"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Done(result.exit_code, result.stdout, result.stderr)


def train(*args: str, process: bool = False) -> dict[str, Any]:
    done = run("train", *args, "--json") if process else invoke("train", *args, "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def creditcard_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A registry with one creditcard model per kind, trained by the command line."""
    root = tmp_path_factory.mktemp("registry")
    versions = {}
    for kind, params in (
        ("gbm", ["--param", "max_trees=150", "--param", "early_stopping=40"]),
        ("isolation_forest", []),
        ("online", ["--param", "window_size=400"]),
    ):
        result = train(
            *("--dataset", "creditcard", "--data", str(CREDITCARD), "--kind", kind),
            *("--out", str(root), "--train-to", "22000", "--test-from", "22000", *params),
            process=kind == "gbm",  # one real process; the others in this one
        )
        assert result["kind"] == kind
        versions[kind] = result["version"]
    return root, versions


def test_train_writes_verified_versions_with_test_metrics(
    creditcard_models: tuple[Path, dict[str, str]],
) -> None:
    root, versions = creditcard_models
    for kind, version in versions.items():
        manifest = json.loads((root / version / "manifest.json").read_text())
        assert manifest["kind"] == kind
        assert manifest["training"]["train_range"] == ["start", "22000"]
        test = manifest["metrics"]["test"]
        assert test["positives"] == 29
        assert test["roc_auc"] > 0.5
        assert {"tp", "fp", "tn", "fn"} == set(test["confusion"])
        assert manifest["libraries"]["lightgbm"]
        assert manifest["training"]["files"][0]["name"] == CREDITCARD.name


def test_evaluate_prints_metrics_psi_and_writes_a_report(
    creditcard_models: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, versions = creditcard_models
    report = tmp_path / "report"
    done = run(
        "evaluate",
        *("--model", str(root / versions["gbm"]), "--data", str(CREDITCARD)),
        *("--report", str(report), "--json"),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    metrics = result["metrics"]
    manifest = json.loads((root / versions["gbm"] / "manifest.json").read_text())
    assert metrics["rows"] == manifest["metrics"]["test"]["rows"]  # the model's test range
    assert metrics["auprc"] == pytest.approx(manifest["metrics"]["test"]["auprc"])
    assert set(result["psi"]) == {"score", *manifest["explain"]["top_features"]}
    for png in ("pr_curve.png", "score_distribution.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (report / "report.md").read_text()
    assert "| auprc |" in text
    assert "![precision-recall curve](pr_curve.png)" in text
    plain = run(
        "evaluate",
        *("--model", str(root / versions["isolation_forest"]), "--data", str(CREDITCARD)),
        *("--from", "0", "--to", "30000", "--threshold", "0.6", "--report", str(report)),
    )
    assert plain.returncode == 0, plain.stderr
    assert "ROC-AUC" in plain.stdout
    assert "at 0.6" in plain.stdout
    assert "PSI: score" in plain.stdout


def test_list_activate_and_rollback(
    creditcard_models: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    source, versions = creditcard_models
    root = tmp_path / "models"
    shutil.copytree(source, root)
    gbm, forest = versions["gbm"], versions["isolation_forest"]
    assert invoke("activate", gbm, "--dir", str(root)).returncode == 0
    done = invoke("activate", forest, "--dir", str(root), "--actor", "ops")
    assert done.returncode == 0, done.stderr
    assert f"activated {forest} for scope default (previous: {gbm})" in done.stdout
    listed = invoke("list", "--dir", str(root), "--json")
    assert listed.returncode == 0, listed.stderr
    body = json.loads(listed.stdout)
    assert body["active"] == forest
    assert {item["version"] for item in body["items"]} == set(versions.values())
    assert [item["version"] for item in body["items"] if item["active"]] == [forest]
    text = invoke("list", "--dir", str(root)).stdout
    assert f"* {forest}" in text
    back = run("rollback", "--dir", str(root))
    assert back.returncode == 0, back.stderr
    assert f"rolled back scope default to {gbm} (was {forest})" in back.stdout
    assert ModelRegistry(root).active() == gbm
    nothing = run("rollback", "--dir", str(root))
    assert nothing.returncode == 2
    assert "no earlier version" in nothing.stderr
    unknown = invoke("activate", "m-0123456789abcdef", "--dir", str(root))
    assert unknown.returncode == 2
    assert "no model version m-0123456789abcdef" in unknown.stderr


def test_tampered_and_foreign_artifacts_fail_with_a_clear_message(
    creditcard_models: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    source, versions = creditcard_models
    root = tmp_path / "models"
    shutil.copytree(source, root)
    gbm = root / versions["gbm"]
    trees = bytearray((gbm / "trees.json").read_bytes())
    trees[-10] = ord("1") if trees[-10] != ord("1") else ord("2")
    (gbm / "trees.json").write_bytes(bytes(trees))
    done = run("evaluate", "--model", str(gbm), "--data", str(CREDITCARD))
    assert done.returncode == 2
    assert "trees.json was altered: its SHA-256 does not match" in done.stderr
    assert "Traceback" not in done.stderr
    refused = run("activate", versions["gbm"], "--dir", str(root))
    assert refused.returncode == 2
    assert "was altered" in refused.stderr
    forest = root / versions["isolation_forest"]
    (forest / "model.pkl").write_bytes(b"\x80\x04\x95")
    done = run("activate", versions["isolation_forest"], "--dir", str(root))
    assert done.returncode == 2
    assert "holds files its manifest does not list: model.pkl" in done.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text(json.dumps({"format": "onnx", "kind": "gbm"}))
    done = run("evaluate", "--model", str(foreign), "--data", str(CREDITCARD))
    assert done.returncode == 2
    assert "unknown artifact format 'onnx'" in done.stderr
    assert ModelRegistry(root).active() is None


def test_bad_arguments_are_refused_without_a_traceback(tmp_path: Path) -> None:
    cases = [
        (["train", "--dataset", "mnist", "--data", "x", "--kind", "gbm"], "--dataset must be"),
        (
            ["train", "--dataset", "creditcard", "--data", "x", "--kind", "svm"],
            "--kind must be",
        ),
        (
            ["train", "--dataset", "creditcard", "--data", str(tmp_path), "--kind", "gbm"],
            "is not a file",
        ),
        (
            [
                "train",
                "--dataset",
                "fdh",
                "--data",
                str(FDH),
                "--kind",
                "gbm",
                "--train-from",
                "tuesday",
            ],
            "is not a date",
        ),
        (
            [
                "train",
                "--dataset",
                "creditcard",
                "--data",
                str(CREDITCARD),
                "--kind",
                "gbm",
                "--param",
                "depth=3",
            ],
            "unknown gbm parameter 'depth'",
        ),
        (
            ["train", "--dataset", "creditcard", "--data", str(FDH), "--kind", "gbm"],
            "lacks the columns",
        ),
        (
            ["train", "--dataset", "events", "--data", "sqlite:///x.db", "--kind", "gbm"],
            "--tenant is required",
        ),
    ]
    for n, (args, message) in enumerate(cases):
        full = (*args, "--out", str(tmp_path / "out"))
        done = run(*full, cwd=tmp_path) if n == 0 else invoke(*full)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_fdh_training_replays_the_pack_and_filters_known_compromised_customers(
    tmp_path: Path,
) -> None:
    result = train(
        *("--dataset", "fdh", "--data", str(FDH), "--kind", "gbm", "--out", str(tmp_path)),
        *("--train-from", "2018-04-02", "--train-to", "2018-04-08"),
        *("--test-from", "2018-04-09", "--test-to", "2018-04-14"),
        *("--param", "max_trees=120", "--param", "early_stopping=40"),
    )
    manifest = json.loads((tmp_path / result["version"] / "manifest.json").read_text())
    assert manifest["training"]["train_range"] == ["2018-04-02", "2018-04-08"]
    assert manifest["training"]["first_event"].startswith("2018-04-02T")
    assert manifest["training"]["last_event"].startswith("2018-04-08T")
    assert manifest["training"]["params"]["label_delay_days"] == 7
    assert "features.terminal_labels.sum_30d" in manifest["paths"]
    test = manifest["metrics"]["test"]
    all_frauds_in_test = 9 + 10 + 9 + 6 + 11  # 04-10 .. 04-14 (04-09: 4)
    assert 0 < test["positives"] < all_frauds_in_test + 4  # known-compromised removed
    done = run(
        "evaluate",
        *("--model", str(tmp_path / result["version"]), "--data", str(FDH), "--json"),
        *("--report", str(tmp_path / "report")),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["metrics"]["rows"] == test["rows"]


# -- events: riskguard's own decisions and labels ------------------------------------------------


def _decide_and_label(database_url: str) -> str:
    """Decide a simulated stream's transactions with the real decision service and label them
    with the real alert service: attacks as fraud (chargebacks), a sample of the rest as
    legitimate (analysts). Returns the tenant id."""
    upgrade(database_url)
    settings = load_settings(
        database_url=database_url, secret_key=SECRET, gc_tuning=False, log_level="warning"
    )
    events, labels = simulate(days=4, users=70, seed=11)
    attacks = {row["event_id"] for row in labels}
    transactions = [e for e in events if e["type"] == "transaction"]

    async def work() -> str:
        container = Container(settings)
        await container.start()
        alerts = AlertService(SqlAlertStore.from_url(database_url))
        try:
            tenant_id, _keys = await provision(container.store, settings.secret, "acme")
            await container.engines.refresh()
            received = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
            by_account: dict[str, list[dict[str, Any]]] = {}
            for raw in transactions:
                by_account.setdefault(raw["data"]["account_id"], []).append(raw)

            async def decide_in_order(stream: list[dict[str, Any]]) -> None:
                for raw in stream:  # accounts in parallel, each one's events in order
                    result = await container.decisions.decide(tenant_id, raw, received)
                    assert result.recorded

            await asyncio.gather(*(decide_in_order(s) for s in by_account.values()))
            for n, raw in enumerate(transactions):
                at = datetime.fromisoformat(raw["occurred_at"]) + timedelta(days=2)
                if raw["event_id"] in attacks:
                    label, source = "fraud", "chargeback"
                elif n % 10 == 0:
                    label, source = "legitimate", "analyst"
                else:
                    continue
                await alerts.put_label(
                    tenant_id=tenant_id,
                    event_id=raw["event_id"],
                    label=label,  # type: ignore[arg-type]
                    source=source,
                    author="test",
                    labelled_at=at,
                )
            return tenant_id
        finally:
            await alerts.close()
            await container.stop()

    return asyncio.run(work())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_events_dataset_trains_from_stored_decisions_and_labels(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'riskguard.db'}"
    else:
        url = request.getfixturevalue("fresh_pg_url")
    tenant_id = _decide_and_label(url)
    result = train(
        *("--dataset", "events", "--data", url, "--tenant", "acme", "--kind", "gbm"),
        *("--out", str(tmp_path / "models"), "--param", "max_trees=100"),
        *("--param", "early_stopping=30", "--param", "valid_fraction=0.3"),
    )
    manifest = json.loads((tmp_path / "models" / result["version"] / "manifest.json").read_text())
    training = manifest["training"]
    assert training["dataset"] == "events"
    assert training["params"]["tenant"] == tenant_id
    assert training["files"][0]["name"] == f"decisions:{tenant_id}:transaction"
    assert training["positives"] > 20
    inputs = {spec["expr"] for spec in manifest["inputs"]}
    assert {"data.amount", "hour", "features.account_tx.count_5m"} <= inputs
    assert manifest["metrics"]["validation"]["roc_auc"] > 0.6
    if backend != "sqlite":
        return
    skipped = train(
        *("--dataset", "events", "--data", url, "--tenant", tenant_id, "--kind"),
        *("isolation_forest", "--unlabelled", "skip", "--out", str(tmp_path / "models")),
    )
    assert skipped["training"]["rows"] < training["rows"]
    assert skipped["training"]["positives"] == training["positives"]


# -- /v1/models over HTTP ------------------------------------------------------------------------


class ModelServer:
    """uvicorn serving the wired application (models routes included) from a thread."""

    def __init__(self, database_url: str, model_dir: Path, port: int) -> None:
        self.database_url = database_url
        self.model_dir = model_dir
        self.url = f"http://127.0.0.1:{port}"
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread = threading.Thread(target=self._serve, name="model-server", daemon=True)
        self._error: BaseException | None = None

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start()/stop()
            self._error = exc

    async def _main(self) -> None:
        settings = load_settings(
            database_url=self.database_url,
            secret_key=SECRET,
            gc_tuning=False,
            access_log=False,
            log_level="warning",
            model_dir=str(self.model_dir),
        )
        asgi = create_app(Container(settings))
        config = uvicorn.Config(
            asgi, host="127.0.0.1", port=self._port, log_level="warning", lifespan="on", ws="none"
        )
        self._server = uvicorn.Server(config)
        await self._server.serve()

    def start(self) -> ModelServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"server failed to start: {self._error!r}")
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not answer /healthz in time")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "server thread did not stop"
        if self._error is not None:
            raise self._error


def _tenant_keys(database_url: str, name: str) -> tuple[str, dict[str, str]]:
    upgrade(database_url)
    pepper = load_settings(database_url=database_url, secret_key=SECRET).secret

    async def work() -> tuple[str, dict[str, str]]:
        store = SqlDecisionStore(database_url)
        await store.start()
        try:
            return await provision(store, pepper, name, ("admin", "ingest", "read"))
        finally:
            await store.close()

    return asyncio.run(work())


def test_models_api_lists_and_activates_per_tenant(
    creditcard_models: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    source, versions = creditcard_models
    root = tmp_path / "models"
    shutil.copytree(source, root)
    registry = ModelRegistry(root)
    registry.activate(versions["isolation_forest"])  # the deployment-wide default
    url = f"sqlite+aiosqlite:///{tmp_path / 'riskguard.db'}"
    tenant_a, keys_a = _tenant_keys(url, "a")
    tenant_b, keys_b = _tenant_keys(url, "b")
    server = ModelServer(url, root, free_port()).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            read = {"Authorization": f"Bearer {keys_a['read']}"}
            admin = {"Authorization": f"Bearer {keys_a['admin']}"}
            listed = http.get("/v1/models", headers=read)
            assert listed.status_code == 200
            body = listed.json()
            assert body["active"] == versions["isolation_forest"]
            assert body["active_scope"] == "default"
            assert {item["version"] for item in body["items"]} == set(versions.values())
            gbm = next(item for item in body["items"] if item["version"] == versions["gbm"])
            assert gbm["usable"] is True
            assert gbm["kind"] == "gbm"
            assert gbm["metrics"]["positives"] == 29

            assert http.get("/v1/models").status_code == 401
            forbidden = http.post(f"/v1/models/{versions['gbm']}/activate", headers=read)
            assert forbidden.status_code == 403
            assert forbidden.headers["content-type"] == PROBLEM

            done = http.post(f"/v1/models/{versions['gbm']}/activate", headers=admin)
            assert done.status_code == 200, done.text
            assert done.json()["scope"] == tenant_a
            assert done.json()["previous"] is None
            assert registry.active(tenant_a) == versions["gbm"]
            assert registry.active(tenant_b) == versions["isolation_forest"]
            again = http.get("/v1/models", headers=read).json()
            assert again["active"] == versions["gbm"]
            assert again["active_scope"] == "tenant"
            other = http.get(
                "/v1/models", headers={"Authorization": f"Bearer {keys_b['read']}"}
            ).json()
            assert other["active"] == versions["isolation_forest"]
            record = registry.history(tenant_a)[-1]
            assert record.actor != "cli"  # the admin key's id
            assert record.version == versions["gbm"]

            missing = http.post("/v1/models/m-0123456789abcdef/activate", headers=admin)
            assert missing.status_code == 404
            assert missing.headers["content-type"] == PROBLEM
            bad = http.post("/v1/models/latest/activate", headers=admin)
            assert bad.status_code == 422
            assert bad.headers["content-type"] == PROBLEM
            (root / versions["online"] / "hst.json").write_bytes(b"{}")
            tampered = http.post(f"/v1/models/{versions['online']}/activate", headers=admin)
            assert tampered.status_code == 422
            assert tampered.headers["content-type"] == PROBLEM
            assert "was altered" in tampered.json()["detail"]
            assert str(root) not in tampered.text  # no filesystem paths in answers
            assert registry.active(tenant_a) == versions["gbm"]
            unusable = http.get("/v1/models", headers=read).json()
            online = next(i for i in unusable["items"] if i["version"] == versions["online"])
            assert online["usable"] is False
    finally:
        server.stop()
