#!/usr/bin/env bash
# RabbitMQ for the messaging-rabbitmq tests: install from Debian if missing, listen on
# 127.0.0.1 only (AMQP on 5672, AMQP over TLS on 5671 with the test CA's certificate from
# scripts/tls-certs.sh), enable the consistent-hash exchange and management plugins, start if
# not running, wait until ready, and create the tests' users (see "Users" below). Idempotent.
set -euo pipefail
bash "$(dirname "$0")/../tls-certs.sh"
tls="${MESSAGING_TLS_DIR:-$HOME/.cache/messaging-brokers/tls}"
if ! command -v rabbitmq-server >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
fi
conf=/etc/rabbitmq/rabbitmq.conf
mkdir -p /etc/rabbitmq
touch "$conf"
grep -q '^listeners\.tcp\.' "$conf" || echo "listeners.tcp.default = 127.0.0.1:5672" >>"$conf"
grep -q '^management\.tcp\.ip' "$conf" || echo "management.tcp.ip = 127.0.0.1" >>"$conf"
# TLS: the node reads copies it owns (it may run as the rabbitmq user). Client certificates
# are verified when sent (verify_peer) but not required, so one listener serves both the
# server-only and the mutual-TLS tests.
mkdir -p /etc/rabbitmq/tls
for f in ca.pem server.pem server.key; do
    cmp -s "$tls/$f" "/etc/rabbitmq/tls/$f" || install -m 640 "$tls/$f" "/etc/rabbitmq/tls/$f"
done
if id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq:rabbitmq /etc/rabbitmq/tls; fi
if ! grep -q '^listeners\.ssl\.' "$conf"; then
    cat >>"$conf" <<'CONF'
listeners.ssl.default = 127.0.0.1:5671
ssl_options.cacertfile = /etc/rabbitmq/tls/ca.pem
ssl_options.certfile = /etc/rabbitmq/tls/server.pem
ssl_options.keyfile = /etc/rabbitmq/tls/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
CONF
fi
# Starts the node and waits until it has booted: `await_startup` fails at once while the new
# node has not yet registered with epmd, so it is tried until it waits.
start_node() {
    rabbitmq-server -detached
    for _ in $(seq 1 120); do
        if timeout 120 rabbitmqctl -q await_startup >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    echo "rabbitmq: the node did not start; see /var/log/rabbitmq" >&2
    exit 1
}
if ! rabbitmqctl -q status >/dev/null 2>&1; then
    # The management plugin starts with the node, so it reads management.tcp.ip above.
    rabbitmq-plugins -q enable --offline rabbitmq_consistent_hash_exchange rabbitmq_management >/dev/null
    # Debian's service starter may be absent or refuse without systemd: start directly.
    start_node
fi
timeout 120 rabbitmqctl -q await_startup
# Restarts the node: only through the node's own control tool (its OS pid, then a stop),
# never by a name pattern (another node or process could match).
restart_node() {
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
    start_node
    timeout 60 rabbitmq-diagnostics -q check_port_connectivity >/dev/null
}
# A node whose AMQP listener stopped answering (seen once here after a restart test amid
# hundreds of leftover queues) is restarted rather than left to fail every test.
if ! timeout 60 rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1; then
    echo "rabbitmq: listeners not answering, restarting the node" >&2
    restart_node
fi
# A node started before the TLS listener was configured reads it only when it starts.
if ! (exec 3<>/dev/tcp/127.0.0.1/5671) 2>/dev/null; then
    echo "rabbitmq: no TLS listener on 127.0.0.1:5671 yet, restarting the node to open it" >&2
    restart_node
fi
# On a node that was already running, enable only what is safe online: the management plugin
# would listen on every interface until the node restarts with the config above.
rabbitmq-plugins -q enable --online rabbitmq_consistent_hash_exchange >/dev/null
# Users: the authentication and authorisation tests' own, on their own virtual host (the
# passwords are these tests' only; guest stays for every other test).
#   messaging-app      everything on messaging-secure
#   messaging-limited  on messaging-secure, only exchanges and queues named allowed.*
rabbitmqctl -q list_vhosts | grep -qx messaging-secure || rabbitmqctl -q add_vhost messaging-secure
for user in messaging-app messaging-limited; do
    rabbitmqctl -q list_users | cut -f1 | grep -qx "$user" ||
        rabbitmqctl -q add_user "$user" "$user-test-password" >/dev/null
done
rabbitmqctl -q set_permissions -p messaging-secure messaging-app '.*' '.*' '.*'
rabbitmqctl -q set_permissions -p messaging-secure messaging-limited \
    '^(allowed\..*|amq\.gen-.*)$' '^(allowed\..*|amq\.gen-.*)$' '^(allowed\..*|amq\.gen-.*)$'
for port in 5672 5671; do
    ready=
    for _ in $(seq 1 60); do
        if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
            ready=1
            break
        fi
        sleep 0.5
    done
    if [ -z "$ready" ]; then
        echo "rabbitmq did not open 127.0.0.1:$port" >&2
        exit 1
    fi
done
echo "rabbitmq ready on 127.0.0.1:5672 and (TLS) 127.0.0.1:5671"
