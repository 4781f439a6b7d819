#!/usr/bin/env bash
# A Kafka-protocol broker for the messaging-kafka tests: nisshi 0.8.1 (formerly Tansu) from
# crates.io with its durable SQLite engine, listening on 127.0.0.1:9092 only; and a second one
# for the security tests on 127.0.0.1:9093 that speaks only TLS (the test CA's certificate for
# `localhost`, from scripts/tls-certs.sh) and requires SASL/SCRAM, with the users below.
#
# Idempotent: builds the binary if it is not cached (it needs rustc >= 1.96, so the nightly
# toolchain; ~14 min on 2 cores), starts the broker if nothing listens on the port, waits until
# it answers. Cache and data live outside the checkout:
#   NISSHI_HOME (default ${XDG_CACHE_HOME:-$HOME/.cache}/messaging-brokers/nisshi-0.8.1)
set -euo pipefail

version=0.8.1
home="${NISSHI_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/messaging-brokers/nisshi-$version}"
bin="$home/bin/nisshi"
data="$home/data"
port=9092

secure_port=9093
tls="${MESSAGING_TLS_DIR:-$HOME/.cache/messaging-brokers/tls}"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/${1:-$port}") 2>/dev/null; }

if listening && listening "$secure_port"; then
    echo "nisshi: something already listens on 127.0.0.1:$port and 127.0.0.1:$secure_port"
    exit 0
fi
bash "$(dirname "$0")/../tls-certs.sh"

if [ ! -x "$bin" ]; then
    if ! rustup toolchain list | grep -q '^nightly'; then
        echo "nisshi: the nightly toolchain is needed to build nisshi $version (rustc >= 1.96); none is installed" >&2
        exit 1
    fi
    echo "nisshi: building nisshi $version into $home (about 14 minutes, once)"
    mkdir -p "$home"
    if ! cargo +nightly install --locked nisshi --version "$version" --root "$home" >"$home/build.log" 2>&1; then
        echo "nisshi: build failed; the end of $home/build.log:" >&2
        tail -30 "$home/build.log" >&2
        exit 1
    fi
fi

mkdir -p "$data"
# nisshi resolves the SQLite path relative to its working directory.
cd "$home"
# Waits until `port` answers; on failure shows the end of `log`.
ready() { # port log
    for _ in $(seq 1 100); do
        if listening "$1"; then
            return 0
        fi
        sleep 0.1
    done
    echo "nisshi did not open 127.0.0.1:$1; the end of $2:" >&2
    tail -30 "$2" >&2
    exit 1
}

if ! listening; then
    # Tests create uniquely named topics and never need old data: a database grown past 4 GiB
    # is started afresh (only here, while the broker is stopped).
    if [ -f "$data/nisshi.db" ] && [ "$(stat -c %s "$data/nisshi.db")" -gt $((4 * 1024 * 1024 * 1024)) ]; then
        echo "nisshi: $data/nisshi.db is over 4 GiB; starting with an empty database"
        rm -f "$data/nisshi.db" "$data/nisshi.db-shm" "$data/nisshi.db-wal"
    fi
    nohup "$bin" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "sqlite://data/nisshi.db" \
        --group-initial-rebalance-delay 0s \
        --group-poll-interval 100ms \
        >>"$home/broker.log" 2>&1 &
    ready "$port" "$home/broker.log"
fi
echo "nisshi $version ready on 127.0.0.1:$port (data in $data)"

if ! listening "$secure_port"; then
    # Users of the secure broker (these tests' passwords only):
    #   messaging-app     SCRAM-SHA-512
    #   messaging-app256  SCRAM-SHA-256
    # `nisshi user create` speaks plaintext without authentication, so the users go into the
    # secure broker's database through a plain broker on it, started for that alone and
    # stopped by its PID before the secure one opens the same database.
    if [ ! -f "$data/secure.users" ]; then
        rm -f "$data/secure.db" "$data/secure.db-shm" "$data/secure.db-wal"
        boot_port=9097
        if listening "$boot_port"; then
            echo "nisshi: 127.0.0.1:$boot_port is taken; it is needed briefly to create the users" >&2
            exit 1
        fi
        "$bin" broker \
            --listener-url "tcp://127.0.0.1:$boot_port" \
            --advertised-listener-url "tcp://127.0.0.1:$boot_port" \
            --storage-engine "sqlite://data/secure.db" \
            >>"$home/secure-users.log" 2>&1 &
        boot=$!
        ready "$boot_port" "$home/secure-users.log"
        timeout 60 "$bin" user create --broker "tcp://127.0.0.1:$boot_port" \
            --mechanism scram512 messaging-app messaging-app-test-password >>"$home/secure-users.log" 2>&1
        timeout 60 "$bin" user create --broker "tcp://127.0.0.1:$boot_port" \
            --mechanism scram256 messaging-app256 messaging-app256-test-password >>"$home/secure-users.log" 2>&1
        kill "$boot"
        wait "$boot" 2>/dev/null || true
        touch "$data/secure.users"
    fi
    nohup "$bin" broker \
        --listener-url "tcp://127.0.0.1:$secure_port" \
        --advertised-listener-url "tcp://localhost:$secure_port" \
        --storage-engine "sqlite://data/secure.db" \
        --authentication \
        --cert "$tls/server.pem" \
        --key "$tls/server.key" \
        --group-initial-rebalance-delay 0s \
        --group-poll-interval 100ms \
        >>"$home/secure.log" 2>&1 &
    ready "$secure_port" "$home/secure.log"
fi
echo "nisshi $version ready on 127.0.0.1:$secure_port (TLS for localhost, SASL/SCRAM required)"
