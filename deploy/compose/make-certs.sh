#!/bin/sh
# Certificates for deploy/compose: a CA of the fleet's own and one certificate per service,
# made with openssl into deploy/compose/certs/ (or the folder given). Run it once before
# the first `docker compose up`, and again to rotate (docs/deploy.md, "Keys and TLS"):
#   deploy/compose/make-certs.sh                       # controlplane, gateway, worker-0, worker-1, admin
#   LORAFLEET_WORKERS="worker-0 worker-1 worker-2" deploy/compose/make-certs.sh
# The systemd units use it too (docs/deploy.md, "Keys and TLS"): LORAFLEET_CERT_HOSTS adds
# names to every server certificate, e.g. the host's address others dial:
#   LORAFLEET_WORKERS=worker LORAFLEET_CERT_HOSTS=IP:192.0.2.10,DNS:gpu1.example \
#     deploy/compose/make-certs.sh /etc/lorafleet/tls
# Each certificate's common name says who holds it ("controlplane:controlplane",
# "gateway:gateway", "worker:worker-0", "admin"; docs/security.md) and names the service
# (the address the others dial), localhost and 127.0.0.1 (the health check and the ports
# published on this host). ca.key signs them and is never mounted into a container.
set -eu

dir=${1:-$(dirname "$0")/certs}
days=${LORAFLEET_CERT_DAYS:-365}
workers=${LORAFLEET_WORKERS:-worker-0 worker-1}
extra=${LORAFLEET_CERT_HOSTS:+,$LORAFLEET_CERT_HOSTS}
mkdir -p "$dir"
# Only this user enters the folder; the containers get single files bind-mounted, which
# their user (uid 10001) must be able to read: hence keys 0644 inside a 0700 folder.
chmod 700 "$dir"
cd "$dir"

new_key() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

if [ ! -f ca.key ] || [ "${LORAFLEET_NEW_CA:-0}" = 1 ]; then
  new_key ca.key
  chmod 600 ca.key
  openssl req -x509 -new -key ca.key -out ca.crt -days 3650 -subj "/CN=lorafleet compose CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign"
fi

# issue FILE COMMON_NAME EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]
issue() {
  new_key "$1.key"
  chmod 644 "$1.key"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyAgreement"
    echo "extendedKeyUsage=$3"
    if [ -n "${4:-}" ]; then echo "subjectAltName=$4"; fi
  } > "$1.ext"
  openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

local_names="DNS:localhost,IP:127.0.0.1$extra"
issue controlplane controlplane:controlplane serverAuth,clientAuth "DNS:controlplane,$local_names"
issue gateway gateway:gateway serverAuth,clientAuth "DNS:gateway,$local_names"
for worker in $workers; do
  issue "$worker" "worker:$worker" serverAuth,clientAuth "DNS:$worker,$local_names"
done
issue admin admin clientAuth
echo "certificates in $(pwd): ca.crt, controlplane, gateway, $workers, admin (.crt/.key)"
