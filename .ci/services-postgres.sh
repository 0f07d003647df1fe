#!/usr/bin/env bash
# Start PostgreSQL on loopback and create the database + user that tests/sweep/test_sweep.py uses.
# Idempotent: safe to run again while the server is up. Prints the URL on its last line, e.g.
#   export LORACLF_TEST_POSTGRES_URL=$(.ci/services-postgres.sh | tail -n1)
# Needs Debian's postgresql package (.ci/apt-sweep.txt) and root (or the postgres user via sudo).
set -euo pipefail

DB_USER="${LORACLF_PG_USER:-loraclf}"
DB_PASS="${LORACLF_PG_PASSWORD:-loraclf}"
DB_NAME="${LORACLF_PG_DB:-loraclf_test}"
PORT="${LORACLF_PG_PORT:-5432}"

if ! command -v pg_lsclusters >/dev/null; then
  echo "postgresql is not installed: apt-get install -y postgresql" >&2
  exit 1
fi

as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    su postgres -s /bin/sh -c "$*"
  else
    sudo -u postgres sh -c "$*"
  fi
}

# newest installed server version, e.g. 15
VERSION="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -q "^${VERSION} main$"; then
  pg_createcluster "$VERSION" main --port "$PORT" >/dev/null
fi
if ! pg_lsclusters -h | awk -v v="$VERSION" '$1==v && $2=="main" {print $4}' | grep -q online; then
  # loopback only: nothing outside this machine can reach the test server
  pg_ctlcluster "$VERSION" main start -o "-c listen_addresses=127.0.0.1 -p ${PORT}" >/dev/null
fi
for _ in $(seq 1 30); do
  as_postgres "psql -p ${PORT} -Atqc 'select 1'" >/dev/null 2>&1 && break
  sleep 1
done

as_postgres "psql -p ${PORT} -v ON_ERROR_STOP=1 -Atq" <<SQL >/dev/null
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '${DB_USER}') THEN
    CREATE ROLE ${DB_USER} LOGIN PASSWORD '${DB_PASS}';
  END IF;
END \$\$;
SQL
if ! as_postgres "psql -p ${PORT} -Atqc \"select 1 from pg_database where datname='${DB_NAME}'\"" | grep -q 1; then
  as_postgres "createdb -p ${PORT} -O ${DB_USER} ${DB_NAME}"
fi

echo "postgresql://${DB_USER}:${DB_PASS}@127.0.0.1:${PORT}/${DB_NAME}"
