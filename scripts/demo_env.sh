# Sourced by scripts/demo.sh and scripts/ui.sh (after env.sh): the demo's data and connections.
DEMO="$REPO_ROOT/.work/demo"
export DATASET_WORK_DIR="$DEMO/worker"
export DATASET_DATA_DIR="$DEMO/runs"
export MODEL_DB_PATH="$DEMO/model_db.sqlite"   # the embedded default model DB (no model_db connection set)
# The export connects as the SELECT-only account.
export AIRFLOW_CONN_MYSQL_RAW="{\"conn_type\":\"mysql\",\"host\":\"127.0.0.1\",\"port\":3306,\"login\":\"$DEMO_MYSQL_USER\",\"password\":\"$DEMO_MYSQL_PASSWORD\"}"
export AIRFLOW_CONN_DVC_REGISTRY="{\"conn_type\":\"dvc_registry\",\"extra\":{\"repo_url\":\"$DEMO/registry.git\",\"remote_url\":\"$DEMO/dvc-store\"}}"
