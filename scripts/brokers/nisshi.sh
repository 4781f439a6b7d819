#!/usr/bin/env bash
# A Kafka-protocol broker for the messaging-kafka tests: nisshi 0.8.1 (formerly Tansu) from
# crates.io with its durable SQLite engine, listening on 127.0.0.1:9092 only.
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

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

if listening; then
    echo "nisshi: something already listens on 127.0.0.1:$port"
    exit 0
fi

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
# Tests create uniquely named topics and never need old data: a database grown past 4 GiB is
# started afresh (only here, while the broker is stopped).
if [ -f "$data/nisshi.db" ] && [ "$(stat -c %s "$data/nisshi.db")" -gt $((4 * 1024 * 1024 * 1024)) ]; then
    echo "nisshi: $data/nisshi.db is over 4 GiB; starting with an empty database"
    rm -f "$data/nisshi.db" "$data/nisshi.db-shm" "$data/nisshi.db-wal"
fi
# nisshi resolves the SQLite path relative to its working directory.
cd "$home"
nohup "$bin" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "sqlite://data/nisshi.db" \
    --group-initial-rebalance-delay 0s \
    --group-poll-interval 100ms \
    >>"$home/broker.log" 2>&1 &

for _ in $(seq 1 100); do
    if listening; then
        echo "nisshi $version ready on 127.0.0.1:$port (data in $data)"
        exit 0
    fi
    sleep 0.1
done
echo "nisshi did not open 127.0.0.1:$port; the end of $home/broker.log:" >&2
tail -30 "$home/broker.log" >&2
exit 1
