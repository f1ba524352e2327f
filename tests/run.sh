#!/usr/bin/env bash
# The project's test command. On a fresh machine it installs and starts what the tests need
# (RabbitMQ from Debian's packages, the MongoDB-wire-compatible secantusdb server in a Python venv),
# runs rustfmt, clippy and the whole workspace's tests against them, and stops what it started.
#
#   bash tests/run.sh                 # everything
#   bash tests/run.sh -p auth-service # extra arguments go to `cargo test`
#   SKIP_LINT=1 bash tests/run.sh     # tests only
#
# Environment: CHAT_CACHE_DIR (default ~/.cache/chat-backend) holds the venv and, unless
# CARGO_TARGET_DIR is set, cargo's target directory, so repeated runs are incremental.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${CHAT_CACHE_DIR:-$HOME/.cache/chat-backend}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
SECANTUS_VERSION="0.7.0b3"
VENV="$CACHE/venv"
RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/chat-tests.XXXXXX")"
mkdir -p "$CACHE"

log() { printf '\033[1m[run.sh]\033[0m %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
wait_port() { # host port seconds what
  local deadline=$((SECONDS + $3))
  until port_open "$1" "$2"; do
    if [ "$SECONDS" -ge "$deadline" ]; then log "$4 did not start listening on $1:$2 within $3 s"; return 1; fi
    sleep 0.2
  done
}

STARTED_RABBITMQ=0
MONGO_PID=""
cleanup() {
  local status=$?
  if [ -n "$MONGO_PID" ]; then kill "$MONGO_PID" 2>/dev/null || true; wait "$MONGO_PID" 2>/dev/null || true; fi
  if [ "$STARTED_RABBITMQ" = 1 ]; then log "stopping the RabbitMQ we started"; as_root rabbitmqctl stop >/dev/null 2>&1 || true; fi
  rm -rf "$RUN_DIR"
  exit "$status"
}
trap cleanup EXIT INT TERM

ensure_rabbitmq() {
  if port_open 127.0.0.1 5672; then log "RabbitMQ already running on 127.0.0.1:5672"; return; fi
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    log "installing rabbitmq-server"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq rabbitmq-server >/dev/null
  fi
  log "starting RabbitMQ"
  as_root rabbitmq-server -detached
  STARTED_RABBITMQ=1
  as_root rabbitmqctl await_startup --timeout 120 >/dev/null
  wait_port 127.0.0.1 5672 60 RabbitMQ
}

ensure_secantus() {
  if ! "$VENV/bin/python" -c "import secantus" >/dev/null 2>&1 ||
     [ "$("$VENV/bin/pip" show secantusdb 2>/dev/null | sed -n 's/^Version: //p')" != "$SECANTUS_VERSION" ]; then
    log "creating $VENV with secantusdb==$SECANTUS_VERSION"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
      as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install -q --disable-pip-version-check "secantusdb==$SECANTUS_VERSION"
  fi
  local port
  port="$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  log "starting the MongoDB-compatible server on 127.0.0.1:$port (throwaway storage, --standalone)"
  (cd "$RUN_DIR" && exec "$VENV/bin/python" -m secantus --host 127.0.0.1 --port "$port" \
      --storage-path :memory: --standalone --log-level WARNING) >"$RUN_DIR/secantus.log" 2>&1 &
  MONGO_PID=$!
  if ! wait_port 127.0.0.1 "$port" 60 "secantus"; then cat "$RUN_DIR/secantus.log" >&2; exit 1; fi
  export TEST_MONGODB_URL="mongodb://127.0.0.1:$port"
}

cd "$ROOT"
ensure_rabbitmq
ensure_secantus
export TEST_RABBITMQ_URL="amqp://guest:guest@127.0.0.1:5672/%2f"

if [ "${SKIP_LINT:-0}" != 1 ]; then
  log "cargo fmt --check"
  cargo fmt --all --check
  log "cargo clippy"
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi
log "cargo test (TEST_MONGODB_URL=$TEST_MONGODB_URL)"
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$RUN_DIR/test.log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$RUN_DIR/test.log"
exit "$status"
