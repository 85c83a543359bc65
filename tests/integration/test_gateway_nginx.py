"""ext_authz mode end to end: a real NGINX (Debian's package) with ``auth_request`` pointed at
``/v1/authorize`` of the riskguard service (built by ``riskguard.wiring``, the authorize router
included, under uvicorn on loopback), in front of a real upstream; plus the request shapes that
Envoy's ext_authz HTTP service and Traefik's ForwardAuth send, over real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import free_port
from tests.integration.test_gateway_proxy import (
    AUDIENCE,
    ISSUER,
    PROBLEM,
    ROOT,
    Keys,
    Upstream,
    make_keys,
)

pytestmark = pytest.mark.integration

NGINX = Path("/usr/sbin/nginx")
AUTHORIZE_HOST = "riskguard.internal"  # the Host NGINX sends to /v1/authorize (trusted)

# The service as `riskguard serve` builds it (POST /v1/authorize included), on a given port.
LAUNCHER = """
import sys
import uvicorn
from riskguard.settings import load_settings
from riskguard.wiring import build_app

app = build_app(load_settings())
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", lifespan="on")
"""

NGINX_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;

    upstream riskguard {{ server 127.0.0.1:{riskguard_port}; keepalive 16; }}
    upstream ledger {{ server 127.0.0.1:{upstream_port}; keepalive 16; }}

    server {{
        listen 127.0.0.1:{port};

        location / {{
            auth_request /_riskguard_authorize;
            auth_request_set $rg_subject $upstream_http_x_riskguard_subject;
            auth_request_set $rg_decision $upstream_http_x_riskguard_decision;
            auth_request_set $rg_outcome $upstream_http_x_riskguard_outcome;
            auth_request_set $rg_deployment $upstream_http_x_riskguard_deployment;
            auth_request_set $rg_retry_after $upstream_http_retry_after;
            # what the upstream may trust: set here, so a client's copies never pass
            proxy_set_header X-Riskguard-Subject $rg_subject;
            proxy_set_header X-Riskguard-Decision $rg_decision;
            proxy_set_header X-Riskguard-Outcome $rg_outcome;
            proxy_set_header X-Riskguard-Deployment $rg_deployment;
            proxy_set_header Authorization "";
            add_header X-Riskguard-Decision $rg_decision always;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://ledger;
            # auth_request knows 2xx, 401 and 403 only; a 429 arrives as a 500
            error_page 500 = @riskguard_error;
        }}

        location = /_riskguard_authorize {{
            internal;
            proxy_pass http://riskguard/v1/authorize;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header Host {authorize_host};
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Host $host;
            proxy_set_header X-Original-Content-Length $content_length;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}

        location @riskguard_error {{
            if ($rg_retry_after) {{
                add_header Retry-After $rg_retry_after always;
                return 429;
            }}
            return 500;
        }}
    }}
}}
"""


def require_nginx() -> Path:
    if not NGINX.exists():
        pytest.fail(
            f"NGINX is required for this test and was not found at {NGINX}: install the Debian "
            "package `nginx` (scripts/ensure-services.sh does)"
        )
    return NGINX


@dataclass
class Stack:
    nginx_url: str
    riskguard_url: str
    keys: Keys
    upstream: Upstream


def _wait(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{url}: the process exited with {process.returncode}:\n{tail}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in time")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    nginx = require_nginx()
    folder = tmp_path_factory.mktemp("ext_authz")
    keys = make_keys(folder)
    upstream = Upstream().start()
    riskguard_port, nginx_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKGUARD_")}
    env.update(
        RISKGUARD_DATABASE_URL=f"sqlite+aiosqlite:///{folder / 'riskguard.db'}",
        RISKGUARD_JWT_KEYS_FILE=str(keys.jwks_path),
        RISKGUARD_JWT_ISSUER=ISSUER,
        RISKGUARD_JWT_AUDIENCE=AUDIENCE,
        RISKGUARD_RATELIMIT_RATE_PER_S="1",
        RISKGUARD_RATELIMIT_BURST="40",
        RISKGUARD_TRUSTED_HOSTS=f"{AUTHORIZE_HOST},127.0.0.1,localhost",
        RISKGUARD_LOG_LEVEL="warning",
    )
    service_log = folder / "riskguard.log"
    with open(service_log, "wb") as out:
        service = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(riskguard_port)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    conf = folder / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            tmp=folder,
            port=nginx_port,
            riskguard_port=riskguard_port,
            upstream_port=upstream.port,
            authorize_host=AUTHORIZE_HOST,
        )
    )
    nginx_log = folder / "nginx.out"
    try:
        _wait(f"http://127.0.0.1:{riskguard_port}/healthz", service, service_log)
        with open(nginx_log, "wb") as out:
            proxy = subprocess.Popen(
                [
                    str(nginx),
                    "-p",
                    str(folder),
                    "-c",
                    str(conf),
                    "-e",
                    str(folder / "error.log"),
                    "-g",
                    "daemon off;",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait(f"http://127.0.0.1:{nginx_port}/", proxy, nginx_log)
            yield Stack(
                f"http://127.0.0.1:{nginx_port}",
                f"http://127.0.0.1:{riskguard_port}",
                keys,
                upstream,
            )
        finally:
            _stop(proxy)
    finally:
        _stop(service)
        upstream.stop()


def service() -> str:
    return f"svc-{uuid.uuid4().hex[:10]}"


def _sent(response: httpx.Response) -> dict[str, str]:
    return dict(response.json()["headers"])


# --------------------------------------------------------------------------------------------
# NGINX auth_request


def test_nginx_allows_a_verified_call_and_passes_the_trusted_identity(stack: Stack) -> None:
    sub = service()
    headers = stack.keys.headers(sub, deployment="rel-3")
    headers["X-Riskguard-Subject"] = "svc-admin"  # a spoofed identity never reaches upstream
    response = httpx.get(stack.nginx_url + "/v1/accounts/4/balance", headers=headers, timeout=15)
    assert response.status_code == 200
    sent = _sent(response)
    assert sent["x-riskguard-subject"] == sub
    assert sent["x-riskguard-outcome"] == "allow"
    assert sent["x-riskguard-deployment"] == "rel-3"
    assert sent["x-riskguard-decision"].startswith("dec_")
    assert response.headers["x-riskguard-decision"] == sent["x-riskguard-decision"]
    assert "authorization" not in sent
    assert response.json()["target"] == "/v1/accounts/4/balance"


def test_nginx_refuses_calls_without_a_valid_token(stack: Stack) -> None:
    missing = httpx.get(stack.nginx_url + "/v1/accounts/4/balance", timeout=15)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    token = stack.keys.token(service())
    in_url = httpx.get(
        stack.nginx_url + f"/v1/accounts/4/balance?access_token={token}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=15,
    )
    assert in_url.status_code == 401


def test_nginx_blocks_lateral_movement_end_to_end(stack: Stack) -> None:
    headers = stack.keys.headers(service(), deployment="rel-1")
    for i in range(2):  # a normal history: three routes
        for path in ("/v1/accounts/{n}/balance", "/v1/accounts/{n}/entries", "/v1/fx/rates"):
            url = stack.nginx_url + path.format(n=10 + i)
            assert httpx.get(url, headers=headers, timeout=15).status_code == 200
    before = len(stack.upstream.seen)
    blocked = httpx.get(stack.nginx_url + "/admin/users", headers=headers, timeout=15)
    assert blocked.status_code == 403
    assert blocked.headers["x-riskguard-decision"].startswith("dec_")
    assert len(stack.upstream.seen) == before  # the upstream never saw it
    again = httpx.get(stack.nginx_url + "/v1/fx/rates", headers=headers, timeout=15)
    assert again.status_code == 200  # its normal traffic still passes


def test_nginx_turns_a_rate_limit_into_429_with_retry_after(stack: Stack) -> None:
    headers = stack.keys.headers(service())
    statuses = []
    for _ in range(45):
        response = httpx.get(stack.nginx_url + "/v1/fx/rates", headers=headers, timeout=15)
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            break
    assert statuses[-1] == 429, statuses
    assert set(statuses[:-1]) == {200}


# --------------------------------------------------------------------------------------------
# The other shapes: Envoy ext_authz (HTTP service), Traefik ForwardAuth, a direct POST


def test_envoy_shape_method_and_path_behind_a_prefix(stack: Stack) -> None:
    sub = service()
    headers = stack.keys.headers(sub) | {"Host": AUTHORIZE_HOST}
    response = httpx.request(
        "DELETE",
        stack.riskguard_url + "/v1/authorize/v1/sessions/9?x=1",
        headers=headers,
        timeout=15,
    )
    assert response.status_code == 200
    assert response.headers["x-riskguard-subject"] == sub
    decision = response.headers["x-riskguard-decision"]
    assert response.json()["decision_id"] == decision
    denied = httpx.request(
        "DELETE",
        stack.riskguard_url + "/v1/authorize/v1/sessions/9",
        headers={"Host": AUTHORIZE_HOST},
        timeout=15,
    )
    assert denied.status_code == 401
    assert denied.headers["content-type"] == PROBLEM


def test_traefik_shape_forwarded_headers(stack: Stack) -> None:
    sub = service()
    headers = stack.keys.headers(sub) | {
        "Host": AUTHORIZE_HOST,
        "X-Forwarded-Method": "POST",
        "X-Forwarded-Uri": "/v1/transfers",
        "X-Forwarded-Host": "ledger.internal",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-For": "203.0.113.9, 10.1.2.3",
    }
    response = httpx.get(stack.riskguard_url + "/v1/authorize", headers=headers, timeout=15)
    assert response.status_code == 200
    assert response.headers["x-riskguard-subject"] == sub


def test_direct_post_with_a_json_body(stack: Stack) -> None:
    sub = service()
    headers = stack.keys.headers(sub) | {"Host": AUTHORIZE_HOST}
    body = {"method": "GET", "uri": "/v1/accounts/3/balance", "host": "ledger"}
    response = httpx.post(
        stack.riskguard_url + "/v1/authorize", json=body, headers=headers, timeout=15
    )
    assert response.status_code == 200
    assert response.json()["subject"] == sub
    for bad in (b"not json", b"[1, 2]", b'{"method": 1}'):
        refused = httpx.post(
            stack.riskguard_url + "/v1/authorize",
            content=bad,
            headers=headers | {"Content-Type": "application/json"},
            timeout=15,
        )
        assert refused.status_code == 400, bad
        assert refused.headers["content-type"] == PROBLEM
    token_in_uri = {"method": "GET", "uri": f"/v1/x?access_token={stack.keys.token(sub)}"}
    response = httpx.post(
        stack.riskguard_url + "/v1/authorize", json=token_in_uri, headers=headers, timeout=15
    )
    assert response.status_code == 401
