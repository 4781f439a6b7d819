#!/usr/bin/env bash
# Throw-away TLS material for the tests' TLS listeners (RabbitMQ, and any broker script that
# needs it): a test CA, a server certificate for the name `localhost` only (so a connection to
# 127.0.0.1 fails host-name verification, which the tests check), a client certificate from the
# same CA, and a second, unrelated CA (a server the client must not trust). Idempotent: made
# once, kept until a file is missing or a certificate is within 30 days of expiry.
#
# Directory: $MESSAGING_TLS_DIR, default ~/.cache/messaging-brokers/tls (the tests read the
# same variable). Nothing here is a secret of anything but these tests.
set -euo pipefail
dir="${MESSAGING_TLS_DIR:-$HOME/.cache/messaging-brokers/tls}"
mkdir -p "$dir"
cd "$dir"
fresh() {
    for f in ca.pem ca.key server.pem server.key client.pem client.key other-ca.pem other-client.pem other-client.key; do
        [ -s "$f" ] || return 1
    done
    for c in ca.pem server.pem client.pem other-ca.pem other-client.pem; do
        openssl x509 -checkend $((30 * 24 * 3600)) -noout -in "$c" >/dev/null || return 1
    done
}
if fresh; then
    echo "tls: test certificates in $dir"
    exit 0
fi
command -v openssl >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out "$1" 2>/dev/null; }
ca() { # name subject
    key "$tmp/$1.key"
    openssl req -x509 -new -key "$tmp/$1.key" -sha256 -days 3650 -subj "/CN=$2" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$tmp/$1.pem"
}
leaf() { # name ca subject extensions
    key "$tmp/$1.key"
    openssl req -new -key "$tmp/$1.key" -subj "/CN=$3" -out "$tmp/$1.csr"
    printf '%s\n' "$4" >"$tmp/$1.ext"
    openssl x509 -req -in "$tmp/$1.csr" -CA "$tmp/$2.pem" -CAkey "$tmp/$2.key" -CAcreateserial \
        -days 3650 -sha256 -extfile "$tmp/$1.ext" -out "$tmp/$1.pem" 2>/dev/null
}
ca ca "messaging test CA"
ca other-ca "messaging untrusted test CA"
leaf server ca localhost "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost"
leaf client ca messaging-test-client "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
leaf other-client other-ca messaging-untrusted-client "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
for f in ca server client other-ca other-client; do
    cp "$tmp/$f.pem" "$dir/$f.pem"
done
for f in ca server client other-client; do
    install -m 600 "$tmp/$f.key" "$dir/$f.key"
done
echo "tls: made test certificates in $dir"
