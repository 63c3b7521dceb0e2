#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback for the test-suite and print
# the SQLAlchemy URL to use.  Installs Debian's postgresql when missing.
set -euo pipefail
PORT="${PVREG_PG_PORT:-54329}"
PGDATA_DIR="${PVREG_PG_DIR:-/tmp/pvreg-pg}"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then echo "postgresql is not installed and we are not root" >&2; exit 1; fi
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
BIN="$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n1)")"
RUN_AS=()
if [ "$(id -u)" -eq 0 ]; then RUN_AS=(runuser -u postgres --); fi
if [ -f "$PGDATA_DIR/postmaster.pid" ] && "${RUN_AS[@]}" "$BIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; then
  echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
  exit 0
fi
rm -rf "$PGDATA_DIR"
mkdir -p "$PGDATA_DIR"
[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$PGDATA_DIR"
"${RUN_AS[@]}" "$BIN/initdb" -D "$PGDATA_DIR" -A trust -U postgres >/dev/null
"${RUN_AS[@]}" "$BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGDATA_DIR/server.log" -w \
  -o "-p $PORT -k $PGDATA_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null
echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
