#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the postgres store tests, on 127.0.0.1 only.
#
#   eval "$(.ci/postgres.sh start)"       # prints export lines: ASAP_TEST_POSTGRES_URL, ASAP_TEST_POSTGRES_DIR
#   .ci/postgres.sh stop "$ASAP_TEST_POSTGRES_DIR"   # stops it and removes the directory
#
# Installs Debian's postgresql package if no initdb is found (PATH, then
# /usr/lib/postgresql/*/bin). The cluster lives in a temporary directory, runs
# as the `postgres` user when started by root (initdb and pg_ctl refuse root),
# listens on a free loopback port, and has durability off (fsync=off): it is
# thrown away after the tests. Everything but the export lines goes to stderr.
set -euo pipefail

log() { printf 'postgres.sh: %s\n' "$*" >&2; }

find_bindir() {
  local d
  if command -v initdb >/dev/null 2>&1; then
    d=$(dirname "$(readlink -f "$(command -v initdb)")")
    [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  fi
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  return 1
}

install_postgres() {
  [ "$(id -u)" = 0 ] || { log "initdb not found and not root: install PostgreSQL (apt-get install postgresql)"; exit 1; }
  log "initdb not found: installing Debian's postgresql package"
  # No default cluster: this script makes its own.
  mkdir -p /etc/postgresql-common
  [ -e /etc/postgresql-common/createcluster.conf ] ||
    echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.conf
  export DEBIAN_FRONTEND=noninteractive
  if ! timeout 600 apt-get install -y -q --no-install-recommends postgresql >&2; then
    timeout 300 apt-get update -q >&2
    timeout 600 apt-get install -y -q --no-install-recommends postgresql >&2
  fi
}

# Runs a command as the cluster's owner: `postgres` when we are root.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  local port i
  for i in $(seq 1 50); do
    port=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    # Nothing answering on it: free (a race with another process is retried by the caller).
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  return 1
}

start() {
  local bin dir port password attempt
  bin=$(find_bindir) || { install_postgres; bin=$(find_bindir); } ||
    { log "no initdb after installing postgresql"; exit 1; }
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/false postgres
  fi
  dir=$(mktemp -d "${TMPDIR:-/tmp}/asap-pg.XXXXXX")
  chmod 755 "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
  password=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
  printf '%s\n' "$password" >"$dir/pwfile"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir/pwfile"; fi
  chmod 600 "$dir/pwfile"
  # Local socket: trust (this script's own setup); TCP: password (SCRAM), as deployments do.
  as_owner "$bin/initdb" -D "$dir/data" -U postgres --pwfile="$dir/pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; exit 1; }
  for attempt in 1 2 3 4 5; do
    port=$(free_port) || { log "no free loopback port"; exit 1; }
    if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o \
      "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
      start >&2; then
      break
    fi
    log "start on port $port failed (attempt $attempt):"
    tail -5 "$dir/server.log" >&2 || true
    port=
  done
  [ -n "$port" ] || { log "PostgreSQL did not start"; exit 1; }
  # The test role may create the per-test databases; it owns its own database.
  as_owner "$bin/psql" -q -h "$dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -c "CREATE ROLE asap LOGIN CREATEDB PASSWORD '$password'" \
    -c "CREATE DATABASE asap OWNER asap" >&2
  rm -f "$dir/pwfile"
  log "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port, data in $dir (stop: .ci/postgres.sh stop $dir)"
  echo "export ASAP_TEST_POSTGRES_URL=postgres://asap:$password@127.0.0.1:$port/asap"
  echo "export ASAP_TEST_POSTGRES_DIR=$dir"
}

stop() {
  local dir=${1:-} bin
  [ -n "$dir" ] || { log "usage: $0 stop DIR"; exit 2; }
  # Only a directory this script made: it holds a cluster and is named so.
  case "$(basename "$dir")" in asap-pg.*) ;; *) log "$dir is not a directory made by $0"; exit 2 ;; esac
  [ -f "$dir/data/PG_VERSION" ] || { log "no cluster in $dir"; exit 2; }
  bin=$(find_bindir) || { log "no pg_ctl found"; exit 1; }
  as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >&2 || log "pg_ctl stop failed (already stopped?)"
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:-}" ;;
  *) echo "usage: $0 start | stop DIR" >&2; exit 2 ;;
esac
