#!/usr/bin/env bash
# Side-by-side HTTP benchmark: the do-nothing ceiling, the Python reference and `asap serve`
# (in-memory and SQLite state), in one run of the shared kit's bench/run.sh.
#
# Usage: bench/compare.sh            (from anywhere; env DURATION, CONNS, THREADS go to run.sh)
# Env:   ASAP_BENCH_WORKERS  asap serve --workers (default 1)
#        ASAP_SHARED_DIR   the shared kit (default ../shared, relative to the repo root);
#                          its interop/ folder holds setup.sh, ref_server.py, bench/run.sh
#        CARGO_TARGET_DIR  where cargo builds (default target, relative to the repo root)
#        BENCH_PORT        first of four consecutive loopback ports (default 18100)
#
# Servers, all on 127.0.0.1, rate limiting off on all of them:
#   null            asap-tokio/examples/null_responder.rs: reads the body, answers a canned
#                   response, no protocol work (the loopback + HTTP ceiling; ratios are
#                   computed against it, it comes first)
#   reference       the Python reference echo agent (asap-protocol 1.1.0)
#   asap-rs-memory  asap serve, ASAP_STORAGE_BACKEND=memory (the reference's storage default)
#   asap-rs-sqlite  asap serve --db <tmp>/bench.db (default: every task persisted in SQLite)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SHARED=$(cd "${ASAP_SHARED_DIR:-../shared}" && pwd)
KIT=$SHARED/interop
TARGET=${CARGO_TARGET_DIR:-target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
BIN=$TARGET/release
PORT=${BENCH_PORT:-18100}
# One request thread, like the null responder and the reference: on a 2-core machine the load
# generator needs the other core. Set ASAP_BENCH_WORKERS to compare other thread counts.
WORKERS=${ASAP_BENCH_WORKERS:-1}
P_NULL=$PORT P_REF=$((PORT + 1)) P_MEM=$((PORT + 2)) P_SQL=$((PORT + 3))

cargo build --release -p asap-tokio --bin asap --example null_responder >&2
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

"$BIN/examples/null_responder" --bind "127.0.0.1:$P_NULL" 2>"$TMP/null.log" &
PIDS+=($!)
"$PY" "$KIT/ref_server.py" --port "$P_REF" >"$TMP/reference.log" 2>&1 &
PIDS+=($!)
ASAP_STORAGE_BACKEND=memory "$BIN/asap" serve --bind "127.0.0.1:$P_MEM" --rate-limit none --workers "$WORKERS" \
  >"$TMP/memory.log" 2>&1 &
PIDS+=($!)
"$BIN/asap" serve --bind "127.0.0.1:$P_SQL" --rate-limit none --workers "$WORKERS" --db "$TMP/bench.db" \
  >"$TMP/sqlite.log" 2>&1 &
PIDS+=($!)

# Wait (at most 60 s each) until every server answers its manifest.
for entry in null:$P_NULL reference:$P_REF memory:$P_MEM sqlite:$P_SQL; do
  name=${entry%%:*} port=${entry#*:}
  for _ in $(seq 600); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/.well-known/asap/manifest.json" 2>/dev/null && break
    sleep 0.1
  done
  curl -fsS -o /dev/null "http://127.0.0.1:$port/.well-known/asap/manifest.json" || {
    echo "compare.sh: $name on port $port did not come up; its log:" >&2
    cat "$TMP/$name.log" >&2
    exit 1
  }
done

"$KIT/bench/run.sh" \
  null="http://127.0.0.1:$P_NULL" \
  reference="http://127.0.0.1:$P_REF" \
  asap-rs-memory="http://127.0.0.1:$P_MEM" \
  asap-rs-sqlite="http://127.0.0.1:$P_SQL"
