#!/usr/bin/env bash
# Side-by-side WebSocket benchmark (/asap/ws echo round trips): the do-nothing
# ceiling, the Python reference and `asap serve` (in-memory and SQLite state),
# each driven by asap-tokio/examples/ws_bench.rs in one run.
#
# Usage: bench/compare_ws.sh          (env SECONDS_EACH=10, CONNS="1 16")
# Env:   ASAP_BENCH_WORKERS  asap serve --workers (default 1)
#        ASAP_SHARED_DIR     the shared kit (default ../shared); interop/ has setup.sh, ref_server.py
#        CARGO_TARGET_DIR    where cargo builds (default target)
#        BENCH_PORT          first of four consecutive loopback ports (default 18200)
#
# The per-connection WebSocket message limit is lifted on every server
# (`--ws-rate-limit 0`; the reference's own default is 10/s too).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SHARED=$(cd "${ASAP_SHARED_DIR:-../shared}" && pwd)
KIT=$SHARED/interop
TARGET=${CARGO_TARGET_DIR:-target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
BIN=$TARGET/release
PORT=${BENCH_PORT:-18200}
WORKERS=${ASAP_BENCH_WORKERS:-1}
SECS=${SECONDS_EACH:-10}
CONNS=${CONNS:-"1 16"}
P_NULL=$PORT P_REF=$((PORT + 1)) P_MEM=$((PORT + 2)) P_SQL=$((PORT + 3))

cargo build --release -p asap-tokio --bin asap --example ws_bench --example ws_null_responder >&2
PY="$("$KIT/setup.sh")/bin/python"

TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A server left on one of the ports would be measured instead of ours: refuse to start.
for port in $P_NULL $P_REF $P_MEM $P_SQL; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "$(basename "$0"): port $port is already in use on 127.0.0.1; stop that server or set BENCH_PORT" >&2
    exit 1
  fi
done

"$BIN/examples/ws_null_responder" "127.0.0.1:$P_NULL" 2>"$TMP/null.log" &
PIDS+=($!)
"$PY" "$KIT/ref_server.py" --port "$P_REF" --ws-rate-limit 0 >"$TMP/reference.log" 2>&1 &
PIDS+=($!)
ASAP_STORAGE_BACKEND=memory "$BIN/asap" serve --bind "127.0.0.1:$P_MEM" --rate-limit none \
  --ws-rate-limit 0 --workers "$WORKERS" >"$TMP/memory.log" 2>&1 &
PIDS+=($!)
"$BIN/asap" serve --bind "127.0.0.1:$P_SQL" --rate-limit none --ws-rate-limit 0 \
  --workers "$WORKERS" --db "$TMP/bench.db" >"$TMP/sqlite.log" 2>&1 &
PIDS+=($!)

for port in $P_NULL $P_REF $P_MEM $P_SQL; do
  for _ in $(seq 1 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
done

printf '%-16s %6s %12s %9s %9s %7s\n' server conns round_trips/s p50_ms p99_ms errors
for conns in $CONNS; do
  for entry in null:$P_NULL:urn:asap:agent:null reference:$P_REF:urn:asap:agent:ref-echo \
               asap-rs-memory:$P_MEM:urn:asap:agent:asap-rs-echo asap-rs-sqlite:$P_SQL:urn:asap:agent:asap-rs-echo; do
    IFS=: read -r name port r1 r2 r3 r4 <<<"$entry"
    out=$("$BIN/examples/ws_bench" "ws://127.0.0.1:$port" --conns "$conns" --seconds "$SECS" \
      --recipient "$r1:$r2:$r3:$r4")
    rps=$(sed -E 's/.*"per_second":([0-9.]+).*/\1/' <<<"$out")
    p50=$(sed -E 's/.*"p50_ms":([0-9.]+).*/\1/' <<<"$out")
    p99=$(sed -E 's/.*"p99_ms":([0-9.]+).*/\1/' <<<"$out")
    err=$(sed -E 's/.*"errors":([0-9]+).*/\1/' <<<"$out")
    printf '%-16s %6s %12s %9s %9s %7s\n' "$name" "$conns" "$rps" "$p50" "$p99" "$err"
  done
done
