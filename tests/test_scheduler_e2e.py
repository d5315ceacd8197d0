"""The whole loop under a real Airflow: api-server, scheduler, dag-processor and triggerer as real
processes (LocalExecutor, PostgreSQL metadata DB). version_shop is triggered through the REST API with
`conf`, as the UI trigger form does; train_shop must then run *because of the Asset event* and record
the experiment. Processes are stopped at the end, even on failure."""
import pytest

from airflow_stack import Api, Processes, airflow_env, migrate
from conftest import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def airflow_stack(tmp_path, shop, pg_database):
    port = free_port()
    env = airflow_env(shop, tmp_path / "airflow-home", pg_database, port, "LocalExecutor")
    migrate(env)
    with Processes(tmp_path / "logs") as procs:
        procs.start_airflow(env)
        yield Api(port).login(), env, procs


def test_trigger_version_through_rest_then_train_runs_because_of_the_asset(tmp_path, airflow_stack, registry):
    import sqlite3

    api, env, procs = airflow_stack
    with procs.dump_on_failure():
        api.unpause_when_parsed(("version_shop", "train_shop"))
        conf = {"version": "rest-1", "start": "2024-05-01T00:00:00Z", "end": "2024-05-02T00:00:00Z"}
        run_id = api.trigger("version_shop", conf)

        def version_done():
            state = api.call("GET", f"/api/v2/dags/version_shop/dagRuns/{run_id}")["state"]
            assert state != "failed", "version_shop failed"
            return state == "success"

        api.wait("version_shop to succeed", version_done, 300, 2)
        assert registry.tags() == ["shop/rest-1"]

        def train_run():
            runs = api.dag_runs("train_shop")
            done = [r for r in runs if r["state"] in ("success", "failed")]
            return done[0] if done else None

        train = api.wait("train_shop to run", train_run, 300, 2)
        assert train["run_type"] == "asset_triggered", train
        assert train["state"] == "success", train
        events = api.upstream_events("train_shop", train["dag_run_id"])
        assert [e["extra"]["tag"] for e in events] == ["shop/rest-1"]
        assert events[0]["uri"] == "dvc://registry/shop"

        with sqlite3.connect(env["MODEL_DB_PATH"]) as db:
            rows = db.execute("SELECT training_dataset, status, airflow_run_id FROM experiments").fetchall()
            versions = db.execute("SELECT tag, rows FROM dataset_versions").fetchall()
        assert rows == [("shop/rest-1", "succeeded", train["dag_run_id"])]
        assert versions == [("shop/rest-1", 3)]
