#!/usr/bin/env bash
# Side-by-side benchmark of the storage backends under one load generator, in one run:
# echo req/s at 32 connections for one `asap serve` on SQLite, one on PostgreSQL, and two
# replicas on the same PostgreSQL database (wrk's threads round-robin over both ports).
# Every request carries a unique envelope id (bench/unique_send.lua): every one runs the
# skill and is claimed in the shared replay state, none is a dedup hit.
#
# Usage: bench/compare_pg.sh
# Env:   DURATION (s, default 10), CONNS (default 32), THREADS (wrk threads, default 2)
#        ASAP_TEST_POSTGRES_URL  a PostgreSQL to use (default: a throwaway cluster started
#                                and stopped by .ci/postgres.sh)
#        CARGO_TARGET_DIR        where cargo builds (default target)
#        BENCH_PORT              first of four consecutive loopback ports (default 18200)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
BIN=$TARGET/release/asap
PORT=${BENCH_PORT:-18200}
DURATION=${DURATION:-10} CONNS=${CONNS:-32} THREADS=${THREADS:-2}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; } >&2
cargo build --release -p asap-tokio --features postgres --bin asap >&2

TMP=$(mktemp -d)
PIDS=()
PG_DIR=
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "$PG_DIR" ] && .ci/postgres.sh stop "$PG_DIR" >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${ASAP_TEST_POSTGRES_URL:-}" ]; then
  eval "$(.ci/postgres.sh start)"
  PG_DIR=${ASAP_TEST_POSTGRES_DIR:-}
fi
PG=$ASAP_TEST_POSTGRES_URL

serve() { # name port args...
  local name=$1 port=$2
  shift 2
  "$BIN" serve --bind "127.0.0.1:$port" --rate-limit none --workers 1 "$@" >"$TMP/$name.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 600); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/.well-known/asap/manifest.json" 2>/dev/null && return
    sleep 0.1
  done
  echo "compare_pg.sh: $name on port $port did not come up; its log:" >&2
  cat "$TMP/$name.log" >&2
  exit 1
}

serve sqlite $PORT --db "$TMP/bench.db"
serve pg-1 $((PORT + 1)) --db "$PG"
serve pg-2a $((PORT + 2)) --db "$PG"
serve pg-2b $((PORT + 3)) --db "$PG"

run() { # name targets
  local name=$1 targets=$2 first=${2%%,*}
  ASAP_BENCH_TARGETS=$targets wrk -t"$THREADS" -c"$CONNS" -d2s -s bench/unique_send.lua "http://$first" >/dev/null 2>&1 || true
  local line
  line=$(ASAP_BENCH_TARGETS=$targets wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" -s bench/unique_send.lua "http://$first" | sed -n 's/^BENCH //p')
  echo "{\"server\":\"$name\",\"conns\":$CONNS,\"send\":$line}" | tee -a "$TMP/rows"
}
run sqlite-1-replica "127.0.0.1:$PORT"
run postgres-1-replica "127.0.0.1:$((PORT + 1))"
run postgres-2-replicas "127.0.0.1:$((PORT + 2)),127.0.0.1:$((PORT + 3))"

python3 - "$TMP/rows" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
base = rows[0]
for r in rows[1:]:
    print(json.dumps({"ratio": f'{r["server"]}/{base["server"]}', "conns": r["conns"],
                      "rps_x": round(r["send"]["rps"] / max(base["send"]["rps"], 1e-9), 2)}))
PY
