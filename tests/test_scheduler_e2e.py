"""The whole loop under a real Airflow: api-server, scheduler, dag-processor and triggerer as real
processes (LocalExecutor, PostgreSQL metadata DB). version_shop is triggered through the REST API with
`conf`, as the UI trigger form does; train_shop must then run *because of the Asset event* and record
the experiment. Processes are stopped at the end, even on failure."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import free_port

pytestmark = pytest.mark.slow
AIRFLOW = str(Path(sys.executable).parent / "airflow")


class Api:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"
        self.token = None

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
            return json.loads(text) if text else None

    def wait(self, what, fn, timeout, interval=1.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                result = fn()
                if result:
                    return result
                last = result
            except (urllib.error.URLError, ConnectionError, OSError) as exc:
                last = exc
            time.sleep(interval)
        raise AssertionError(f"timed out waiting for {what}: {last}")


@pytest.fixture
def airflow_stack(tmp_path, shop, pg_database):
    port = free_port()
    db_url = pg_database
    env = {
        **shop,
        "AIRFLOW_HOME": str(tmp_path / "airflow-home"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex,
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "1",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    }
    Path(env["AIRFLOW_HOME"]).mkdir()
    migrate = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = []
    try:
        for component in ("api-server", "scheduler", "dag-processor", "triggerer"):
            out = open(logs / f"{component}.log", "wb")
            procs.append(subprocess.Popen([AIRFLOW, component], env=env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        api = Api(port)
        api.wait("the api-server", lambda: api.call("GET", "/api/v2/monitor/health"), 120)
        api.token = api.call("GET", "/auth/token")["access_token"]
        yield api, env, logs
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def test_trigger_version_through_rest_then_train_runs_because_of_the_asset(tmp_path, airflow_stack, registry):
    import sqlite3

    api, env, logs = airflow_stack
    try:
        for dag_id in ("version_shop", "train_shop"):
            api.wait(f"{dag_id} to be parsed", lambda d=dag_id: api.call("GET", f"/api/v2/dags/{d}"), 120)
            api.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        conf = {"version": "rest-1", "start": "2024-05-01T00:00:00Z", "end": "2024-05-02T00:00:00Z"}
        run = api.call("POST", "/api/v2/dags/version_shop/dagRuns", {"logical_date": None, "conf": conf})
        run_id = run["dag_run_id"]

        def version_done():
            state = api.call("GET", f"/api/v2/dags/version_shop/dagRuns/{run_id}")["state"]
            assert state != "failed", "version_shop failed"
            return state == "success"

        api.wait("version_shop to succeed", version_done, 300, 2)
        assert registry.tags() == ["shop/rest-1"]

        def train_run():
            runs = api.call("GET", "/api/v2/dags/train_shop/dagRuns")["dag_runs"]
            done = [r for r in runs if r["state"] in ("success", "failed")]
            return done[0] if done else None

        train = api.wait("train_shop to run", train_run, 300, 2)
        assert train["run_type"] == "asset_triggered", train
        assert train["state"] == "success", train
        events = api.call("GET", f"/api/v2/dags/train_shop/dagRuns/{train['dag_run_id']}/upstreamAssetEvents")["asset_events"]
        assert [e["extra"]["tag"] for e in events] == ["shop/rest-1"]
        assert events[0]["uri"] == "dvc://registry/shop"

        with sqlite3.connect(env["MODEL_DB_PATH"]) as db:
            rows = db.execute("SELECT training_dataset, status, airflow_run_id FROM experiments").fetchall()
            versions = db.execute("SELECT tag, rows FROM dataset_versions").fetchall()
        assert rows == [("shop/rest-1", "succeeded", train["dag_run_id"])]
        assert versions == [("shop/rest-1", 3)]
    except BaseException:
        for log in sorted(logs.iterdir()):
            print(f"===== {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        raise
