#!/usr/bin/env bash
# Idempotent set-up shared by `make demo` and `make test`: apt packages, MariaDB and two throwaway
# local accounts (SELECT-only for exports, admin for seeding), the virtualenv with pinned packages,
# and a migrated Airflow metadata DB.
# A second run only checks and exits fast.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO_ROOT"
say() { printf '[bootstrap] %s\n' "$*"; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

# 1. System packages (only what is missing).
need=()
for pkg in pkg-config libmariadb-dev mariadb-server mariadb-client postgresql postgresql-client openssh-server openssh-client git python3-venv redis-server openssl chromium chromium-driver fonts-liberation; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# 2. MariaDB running, with the demo/test account.
mysql_root() { $SUDO mariadb --protocol=socket -uroot "$@" 2>/dev/null || mariadb -h127.0.0.1 -uroot "$@"; }
if ! mysql_root -e "SELECT 1" >/dev/null 2>&1; then
  say "starting MariaDB"
  $SUDO mkdir -p /run/mysqld && $SUDO chown mysql:mysql /run/mysqld 2>/dev/null || true
  if [ ! -d /var/lib/mysql/mysql ]; then $SUDO mariadb-install-db --user=mysql >/dev/null; fi
  $SUDO start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
  for _ in $(seq 1 60); do mysql_root -e "SELECT 1" >/dev/null 2>&1 && break; sleep 0.5; done
  mysql_root -e "SELECT 1" >/dev/null || { echo "MariaDB did not start" >&2; exit 1; }
fi
# The export account is SELECT-only on the raw schemas (the demo's, the tests' dsv_test_* and the
# benchmark's dsv_bench): no writes, no FILE, no *.* grant. The admin account creates and seeds them.
# Idempotent, and it also downgrades machines where an older bootstrap granted ALL ON *.*.
mysql_root <<SQL
CREATE USER IF NOT EXISTS '${DEMO_MYSQL_USER}'@'localhost' IDENTIFIED BY '${DEMO_MYSQL_PASSWORD}';
CREATE USER IF NOT EXISTS '${DEMO_MYSQL_USER}'@'127.0.0.1' IDENTIFIED BY '${DEMO_MYSQL_PASSWORD}';
REVOKE ALL PRIVILEGES, GRANT OPTION FROM '${DEMO_MYSQL_USER}'@'localhost';
REVOKE ALL PRIVILEGES, GRANT OPTION FROM '${DEMO_MYSQL_USER}'@'127.0.0.1';
GRANT SELECT ON \`demo_raw\`.* TO '${DEMO_MYSQL_USER}'@'localhost', '${DEMO_MYSQL_USER}'@'127.0.0.1';
GRANT SELECT ON \`dsv\\_test\\_%\`.* TO '${DEMO_MYSQL_USER}'@'localhost', '${DEMO_MYSQL_USER}'@'127.0.0.1';
GRANT SELECT ON \`dsv\\_bench\`.* TO '${DEMO_MYSQL_USER}'@'localhost', '${DEMO_MYSQL_USER}'@'127.0.0.1';
CREATE USER IF NOT EXISTS '${DEMO_MYSQL_ADMIN_USER}'@'localhost' IDENTIFIED BY '${DEMO_MYSQL_ADMIN_PASSWORD}';
CREATE USER IF NOT EXISTS '${DEMO_MYSQL_ADMIN_USER}'@'127.0.0.1' IDENTIFIED BY '${DEMO_MYSQL_ADMIN_PASSWORD}';
GRANT ALL PRIVILEGES ON *.* TO '${DEMO_MYSQL_ADMIN_USER}'@'localhost';
GRANT ALL PRIVILEGES ON *.* TO '${DEMO_MYSQL_ADMIN_USER}'@'127.0.0.1';
SQL

# 2b. PostgreSQL running (model DB tests, scheduler end-to-end metadata DB), with a password role.
pg_psql() { $SUDO -u postgres psql -v ON_ERROR_STOP=1 -qAt "$@" 2>/dev/null || psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qAt "$@"; }
if ! pg_psql -c "SELECT 1" >/dev/null 2>&1; then
  say "starting PostgreSQL"
  cluster=$(ls /etc/postgresql | sort -V | tail -1)
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$cluster" main start
  for _ in $(seq 1 60); do pg_psql -c "SELECT 1" >/dev/null 2>&1 && break; sleep 0.5; done
  pg_psql -c "SELECT 1" >/dev/null || { echo "PostgreSQL did not start" >&2; exit 1; }
fi
if [ "$(pg_psql -c "SELECT 1 FROM pg_roles WHERE rolname='${TEST_PG_USER}'")" != "1" ]; then
  pg_psql -c "CREATE ROLE ${TEST_PG_USER} LOGIN SUPERUSER PASSWORD '${TEST_PG_PASSWORD}'"
fi

# 3. Virtualenv with the pinned packages (reinstalled only when requirements.txt changes).
if [ ! -x .venv/bin/python ]; then say "creating .venv"; python3 -m venv .venv; fi
req_sum=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat .venv/.requirements.sha 2>/dev/null)" != "$req_sum" ]; then
  say "installing Python packages (requirements.txt)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
  echo "$req_sum" > .venv/.requirements.sha
fi

# 3a. The optional C export engine (dataset_registry._fastexport), built in place when its source
# changed; without a compiler the export falls back to the Python engine (and logs so).
fe_sum=$(sha256sum plugins/dataset_registry/_fastexport.c scripts/build_fastexport.py | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.fastexport.sha 2>/dev/null)" != "$fe_sum" ] || ! ls plugins/dataset_registry/_fastexport*.so >/dev/null 2>&1; then
  say "building the C export engine (plugins/dataset_registry/_fastexport.c)"
  .venv/bin/python scripts/build_fastexport.py && echo "$fe_sum" > .venv/.fastexport.sha
fi

# 3b. The MLflow tracking server the tests run against: its own venv (full `mlflow` pins numpy/pandas
# below what Airflow resolves here; workers need only the client, `mlflow-skinny`, in .venv).
mlflow_sum=$(sha256sum scripts/mlflow-server-requirements.txt | cut -d' ' -f1)
if [ "$(cat .venv-mlflow/.requirements.sha 2>/dev/null)" != "$mlflow_sum" ]; then
  say "installing the MLflow tracking server (.venv-mlflow)"
  [ -x .venv-mlflow/bin/python ] || python3 -m venv .venv-mlflow
  .venv-mlflow/bin/python -m pip install -q --disable-pip-version-check -r scripts/mlflow-server-requirements.txt
  echo "$mlflow_sum" > .venv-mlflow/.requirements.sha
fi

# 4. Airflow metadata DB (SQLite in .airflow/, for `airflow dags test` and the demo).
mkdir -p "$AIRFLOW_HOME" "$DATASET_WORK_DIR"
air_sum=$(printf '%s' "$req_sum" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$AIRFLOW_HOME/.migrated" 2>/dev/null)" != "$air_sum" ]; then
  say "migrating the Airflow metadata DB in $AIRFLOW_HOME"
  airflow db migrate >"$AIRFLOW_HOME/migrate.log" 2>&1 || { tail -20 "$AIRFLOW_HOME/migrate.log"; exit 1; }
  echo "$air_sum" > "$AIRFLOW_HOME/.migrated"
fi
say "ready"
