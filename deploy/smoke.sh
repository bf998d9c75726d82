#!/usr/bin/env bash
# The production layout on this machine, without containers, and an end-to-end check through it:
#
#   nginx (https, self-signed, free ports) ─► web1, web2 (python -m config.server, APP_ENV=production)
#   a Celery worker and beat (Redis broker), the local PostgreSQL (scratch database $SMOKE_DB, dropped
#   and made again) and Redis (database $SMOKE_REDIS_DB, keys under a prefix of this run), and the
#   node simulator as a real node (attested through the real flow).
#
# Then deploy/smoke_check.py checks, over https through nginx: health and readiness, /metrics
# refused outside and served locally, a chat (plain and streamed), a stream cut on web1 and
# resumed on web2 with Last-Event-ID, an RPM limit held across both processes, an image job done
# by the worker, a balanced ledger; then beat's schedule reaching the worker, JSON logs, and a
# graceful stop of everything. Exit status 0 only if all of it held. Everything it started is
# stopped on exit (trap); its files live in a temporary directory (kept with SMOKE_KEEP=1).
#
# Needs: `make install`, PostgreSQL on 127.0.0.1:5432 (user postgres, trust), Redis on
# 127.0.0.1:6379, nginx and openssl (nginx is installed with apt-get if missing).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
SMOKE_DB="${SMOKE_DB:-smoke_platform}"
SMOKE_REDIS_DB="${SMOKE_REDIS_DB:-11}"
PGURL="${SMOKE_PG:-postgres://postgres@127.0.0.1:5432}"
REDIS_BASE="${SMOKE_REDIS:-redis://127.0.0.1:6379}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pi-smoke.XXXXXX")"
RUN_ID="smoke-$$-$(date +%s)"
PIDS=()          # every process started here, stopped by pid on exit
NGINX_PID_FILE="$WORK/nginx/nginx.pid"
STATUS=1

say() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*" >&2; exit 1; }

cleanup() {
  local code=$?
  set +e
  if [[ -f "$NGINX_PID_FILE" ]]; then kill -QUIT "$(cat "$NGINX_PID_FILE")" 2>/dev/null; fi
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null
  done
  # our keys only: the Redis server is shared, never flushed
  if [[ -n "${REDIS_URL:-}" ]]; then
    "$PY" - "$REDIS_URL" "$RUN_ID" "$CELERY_BROKER_URL" "$RUN_ID-jobs" <<'EOF' 2>/dev/null
import sys, redis
for url, pattern in ((sys.argv[1], sys.argv[2] + ":*"), (sys.argv[3], sys.argv[4] + "*")):
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(pattern, count=1000):
        client.delete(key)
EOF
  fi
  if [[ "${SMOKE_KEEP:-0}" == "1" || $code -ne 0 ]]; then
    echo "files (logs, config) kept in $WORK"
    if [[ $code -ne 0 ]]; then
      for log in "$WORK"/logs/*.log "$WORK"/nginx/error.log; do
        [[ -f "$log" ]] && { echo "--- last lines of $log"; tail -n 25 "$log"; }
      done
    fi
  else
    psql "$PGURL/postgres" -qc "DROP DATABASE IF EXISTS $SMOKE_DB WITH (FORCE)" >/dev/null 2>&1
    rm -rf "$WORK"
  fi
  [[ $code -eq 0 ]] && echo "smoke: PASS" || echo "smoke: FAIL (exit $code)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_ports() { "$PY" -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"; }

wait_http() {  # url, seconds
  local deadline=$((SECONDS + $2))
  until curl -skf -o /dev/null "$1"; do
    (( SECONDS < deadline )) || fail "$1 did not answer within $2 s"
    sleep 0.2
  done
}

wait_line() {  # file, text, seconds
  local deadline=$((SECONDS + $3))
  until grep -q -- "$2" "$1" 2>/dev/null; do
    (( SECONDS < deadline )) || fail "'$2' not in $1 within $3 s"
    sleep 0.2
  done
}

start() {  # name, command...: in the background, output to logs/<name>.log
  local name=$1; shift
  "$@" >"$WORK/logs/$name.log" 2>&1 &
  PIDS+=($!)
  eval "PID_${name//-/_}=$!"
}

# --- prerequisites ---------------------------------------------------------------------------
say "prerequisites"
[[ -x "$PY" ]] || fail "no $PY: run make install"
if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
  echo "nginx is missing: installing it with apt-get (Debian's nginx package)"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
  # Debian starts the system nginx on install; this script never uses or touches it.
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
for tool in openssl psql curl; do command -v $tool >/dev/null || fail "$tool is missing"; done
psql "$PGURL/postgres" -qtAc "select 1" >/dev/null || fail "PostgreSQL does not answer at $PGURL"
"$PY" -c "import redis, sys; redis.Redis.from_url(sys.argv[1]).ping()" "$REDIS_BASE/$SMOKE_REDIS_DB" \
  || fail "Redis does not answer at $REDIS_BASE"
mkdir -p "$WORK"/{logs,nginx/tmp,tls,attestation,state}
read -r PORT_HTTPS PORT_PIN1 PORT_PIN2 PORT_WEB1 PORT_WEB2 PORT_SIM <<<"$(free_ports 6)"
echo "work dir $WORK; https on $PORT_HTTPS (pinned to web1: $PORT_PIN1, web2: $PORT_PIN2)"

# --- environment: production settings, secrets made for this run --------------------------------
secret() { "$PY" -c "import secrets; print(secrets.token_urlsafe(48))"; }
export APP_ENV=production
export DJANGO_SECRET_KEY="$(secret)" API_KEY_PEPPER="$(secret)" DATA_MASTER_KEY="$(secret)"
export METRICS_TOKEN="$(secret)"
export ALLOWED_HOSTS="localhost,127.0.0.1"
export CSRF_TRUSTED_ORIGINS="https://localhost:$PORT_HTTPS"
export PUBLIC_BASE_URL="https://localhost:$PORT_HTTPS"
export DATABASE_URL="$PGURL/$SMOKE_DB"
export REDIS_URL="$REDIS_BASE/$SMOKE_REDIS_DB"
export REDIS_PREFIX="$RUN_ID"
export CELERY_BROKER_URL="$REDIS_BASE/$((SMOKE_REDIS_DB + 1))"
export CELERY_QUEUE="$RUN_ID-jobs"
export STATE_DIR="$WORK/state"
export ATTESTATION_TRUST_ROOTS="$WORK/attestation/root.pem"
export LOCAL_NODE_ENABLED=0
export NODE_HEALTH_INTERVAL_SECONDS=2
export SERVED_BY_HEADER=1
export SHUTDOWN_READY_DELAY_SECONDS=1 SHUTDOWN_DRAIN_SECONDS=20
export EMAIL_BACKEND=django.core.mail.backends.locmem.EmailBackend
export PYTHONUNBUFFERED=1
cd "$ROOT"

# --- database, attestation root, static files -----------------------------------------------------
say "database $SMOKE_DB (dropped and made again), migrations, static files"
psql "$PGURL/postgres" -qc "DROP DATABASE IF EXISTS $SMOKE_DB WITH (FORCE)" >/dev/null
psql "$PGURL/postgres" -qc "CREATE DATABASE $SMOKE_DB" >/dev/null
# The operator's attestation CA (root + a node certificate for the simulator), before migrate reads the root.
ATTESTATION_TRUST_ROOTS= "$PY" manage.py attestation_ca init --dir "$WORK/attestation" >/dev/null
ATTESTATION_TRUST_ROOTS= "$PY" manage.py attestation_ca issue --dir "$WORK/attestation" --node simulator >/dev/null
"$PY" manage.py migrate --noinput -v0
"$PY" manage.py collectstatic --noinput -v0

# --- the node, seeded tenant --------------------------------------------------------------------------
say "node simulator (a real node process) and a seeded tenant"
MEASUREMENT="$("$PY" -c 'import hashlib; print(hashlib.sha384(b"node simulator, smoke build").hexdigest())')"
start sim "$PY" manage.py run_node_simulator --port "$PORT_SIM" --models sim-small \
  --attestation-key "$WORK/attestation/simulator.key" --attestation-certs "$WORK/attestation/simulator.pem" \
  --attestation-measurement "$MEASUREMENT"
wait_line "$WORK/logs/sim.log" "listening on" 60
"$PY" deploy/smoke_check.py seed --sim "http://127.0.0.1:$PORT_SIM" --measurement "$MEASUREMENT" >"$WORK/keys.json"
echo "seeded: organization with credit, a secret key, a key limited to 4 requests a minute, node attested"

# --- processes ------------------------------------------------------------------------------------------
say "web1, web2 (config.server), Celery worker and beat"
PROCESS_NAME=web1 start web1 "$PY" -m config.server --host 127.0.0.1 --port "$PORT_WEB1"
PROCESS_NAME=web2 start web2 "$PY" -m config.server --host 127.0.0.1 --port "$PORT_WEB2"
PROCESS_NAME=worker start worker "$PY" -m celery -A config --quiet worker --loglevel INFO --concurrency 1 \
  --hostname "$RUN_ID@%h" --without-gossip --without-mingle
PROCESS_NAME=beat start beat "$PY" -m celery -A config beat --loglevel INFO --schedule "$WORK/state/beat-schedule"
wait_http "http://127.0.0.1:$PORT_WEB1/readyz" 60
wait_http "http://127.0.0.1:$PORT_WEB2/readyz" 60
wait_line "$WORK/logs/worker.log" "ready." 60

# --- nginx ------------------------------------------------------------------------------------------------
say "nginx (TLS, self-signed for localhost) on $PORT_HTTPS"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" 2>/dev/null
USER_LINE=""; [[ $(id -u) -eq 0 ]] && USER_LINE="user $(id -un) $(id -gn);"  # workers as this user, not nobody
tls_server() {  # port, upstream
  cat <<EOF
    server {
        listen 127.0.0.1:$1 ssl http2;
        server_name localhost;
        ssl_certificate $WORK/tls/cert.pem;
        ssl_certificate_key $WORK/tls/key.pem;
        client_max_body_size 8m;
        location /static/ {
            alias $WORK/state/staticfiles/;
            expires 7d;
        }
        set \$platform_upstream $2;
        include $ROOT/deploy/nginx/platform-locations.conf;
    }
EOF
}
cat >"$WORK/nginx/nginx.conf" <<EOF
$USER_LINE
worker_processes 1;
pid $NGINX_PID_FILE;
error_log $WORK/nginx/error.log warn;
events { worker_connections 512; }
http {
    include /etc/nginx/mime.types;
    access_log $WORK/nginx/access.log;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    upstream platform {
        least_conn;
        server 127.0.0.1:$PORT_WEB1 max_fails=1 fail_timeout=10s;
        server 127.0.0.1:$PORT_WEB2 max_fails=1 fail_timeout=10s;
        keepalive 16;
    }
    # one per process, so the check can choose where a request lands
    upstream web1 { server 127.0.0.1:$PORT_WEB1; keepalive 4; }
    upstream web2 { server 127.0.0.1:$PORT_WEB2; keepalive 4; }
$(tls_server "$PORT_HTTPS" platform)
$(tls_server "$PORT_PIN1" web1)
$(tls_server "$PORT_PIN2" web2)
}
EOF
"$NGINX" -t -q -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log"
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log"
wait_http "https://localhost:$PORT_HTTPS/healthz" 20

# --- the end-to-end check --------------------------------------------------------------------------------
say "end-to-end check through nginx over https"
"$PY" deploy/smoke_check.py check --keys "$WORK/keys.json" --cacert "$WORK/tls/cert.pem" \
  --base "https://localhost:$PORT_HTTPS" --web1 "https://localhost:$PORT_PIN1" --web2 "https://localhost:$PORT_PIN2" \
  --local1 "http://127.0.0.1:$PORT_WEB1" --local2 "http://127.0.0.1:$PORT_WEB2" --metrics-token "$METRICS_TOKEN" \
  --sim "http://127.0.0.1:$PORT_SIM"

STATIC_CODE="$(curl -s --cacert "$WORK/tls/cert.pem" -o /dev/null -w '%{http_code} %{content_type}' "https://localhost:$PORT_HTTPS/static/css/console.css")"
[[ "$STATIC_CODE" == "200 text/css" ]] || fail "static file through nginx: $STATIC_CODE"
echo "  ok  static files served by nginx ($STATIC_CODE)"
wait_line "$WORK/logs/worker.log" "nodes.tasks.check_node_health" 20
grep -q '"succeeded' "$WORK/logs/worker.log" || grep -q 'succeeded in' "$WORK/logs/worker.log" \
  || fail "no task succeeded on the worker"
echo "  ok  beat's schedule reaches the worker (check_node_health ran there)"
for name in web1 web2 worker; do
  "$PY" - "$WORK/logs/$name.log" "$name" <<'EOF' || fail "$name's log is not JSON lines"
import json, re, sys
name = sys.argv[2]
lines = [l for l in open(sys.argv[1]) if l.strip()]
records = [json.loads(l) for l in lines if l.startswith("{")]  # a line that looks like JSON must be JSON
assert records and all(r["process"] == name for r in records), name
plain = [l for l in lines if not l.startswith("{")]
if name.startswith("web"):
    assert not plain, plain[:3]  # nothing but JSON
    access = [r for r in records if r["logger"] == "platform.access"]
    assert access and all({"request_id", "route", "status", "latency_ms"} <= set(r) for r in access)
else:  # the worker: Python warnings and celery's own prints (not log records) may be plain text
    assert not [l for l in plain if re.match(r"\[\d{4}-\d\d-\d\d", l)], "celery log lines in its own format"
    assert any("succeeded" in r["message"] for r in records)
EOF
done
KEY="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["key"])' "$WORK/keys.json")"
! grep -qF "$KEY" "$WORK"/logs/*.log "$WORK"/nginx/*.log || fail "an API key is in a log"
echo "  ok  web and worker logs are JSON lines (access lines with request_id, route, status, latency); no key in any log"

# --- graceful stop ------------------------------------------------------------------------------------
say "graceful stop"
"$PY" deploy/smoke_check.py drain --keys "$WORK/keys.json" --cacert "$WORK/tls/cert.pem" \
  --base "https://localhost:$PORT_HTTPS" --web1 "https://localhost:$PORT_PIN1" --local1 "http://127.0.0.1:$PORT_WEB1" \
  --sim "http://127.0.0.1:$PORT_SIM" --web1-pid "$PID_web1"
kill -QUIT "$(cat "$NGINX_PID_FILE")"
for name in web1 web2 worker beat sim; do
  pid_var="PID_$name"; pid="${!pid_var}"
  kill -TERM "$pid" 2>/dev/null || true  # web1 has already drained and exited
  deadline=$((SECONDS + 40))
  while kill -0 "$pid" 2>/dev/null; do
    (( SECONDS < deadline )) || fail "$name did not stop within 40 s of SIGTERM"
    sleep 0.2
  done
  wait "$pid" 2>/dev/null || true
  echo "  ok  $name stopped"
done
for name in web1 web2; do
  grep -q "Application shutdown complete" "$WORK/logs/$name.log" || fail "$name did not shut down cleanly"
done
grep -qi "warm shutdown" "$WORK/logs/worker.log" || fail "the worker did not shut down warm"
echo "  ok  web processes drained and shut down cleanly, the worker warm"
STATUS=0
