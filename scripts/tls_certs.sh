#!/usr/bin/env bash
# scripts/tls_certs.sh DIR: a throw-away certificate authority and a server certificate it signs, for a Redis with
# TLS on loopback (the benchmark's `read-tls` scenario). Writes, into DIR (created if missing):
#   ca.crt ca.key            the CA (CA:TRUE, keyCertSign), valid 2 days
#   server.crt server.key    for 127.0.0.1, ::1 and localhost (subjectAltName), serverAuth, signed by the CA
#   client.crt client.key    a client certificate signed by the same CA (clientAuth), for --tls-auth-clients yes
# Keys are EC P-256. Only `openssl` is needed. Nothing here is secret: never use these outside a test.
set -euo pipefail

[ $# -eq 1 ] && [ "$1" != "-h" ] && [ "$1" != "--help" ] || { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
dir="$1"
mkdir -p "$dir"
cd "$dir"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 600 "$1"; }

# sign NAME SUBJECT EXTENSIONS: NAME.crt for NAME.key, signed by the CA.
sign() {
    key "$1.key"
    openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
    printf '%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -sha256 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

key ca.key
openssl req -x509 -new -key ca.key -sha256 -days 2 -subj "/CN=EvServer test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.crt 2>/dev/null
sign server "/CN=localhost" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost"
sign client "/CN=evserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
rm -f ca.srl
openssl verify -CAfile ca.crt server.crt client.crt >/dev/null
