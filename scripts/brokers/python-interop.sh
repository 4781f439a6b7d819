#!/usr/bin/env bash
# The Python side of the CloudEvents interop suite (messaging/tests/interop.rs): the official
# CloudEvents SDK and ordinary broker clients, pinned, in a private venv beside moto's.
# Idempotent: installs only when the venv lacks these exact versions.
set -euo pipefail
base="${XDG_CACHE_HOME:-$HOME/.cache}/messaging-brokers"
venv="$base/interop-venv"
pins=(cloudevents==2.2.0 confluent-kafka==2.16.1 pika==1.4.4 boto3==1.44.8)
mkdir -p "$base"
if [ -f "$venv/pins" ] && [ "$(cat "$venv/pins")" = "${pins[*]}" ] && [ -x "$venv/bin/python" ]; then
    echo "interop venv ready: $venv"
    exit 0
fi
python=$(command -v python3 || true)
if [ -z "$python" ] || ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
    python=$(command -v python3)
fi
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "${pins[@]}"
echo "${pins[*]}" > "$venv/pins"
echo "interop venv ready: $venv"
