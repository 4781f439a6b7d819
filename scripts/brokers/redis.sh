#!/usr/bin/env bash
# Redis for the shared idempotency store's tests: install if missing, start if not running,
# wait until ready, bound to 127.0.0.1 only.
set -euo pipefail
if ! command -v redis-server >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/messaging-tests.log
fi
for _ in $(seq 1 50); do
    if redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
        echo "redis ready on 127.0.0.1:6379"
        exit 0
    fi
    sleep 0.2
done
echo "redis did not become ready on 127.0.0.1:6379" >&2
exit 1
