#!/usr/bin/env bash
# moto (a local AWS SQS/SNS endpoint) for the messaging-sqs tests: install `moto[server]` from
# PyPI into a private venv if missing, start it on 127.0.0.1:4566 if nothing answers there,
# wait until ready. Idempotent. The venv's own moto_server is used even if another one is on
# PATH, so a fresh machine behaves like this one.
set -euo pipefail
host=127.0.0.1
port=4566
base="${XDG_CACHE_HOME:-$HOME/.cache}/messaging-brokers"
venv="$base/moto-venv"
log="$base/moto.log"
mkdir -p "$base"

ready() {
    # moto answers its own API with 200 once the server is up.
    "$venv/bin/python" - "$host" "$port" <<'PY' 2>/dev/null
import sys, urllib.request
host, port = sys.argv[1], sys.argv[2]
with urllib.request.urlopen(f"http://{host}:{port}/moto-api/", timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
}

if [ ! -x "$venv/bin/moto_server" ]; then
    python=$(command -v python3 || true)
    if [ -z "$python" ] || ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
        python=$(command -v python3)
    fi
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]'
fi

if ! ready; then
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
        echo "something other than moto listens on $host:$port" >&2
        exit 1
    fi
    nohup "$venv/bin/moto_server" -H "$host" -p "$port" >>"$log" 2>&1 </dev/null &
    disown || true
fi

for _ in $(seq 1 120); do
    if ready; then
        echo "moto ready on http://$host:$port (log: $log)"
        exit 0
    fi
    sleep 0.5
done
echo "moto did not answer on $host:$port; see $log" >&2
tail -n 20 "$log" >&2 || true
exit 1
