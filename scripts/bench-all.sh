#!/usr/bin/env bash
# Runs every benchmark and regenerates docs/performance.md from their results: no figure in
# that file is typed by hand.
#
#   scripts/bench-all.sh            # all benchmarks, then docs/performance.md
#   BENCH_ONLY="codec runtime_overhead" scripts/bench-all.sh   # a subset (the report is
#                                   # rendered from this run's results only)
#
# Starts what the benchmarks need, like the test scripts: RabbitMQ, moto, and a nisshi broker
# of its own with the memory engine on 127.0.0.1:9094 (the Kafka benchmark measures the
# clients, and the durable SQLite engine would make the broker the only limit); that broker is
# stopped by its PID when the script ends. Results go to target/bench-results/<UTC time>/ as
# one JSON file per benchmark; `perf` (when installed) adds a profile of the consumer runtime.
# Takes about 20 minutes on 2 cores, once the benchmarks are built.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

all="codec runtime_overhead memory_throughput kafka_throughput rabbit_throughput sqs_throughput"
only="${BENCH_ONLY:-$all}"
wants() { [[ " $only " == *" $1 "* ]]; }

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out="$root/target/bench-results/$stamp"
mkdir -p "$out"
export MESSAGING_BENCH_OUT="$out"

versions="rustc: $(rustc -V)"
lock_version() { awk -v n="$1" '$0 == "name = \"" n "\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock; }
versions+=$'\n'"clients: rdkafka-sys $(lock_version rdkafka-sys) (bundled librdkafka), lapin $(lock_version lapin), aws-sdk-sqs $(lock_version aws-sdk-sqs), cloudevents-sdk $(lock_version cloudevents-sdk)"

bench_kafka_pid=""
cleanup() {
    if [ -n "$bench_kafka_pid" ] && kill -0 "$bench_kafka_pid" 2>/dev/null; then
        kill "$bench_kafka_pid" 2>/dev/null || true
        wait "$bench_kafka_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

if wants rabbit_throughput; then
    bash scripts/brokers/rabbitmq.sh
    versions+=$'\n'"RabbitMQ: $(rabbitmqctl -q version 2>/dev/null || echo unknown), 127.0.0.1:5672, on the same cores as the benchmark"
fi
if wants sqs_throughput; then
    bash scripts/brokers/moto.sh
    moto_venv="${XDG_CACHE_HOME:-$HOME/.cache}/messaging-brokers/moto-venv"
    versions+=$'\n'"SQS: moto $("$moto_venv/bin/pip" show moto 2>/dev/null | awk '/^Version:/ { print $2 }'), 127.0.0.1:4566"
fi
if wants kafka_throughput; then
    # Builds the nisshi binary if it is not cached; the durable broker on 9092 is the tests'.
    bash scripts/brokers/nisshi.sh
    nisshi_home="${NISSHI_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/messaging-brokers/nisshi-0.8.1}"
    port=9094
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "bench-all: something already listens on 127.0.0.1:$port; the Kafka benchmark needs a broker of its own there" >&2
        exit 1
    fi
    "$nisshi_home/bin/nisshi" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "memory://bench/" \
        --group-initial-rebalance-delay 0s \
        >"$out/nisshi-bench.log" 2>&1 &
    bench_kafka_pid=$!
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || {
        echo "bench-all: the benchmark's nisshi did not open 127.0.0.1:$port:" >&2
        tail -20 "$out/nisshi-bench.log" >&2
        exit 1
    }
    export KAFKA_BENCH_SERVERS="127.0.0.1:$port"
    versions+=$'\n'"Kafka: nisshi 0.8.1 (Kafka protocol), memory engine, 127.0.0.1:$port, on the same cores as the benchmark"
fi

run() {
    local crate=$1 bench=$2
    wants "$bench" || return 0
    echo "== $bench"
    cargo bench -q -p "$crate" --bench "$bench"
}
run messaging-core codec
run messaging-core runtime_overhead
run messaging-testkit memory_throughput
run messaging-kafka kafka_throughput
run messaging-rabbitmq rabbit_throughput
run messaging-sqs sqs_throughput

# Where a message's CPU goes in the consumer runtime (in-memory broker, so only our code and
# tokio show): the benchmark again under perf, top functions by self time.
if wants runtime_overhead && command -v perf >/dev/null; then
    bin=$(cargo bench -q -p messaging-core --bench runtime_overhead --no-run --message-format=json 2>/dev/null |
        sed -n 's/.*"executable":"\([^"]*runtime_overhead[^"]*\)".*/\1/p' | tail -1)
    if [ -n "$bin" ] && perf record -q -F 499 -g -o "$out/runtime.perf" "$bin" >/dev/null 2>&1; then
        {
            echo "## Profile: consumer runtime, per message"
            echo
            echo "\`perf record -F 499 -g\` of \`runtime_overhead\` (all three loops), functions by self"
            echo "time above 1.5 %. Allocation (\`mi_*\`, \`memmove\` of futures and events), tokio's task"
            echo "bookkeeping and clock reads for the duration metrics are the runtime's per-message costs;"
            echo "the in-memory broker's own work is \`messaging_testkit::memory\`."
            echo
            echo '```text'
            perf report -i "$out/runtime.perf" --no-children --percent-limit 1.5 --stdio -g none 2>/dev/null |
                grep '%' | sed -E 's/^ +//; s/runtime_overhea +//; s/runtime_overhead-[0-9a-f]+ +//' | cut -c1-150
            echo '```'
        } >"$out/profile.md"
        rm -f "$out/runtime.perf"
    fi
fi

MESSAGING_BENCH_VERSIONS="$versions" cargo run -q -p messaging-testkit --bin perf-report -- "$out" docs/performance.md
echo "results in $out; docs/performance.md regenerated"
