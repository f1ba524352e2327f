#!/usr/bin/env bash
# The project's test command. On a fresh machine it installs and starts what the tests need
# (RabbitMQ from Debian's packages, the MongoDB-wire-compatible secantusdb server in a Python venv,
# a current kube-apiserver and etcd built once from the Go module proxy: tests/k8s/build.sh;
# buildah, a stand-in distroless base and release binaries for the image tests; Debian's
# chromium and playwright-core for the web client's browser test),
# runs rustfmt, clippy and the whole workspace's tests against them, and stops what it started.
#
#   bash tests/run.sh                 # everything
#   bash tests/run.sh -p auth-service # extra arguments go to `cargo test`
#   SKIP_LINT=1 bash tests/run.sh     # tests only
#
# Environment: CHAT_CACHE_DIR (default ~/.cache/chat-backend) holds the venv and, unless
# CARGO_TARGET_DIR is set, cargo's target directory, so repeated runs are incremental.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/servers.sh"

cd "$ROOT"
ensure_rabbitmq
ensure_secantus
# The operator's tests need a real kube-apiserver; a run limited to other packages skips it.
if [ $# -eq 0 ] || [[ " $* " == *" chat-operator "* ]] || [[ " $* " != *" -p "* ]]; then
  ensure_kube_apiserver
fi
# e2e-tests' deployment checks: the images (buildah, a base image, release binaries), the
# compose file (dclint), the dashboard and alert rules (helm, promcheck).
if [ $# -eq 0 ] || [[ " $* " == *" e2e-tests "* ]] || [[ " $* " != *" -p "* ]]; then
  ensure_k8s_tools
  ensure_dclint
  ensure_images
  ensure_schemathesis
  ensure_browser
fi
export TEST_RABBITMQ_URL="amqp://guest:guest@127.0.0.1:5672/%2f"

if [ "${SKIP_LINT:-0}" != 1 ]; then
  log "cargo fmt --check"
  cargo fmt --all --check
  log "cargo clippy"
  cargo clippy --workspace --all-targets --locked -- -D warnings
  ensure_cargo_deny
  log "cargo deny check licenses bans sources"
  # The advisory database cannot be fetched on the CI machine: advisories are checked elsewhere.
  "$CARGO_DENY" check --hide-inclusion-graph licenses bans sources
fi
log "cargo test (TEST_MONGODB_URL=$TEST_MONGODB_URL)"
set +e
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$RUN_DIR/test.log"
status=${PIPESTATUS[0]}
if [ $# -eq 0 ]; then
  # The lean builds (no MongoDB or AMQP client, as `cargo run --release -p chat-stack` builds
  # them): the services' own tests with the embedded store and the in-process bus, and a server
  # variable refused naming the feature its build lacks.
  log "cargo test -p chat-service -p websocket-service --no-default-features"
  cargo test --locked --no-fail-fast -p chat-service -p websocket-service --no-default-features 2>&1 |
    tee -a "$RUN_DIR/test.log"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
set -e
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$RUN_DIR/test.log"
exit "$status"
