#!/usr/bin/env bash
# RabbitMQ for the messaging-rabbitmq tests: install from Debian if missing, listen on
# 127.0.0.1 only, enable the consistent-hash exchange and management plugins, start if not
# running, wait until ready. Idempotent.
set -euo pipefail
if ! command -v rabbitmq-server >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
fi
conf=/etc/rabbitmq/rabbitmq.conf
mkdir -p /etc/rabbitmq
touch "$conf"
grep -q '^listeners\.tcp\.' "$conf" || echo "listeners.tcp.default = 127.0.0.1:5672" >>"$conf"
grep -q '^management\.tcp\.ip' "$conf" || echo "management.tcp.ip = 127.0.0.1" >>"$conf"
if ! rabbitmqctl -q status >/dev/null 2>&1; then
    # The management plugin starts with the node, so it reads management.tcp.ip above.
    rabbitmq-plugins -q enable --offline rabbitmq_consistent_hash_exchange rabbitmq_management >/dev/null
    # Debian's service starter may be absent or refuse without systemd: start directly.
    rabbitmq-server -detached
fi
timeout 120 rabbitmqctl -q await_startup
# A node whose AMQP listener stopped answering (seen once here after a restart test amid
# hundreds of leftover queues) is restarted rather than left to fail every test.
if ! timeout 60 rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1; then
    echo "rabbitmq: listeners not answering, restarting the node" >&2
    # Only through the node's own control tool: its OS pid, then a stop; never by a name
    # pattern (another node or process could match).
    pid=$(timeout 30 rabbitmqctl -q eval 'list_to_integer(os:getpid()).' 2>/dev/null || true)
    if ! timeout 60 rabbitmqctl -q stop >/dev/null 2>&1; then
        if [ -n "$pid" ] && [ "$pid" -gt 1 ] 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
        else
            echo "rabbitmq: the node does not answer rabbitmqctl; stop it by hand" >&2
            exit 1
        fi
    fi
    for _ in $(seq 1 60); do
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then break; fi
        if [ -z "$pid" ] && ! rabbitmqctl -q status >/dev/null 2>&1; then break; fi
        sleep 1
    done
    rabbitmq-server -detached
    timeout 120 rabbitmqctl -q await_startup
    timeout 60 rabbitmq-diagnostics -q check_port_connectivity >/dev/null
fi
# On a node that was already running, enable only what is safe online: the management plugin
# would listen on every interface until the node restarts with the config above.
rabbitmq-plugins -q enable --online rabbitmq_consistent_hash_exchange >/dev/null
for _ in $(seq 1 60); do
    if (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
        echo "rabbitmq ready on 127.0.0.1:5672"
        exit 0
    fi
    sleep 0.5
done
echo "rabbitmq did not open 127.0.0.1:5672" >&2
exit 1
