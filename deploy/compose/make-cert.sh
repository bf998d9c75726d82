#!/usr/bin/env bash
# A self-signed certificate for trying the compose layout locally (use your real one in production).
set -euo pipefail
dir="$(cd "$(dirname "$0")" && pwd)/tls"
mkdir -p "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=${1:-localhost}" \
  -addext "subjectAltName=DNS:${1:-localhost}" -keyout "$dir/key.pem" -out "$dir/cert.pem"
echo "wrote $dir/cert.pem and key.pem"
