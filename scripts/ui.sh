#!/usr/bin/env bash
# `make ui`: the whole local Airflow (api-server, scheduler, dag-processor, triggerer) on the demo's
# data, on loopback only, with the registry page. Prints the URLs and a login; Ctrl-C stops it all.
#
# The demo's registry, DVC remote, model DB and MySQL database are used as `make demo` left them
# (the demo runs first when its registry has no version yet). This stack has its own AIRFLOW_HOME
# and metadata DB under .work/ui, so the tests' and the demo's Airflow state stay untouched; DAGs
# start paused: unpause version_demo in the UI to let the scheduler run it.
# Settings: UI_PORT (default 8080), UI_USER (default admin).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO_ROOT"
source "$REPO_ROOT/scripts/demo_env.sh"
UI="$REPO_ROOT/.work/ui"
PORT="${UI_PORT:-8080}"
USER_NAME="${UI_USER:-admin}"
say() { printf '[ui] %s\n' "$*"; }

if ! git -C "$DEMO/registry.git" tag --list 'demo/*' 2>/dev/null | grep -q .; then
  say "no demo registry yet: running the demo first (scripts/demo.sh)"
  bash scripts/demo.sh
fi
if ! python - "$PORT" <<'PY'
import socket, sys
with socket.socket() as s:
    try:
        s.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError:
        sys.exit(1)
PY
then
  echo "port $PORT on 127.0.0.1 is in use: stop what uses it, or run UI_PORT=8081 make ui" >&2
  exit 1
fi

mkdir -p "$UI/logs"
# This stack's Airflow: own home and metadata DB, loopback only, one shared JWT secret per start.
export AIRFLOW_HOME="$UI/airflow-home"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$UI/airflow-home/airflow.db"
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=True
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT="$PORT"
export AIRFLOW__API__WORKERS=1
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$PORT/execution/"
export AIRFLOW__API_AUTH__JWT_SECRET="$(python -c 'import secrets; print(secrets.token_hex(32))')"
export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=False
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="$USER_NAME:admin"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$UI/passwords.json"
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=10
mkdir -p "$AIRFLOW_HOME"

# One password per machine, kept in a file only this user can read (SimpleAuthManager's format).
PASSWORD="$(python - "$UI/passwords.json" "$USER_NAME" <<'PY'
import json, os, secrets, sys
path, user = sys.argv[1], sys.argv[2]
try:
    with open(path) as f:
        users = json.load(f)
except (OSError, ValueError):
    users = {}
if not users.get(user):
    users[user] = secrets.token_urlsafe(12)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(users, f)
os.chmod(path, 0o600)
print(users[user])
PY
)"

say "metadata DB: $AIRFLOW__DATABASE__SQL_ALCHEMY_CONN (airflow db migrate)"
airflow db migrate >"$UI/logs/db-migrate.log" 2>&1 || { tail -30 "$UI/logs/db-migrate.log"; exit 1; }

pids=()
stop() {
  trap - INT TERM EXIT
  say "stopping ${#pids[@]} processes"
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for _ in $(seq 1 40); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.5
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  say "stopped (logs: $UI/logs)"
}
trap 'stop; exit 130' INT TERM
trap stop EXIT

# Each component in its own process group (stopped as a group). Task logs are read from this
# machine's files, so the scheduler and triggerer start no log server (it would listen on all interfaces).
names=(api-server scheduler dag-processor triggerer)
for component in "${names[@]}"; do
  args=()
  case "$component" in scheduler|triggerer) args=(--skip-serve-logs) ;; esac
  # The page's reads use their own working clone and DVC cache: they never wait on a publishing task's lock.
  work_dir="$DATASET_WORK_DIR"; [ "$component" = api-server ] && work_dir="$UI/api-server-work"
  DATASET_WORK_DIR="$work_dir" setsid airflow "$component" "${args[@]}" >"$UI/logs/$component.log" 2>&1 </dev/null &
  pids+=("$!")
done
say "waiting for the api-server (logs: $UI/logs)"
for _ in $(seq 1 180); do
  curl -fsS "http://127.0.0.1:$PORT/api/v2/monitor/health" >/dev/null 2>&1 && break
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "a component exited early:" >&2; tail -n 30 "$UI"/logs/*.log >&2; exit 1; }
  done
  sleep 1
done
curl -fsS "http://127.0.0.1:$PORT/api/v2/monitor/health" >/dev/null || { echo "the api-server did not start" >&2; exit 1; }

cat <<TXT

  Airflow UI        http://127.0.0.1:$PORT/
  Dataset registry  http://127.0.0.1:$PORT/dataset-registry/   (also: Browse > Dataset registry in the UI,
                    and the "Dataset versions" tab on the version_demo / train_demo DAG pages)
  Login             $USER_NAME / $PASSWORD   (kept in $UI/passwords.json)

  The JSON API with a token:
    TOKEN=\$(curl -s -X POST http://127.0.0.1:$PORT/auth/token -H 'Content-Type: application/json' \\
             -d '{"username":"$USER_NAME","password":"$PASSWORD"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
    curl -s -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:$PORT/dataset-registry/api/projects

  DAGs start paused here: unpause version_demo to let the scheduler run it. Ctrl-C stops everything.

TXT
# Wait until Ctrl-C, or until a component dies (then stop the others and say which).
while true; do
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "[ui] ${names[$i]} exited; its log: $UI/logs/${names[$i]}.log" >&2
      tail -n 20 "$UI/logs/${names[$i]}.log" >&2
      exit 1
    fi
  done
  sleep 2
done
