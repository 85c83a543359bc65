#!/usr/bin/env bash
# Makes sure PostgreSQL (127.0.0.1:5432), Redis (127.0.0.1:6379) and NATS JetStream
# (127.0.0.1:4222) answer, starting them when they are installed but stopped, and that the
# Debian tools the integration tests drive (nginx) are installed. Exits non-zero, loudly, when
# one stays unreachable or missing: the integration tests must never be skipped into a green run.
set -uo pipefail

reachable() { # host port
  python3 - "$1" "$2" <<'PY'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
PY
}

wait_for() { # name host port
  for _ in $(seq 1 30); do reachable "$2" "$3" && return 0; sleep 0.5; done
  echo "ensure-services: $1 is not reachable on $2:$3" >&2
  return 1
}

status=0
if ! reachable 127.0.0.1 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "ensure-services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  wait_for PostgreSQL 127.0.0.1 5432 || status=1
fi
if ! reachable 127.0.0.1 6379; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "ensure-services: starting Redis"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
      --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  fi
  wait_for Redis 127.0.0.1 6379 || status=1
fi
if ! reachable 127.0.0.1 4222; then
  if command -v nats-server >/dev/null 2>&1; then
    echo "ensure-services: starting NATS with JetStream"
    mkdir -p /var/lib/nats 2>/dev/null || true
    (nohup nats-server -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats >/var/log/nats-ci.log 2>&1 &) || true
  fi
  wait_for NATS 127.0.0.1 4222 || status=1
fi
bash "$(dirname "$0")/ensure-tools.sh" nginx || status=1
if [ "$status" -ne 0 ]; then
  echo "ensure-services: FAILED — PostgreSQL, Redis, NATS and nginx are required by the test suite" >&2
fi
exit "$status"
