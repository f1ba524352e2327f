#!/usr/bin/env bash
# The standard benchmark suite on this machine. Starts RabbitMQ and the MongoDB-compatible server
# (as the tests do), builds and starts the three services as the images ship them (dist profile), runs chat-bench's
# standard runs against them and then against the standalone chat-stack, and prints one summary
# table next to the targets. JSON results and SVG plots go to $BENCH_OUT (default target/bench).
#
#   bash tests/bench/bench.sh           # the full suite (about 6 minutes)
#   QUICK=1 bash tests/bench/bench.sh   # shorter runs, for a smoke check
set -euo pipefail

LOG_TAG=bench.sh
source "$(dirname "${BASH_SOURCE[0]}")/../servers.sh"
cd "$ROOT"
OUT="${BENCH_OUT:-$ROOT/target/bench}"
mkdir -p "$OUT"
QUICK="${QUICK:-0}"
long() { if [ "$QUICK" = 1 ]; then echo "$2"; else echo "$1"; fi; }

ensure_rabbitmq
ensure_secantus
log "building the binaries as the images ship them (--profile dist)"
cargo build --profile dist --locked --bin auth-service --bin chat-service --bin websocket-service --bin chat-stack --bin chat-bench
BIN="$CARGO_TARGET_DIR/dist"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# The defaults protect a public deployment; a benchmark sends thousands of messages a second from
# a few users, registers its users from one address and opens 10,000 sockets for one user
# (chat_common::testing::LOAD_TEST_LIMITS, which the tests use, holds the same).
LIMITS=(SEND_RATE_PER_USER=100000 SEND_BURST=100000 REGISTER_MAX_PER_ADDRESS=0 WS_MAX_SOCKETS_PER_USER=20000)
SECRET="bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
EXCHANGE="bench_exchange_$$"
AUTH_PORT=$(free_port); CHAT_PORT=$(free_port); WS_PORT=$(free_port)
start() { # name port env...
  local name=$1 port=$2; shift 2
  env "${LIMITS[@]}" "$@" PORT="$port" JWT_SECRET="$SECRET" RUST_LOG=warn "$BIN/$name" >"$RUN_DIR/$name.log" 2>&1 &
  EXTRA_PIDS+=($!)
  wait_port 127.0.0.1 "$port" 30 "$name"
}
start auth-service "$AUTH_PORT" DATABASE_URL="$TEST_MONGODB_URL/bench_auth"
start chat-service "$CHAT_PORT" DATABASE_URL="$TEST_MONGODB_URL/bench_chat" \
  RABBITMQ_URL=amqp://127.0.0.1:5672 AUTH_SERVICE_URL="http://127.0.0.1:$AUTH_PORT" EXCHANGE_NAME="$EXCHANGE"
start websocket-service "$WS_PORT" RABBITMQ_URL=amqp://127.0.0.1:5672 \
  CHAT_SERVICE_URL="http://127.0.0.1:$CHAT_PORT" EXCHANGE_NAME="$EXCHANGE"
sleep 1

TARGET=(--auth "http://127.0.0.1:$AUTH_PORT" --chat "http://127.0.0.1:$CHAT_PORT" --ws "ws://127.0.0.1:$WS_PORT")
bench() { # name args...
  local name=$1; shift
  log "chat-bench $*"
  "$BIN/chat-bench" --json "$@" | tee "$OUT/$name.json" >&2
}

bench insert insert --mongo "$TEST_MONGODB_URL" --duration "$(long 10 3)"
bench login login "${TARGET[@]}" --requests "$(long 400 40)"
bench e2e-500 e2e "${TARGET[@]}" --rate 500 --duration "$(long 30 5)" --plot "$OUT/e2e-500.svg"
bench e2e-1500 e2e "${TARGET[@]}" --rate 1500 --duration "$(long 30 5)" --plot "$OUT/e2e-1500.svg"
# The highest rate held with delivery p99 <= 100 ms, 0 lost.
best=0
for rate in 1000 2000 2500 3000 3500; do
  bench "e2e-$rate-search" e2e "${TARGET[@]}" --rate "$rate" --duration "$(long 10 3)" --senders 64
  if python3 - "$OUT/e2e-$rate-search.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
ok = r["lost"] == 0 and r["errors"] == 0 and r["delivery_latency"]["p99_ms"] <= 100 and r["achieved_rate"] >= 0.97 * r["target_rate"]
sys.exit(0 if ok else 1)
PY
  then best=$rate; else break; fi
done
echo "{\"best_rate\": $best}" > "$OUT/e2e-best.json"
bench fanout fanout "${TARGET[@]}" --recipients "$(long 1000 100)" --duration "$(long 20 5)" --exchange "$EXCHANGE" --plot "$OUT/fanout.svg"
# The same with connected senders: each event also goes to its sender's socket (two deliveries).
bench fanout-echo fanout "${TARGET[@]}" --recipients "$(long 1000 100)" --duration "$(long 20 5)" --exchange "$EXCHANGE" --echo
bench connections connections "${TARGET[@]}" --count "$(long 10000 1000)"
# History on the MongoDB-compatible test server, which sorts a whole index range before it
# limits (MongoDB stops after the page): a short conversation, reported, not held to a target.
bench history-testserver history "${TARGET[@]}" --messages "$(long 2000 500)" --queries "$(long 200 50)"
# One user's conversation list: 1,000 conversations, 100,000 messages (the test server bounds it:
# it sorts a whole index range before it limits).
bench conversations-testserver conversations "${TARGET[@]}" --conversations "$(long 1000 100)" --messages "$(long 100000 5000)" --queries "$(long 200 50)"

for pid in "${EXTRA_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
EXTRA_PIDS=()
log "standalone chat-stack (embedded store, in-process fan-out)"
DATA=$(mktemp -d "$RUN_DIR/stack.XXXX")
env "${LIMITS[@]}" DATA_DIR="$DATA" AUTH_PORT="$AUTH_PORT" CHAT_PORT="$CHAT_PORT" WS_PORT="$WS_PORT" BIND_ADDR=127.0.0.1 RUST_LOG=warn \
  "$BIN/chat-stack" >"$RUN_DIR/chat-stack.log" 2>&1 &
EXTRA_PIDS+=($!)
wait_port 127.0.0.1 "$WS_PORT" 30 chat-stack
bench stack-e2e-5000 e2e "${TARGET[@]}" --rate 5000 --duration "$(long 30 5)" --senders 128 --plot "$OUT/stack-e2e-5000.svg"
# The history target (latest page of 100,000 within 10 ms p99) on the embedded store, whose index
# scans stop after the page as MongoDB's do.
bench history history "${TARGET[@]}" --messages "$(long 100000 5000)" --queries "$(long 500 100)"
bench conversations conversations "${TARGET[@]}" --conversations "$(long 1000 100)" --messages "$(long 100000 5000)" --queries "$(long 200 50)"

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def r(name):
    with open(os.path.join(out, name + ".json")) as f:
        return json.load(f)
rows = []
def row(what, target, measured, ok):
    rows.append((what, target, measured, "yes" if ok else "NO"))
ins = r("insert"); login = r("login")
for rate, p99 in ((500, 25), (1500, 50)):
    e = r(f"e2e-{rate}")
    d = e["delivery_latency"]
    row(f"e2e {rate} msgs/s (microservices)", f"0 lost, delivery p99 <= {p99} ms",
        f'{e["achieved_rate"]:.0f}/s, lost {e["lost"]}, p50 {d["p50_ms"]} / p99 {d["p99_ms"]} ms',
        e["lost"] == 0 and d["p99_ms"] <= p99 and e["achieved_rate"] >= 0.97 * rate)
best = r("e2e-best")["best_rate"]
row("highest rate with p99 <= 100 ms", "report vs raw inserts", f'{best}/s vs {ins["inserts_per_sec"]:.0f} inserts/s ({best / max(ins["inserts_per_sec"], 1):.2f}x)', best > 0)
s = r("stack-e2e-5000"); d = s["delivery_latency"]
row("e2e 5000 msgs/s (standalone)", "0 lost, p99 <= 20 ms", f'{s["achieved_rate"]:.0f}/s, lost {s["lost"]}, p99 {d["p99_ms"]} ms',
    s["lost"] == 0 and d["p99_ms"] <= 20 and s["achieved_rate"] >= 0.97 * 5000)
for name, what in (("fanout", "1 socket per event"), ("fanout-echo", "2 sockets per event")):
    f = r(name); d = f["delivery_latency"]
    row(f'fanout, {f["recipients"]} recipients, {what}', ">= 50000 deliveries/s, p99 <= 20 ms",
        f'{f["deliveries_per_sec"]:.0f}/s, p99 {d["p99_ms"]} ms; replica {f["replica_cpu_cores"]} cores, {f["replica_cpu_us_per_delivery"]} us/delivery',
        f["deliveries_per_sec"] >= 50000 and d["p99_ms"] <= 20)
c = r("connections")
row(f'connections, {c["sockets"]} idle sockets', "<= 4 KiB per socket", f'{c["kib_per_socket"]} KiB', c["kib_per_socket"] <= 4)
h = r("history")
row(f'history, latest page of {h["messages"]} (embedded store)', "p99 <= 10 ms", f'p50 {h["latest_page"]["p50_ms"]} / p99 {h["latest_page"]["p99_ms"]} ms (after: p99 {h["after_catch_up"]["p99_ms"]} ms)',
    h["latest_page"]["p99_ms"] <= 10)
h = r("history-testserver")
row(f'history, latest page of {h["messages"]} (test server: sorts before limiting)', "(report)", f'p50 {h["latest_page"]["p50_ms"]} / p99 {h["latest_page"]["p99_ms"]} ms (after: p99 {h["after_catch_up"]["p99_ms"]} ms)', True)
for name, where in (("conversations", "embedded store"), ("conversations-testserver", "test server")):
    c = r(name)
    row(f'conversations page, {c["conversations"]} conversations / {c["messages"]} messages ({where})', "a few queries (report)",
        f'first look {c["first_look_ms"]} ms; p50 {c["first_page"]["p50_ms"]} / p99 {c["first_page"]["p99_ms"]} ms; deep p99 {c["deep_page"]["p99_ms"]} ms; after a new message p99 {c["after_new_message"]["p99_ms"]} ms', True)
row("login", "(no target)", f'{login["logins_per_sec"]:.0f}/s, p50 {login["latency"]["p50_ms"]} / p99 {login["latency"]["p99_ms"]} ms', True)
w = [max(len(x[i]) for x in rows + [("benchmark", "target", "measured", "met")]) for i in range(4)]
for line in [("benchmark", "target", "measured", "met")] + rows:
    print("  ".join(v.ljust(w[i]) for i, v in enumerate(line)))
PY
