#!/usr/bin/env bash
# moto (a local AWS SQS/SNS endpoint) for the messaging-sqs tests: install `moto[server]` from
# PyPI into a private venv if missing, start it on 127.0.0.1:4566 if nothing answers there,
# wait until ready. Idempotent. The venv's own moto_server is used even if another one is on
# PATH, so a fresh machine behaves like this one.
#
# A second moto for the security tests listens on https://localhost:4567 only (the test CA's
# certificate from scripts/tls-certs.sh) and enforces IAM: every request must be signed
# (SigV4) with the keys of a user it knows, and is allowed only by that user's policy. Its
# users and their keys, made when it starts, are written to $base/moto-secure.json:
#   app      sqs:* and sns:*
#   limited  only sqs:ListQueues and sns:ListTopics (it connects, and may do nothing else)
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

# Waits up to 60 s for the check `$1` to pass; fails showing the end of the log `$2`.
await_ready() {
    for _ in $(seq 1 120); do
        if "$1"; then
            return 0
        fi
        sleep 0.5
    done
    echo "moto did not answer ($1); the end of $2:" >&2
    tail -n 20 "$2" >&2 || true
    exit 1
}
await_ready ready "$log"
echo "moto ready on http://$host:$port (log: $log)"

bash "$(dirname "$0")/../tls-certs.sh"
tls="${MESSAGING_TLS_DIR:-$HOME/.cache/messaging-brokers/tls}"
secure_port=4567
secure_log="$base/moto-secure.log"
keys="$base/moto-secure.json"
secure_ready() {
    "$venv/bin/python" - "$secure_port" "$tls/ca.pem" <<'PY' 2>/dev/null
import ssl, sys, urllib.request
port, ca = sys.argv[1], sys.argv[2]
context = ssl.create_default_context(cafile=ca)
with urllib.request.urlopen(f"https://localhost:{port}/moto-api/", timeout=2, context=context) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
}
if ! secure_ready || [ ! -s "$keys" ]; then
    if (exec 3<>"/dev/tcp/$host/$secure_port") 2>/dev/null; then
        echo "something other than a fresh secure moto listens on $host:$secure_port (or $keys is missing); stop it and run this again" >&2
        exit 1
    fi
    # The six requests that create the users are the only ones served without signatures.
    INITIAL_NO_AUTH_ACTION_COUNT=6 nohup "$venv/bin/moto_server" -H "$host" -p "$secure_port" \
        --ssl-cert "$tls/server.pem" --ssl-key "$tls/server.key" >>"$secure_log" 2>&1 </dev/null &
    disown || true
    await_ready secure_ready "$secure_log"
    "$venv/bin/python" - "$secure_port" "$tls/ca.pem" "$keys" <<'PY'
import json, sys
import boto3
port, ca, out = sys.argv[1], sys.argv[2], sys.argv[3]
iam = boto3.client("iam", endpoint_url=f"https://localhost:{port}", verify=ca,
                   region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
# moto checks actions, not resources, for SQS and SNS: the limited user is limited by action.
def allow(actions):
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": actions, "Resource": "*"}]})
policies = {
    "app": allow(["sqs:*", "sns:*"]),
    "limited": allow(["sqs:ListQueues", "sns:ListTopics"]),
}
keys = {}
for user, policy in policies.items():
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    iam.put_user_policy(UserName=user, PolicyName="messaging-tests", PolicyDocument=policy)
    keys[user] = {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}
with open(out + ".tmp", "w") as f:
    json.dump(keys, f)
import os
os.replace(out + ".tmp", out)
PY
fi
echo "moto ready on https://localhost:$secure_port, IAM enforced (users and keys: $keys)"
