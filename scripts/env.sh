# Sourced by the Makefile targets and scripts: the repo-local Airflow environment.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT
export PATH="$REPO_ROOT/.venv/bin:$PATH"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$REPO_ROOT/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$REPO_ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$REPO_ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
export AIRFLOW__LOGGING__LOGGING_LEVEL="${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}"
export PYTHONPATH="$REPO_ROOT/plugins:$REPO_ROOT/include${PYTHONPATH:+:$PYTHONPATH}"
export DATASET_PROJECTS_DIR="${DATASET_PROJECTS_DIR:-$REPO_ROOT/include/projects}"
export DATASET_WORK_DIR="${DATASET_WORK_DIR:-$REPO_ROOT/.work/worker}"
# The throwaway local MySQL accounts that bootstrap creates for the demo and the tests:
# DEMO_MYSQL_USER is SELECT-only (demo_raw, dsv_test_*, dsv_bench) and is what exports connect as
# (AIRFLOW_CONN_MYSQL_RAW); DEMO_MYSQL_ADMIN_USER creates and seeds those databases.
export DEMO_MYSQL_USER="${DEMO_MYSQL_USER:-dataset_demo}"
export DEMO_MYSQL_PASSWORD="${DEMO_MYSQL_PASSWORD:-dataset_demo}"
export DEMO_MYSQL_ADMIN_USER="${DEMO_MYSQL_ADMIN_USER:-dataset_admin}"
export DEMO_MYSQL_ADMIN_PASSWORD="${DEMO_MYSQL_ADMIN_PASSWORD:-dataset_admin}"
# The throwaway local PostgreSQL role for the model DB tests and the scheduler end-to-end test.
export TEST_PG_USER="${TEST_PG_USER:-dataset_test}"
export TEST_PG_PASSWORD="${TEST_PG_PASSWORD:-dataset_test}"
