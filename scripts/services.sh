#!/usr/bin/env bash
# Make sure the PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) the tests use are up; start them with
# the machine's own commands when they are installed but stopped.
set -uo pipefail
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! port_open 5432 && command -v pg_ctlcluster >/dev/null; then
    echo "==> starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
if ! port_open 6379 && command -v redis-server >/dev/null; then
    echo "==> starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi
# tests/unit/test_deploy.py validates docker-compose.yml with Compose itself; no Docker engine is needed.
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null \
    && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "==> installing docker-compose (Compose Specification validator)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >/dev/null; } \
        || echo "warning: could not install docker-compose" >&2
fi
for _ in $(seq 1 20); do port_open 5432 && break; sleep 0.5; done
port_open 5432 || echo "warning: PostgreSQL is not reachable on 127.0.0.1:5432" >&2
port_open 6379 || echo "warning: Redis is not reachable on 127.0.0.1:6379" >&2
exit 0
