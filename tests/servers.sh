# Shared by tests/run.sh and tests/bench/bench.sh: installs (when missing), starts and stops the
# backing servers, RabbitMQ and the MongoDB-wire-compatible secantusdb server. Source it, then
# call ensure_rabbitmq and ensure_secantus; what they started is stopped on exit.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${CHAT_CACHE_DIR:-$HOME/.cache/chat-backend}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
SECANTUS_VERSION="0.7.0b3"
VENV="$CACHE/venv"
RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/chat-run.XXXXXX")"
LOG_TAG="${LOG_TAG:-run.sh}"
mkdir -p "$CACHE"

log() { printf '\033[1m[%s]\033[0m %s\n' "$LOG_TAG" "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
wait_port() { # host port seconds what
  local deadline=$((SECONDS + $3))
  until port_open "$1" "$2"; do
    if [ "$SECONDS" -ge "$deadline" ]; then log "$4 did not start listening on $1:$2 within $3 s"; return 1; fi
    sleep 0.2
  done
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

STARTED_RABBITMQ=0
MONGO_PID=""
EXTRA_PIDS=()
cleanup() {
  local status=$?
  for pid in "${EXTRA_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
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
  # `-detached` returns before the node registers, and `rabbitmqctl await_startup` fails at once
  # on a node that has not registered yet: wait for the AMQP listener, which opens last.
  if ! wait_port 127.0.0.1 5672 120 RabbitMQ; then
    tail -n 40 /var/log/rabbitmq/*.log >&2 2>/dev/null || true
    return 1
  fi
}

# Starts secantus on a free port with throwaway storage; exports TEST_MONGODB_URL.
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
  port="$(free_port)"
  log "starting the MongoDB-compatible server on 127.0.0.1:$port (throwaway storage, --standalone)"
  (cd "$RUN_DIR" && exec "$VENV/bin/python" -m secantus --host 127.0.0.1 --port "$port" \
      --storage-path :memory: --standalone --log-level WARNING) >"$RUN_DIR/secantus.log" 2>&1 &
  MONGO_PID=$!
  if ! wait_port 127.0.0.1 "$port" 60 "secantus"; then cat "$RUN_DIR/secantus.log" >&2; exit 1; fi
  export TEST_MONGODB_URL="mongodb://127.0.0.1:$port"
}
