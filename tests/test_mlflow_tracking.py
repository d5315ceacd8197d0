"""MLflow tracking of train_<project> against a real `mlflow server` (SQLite backend, proxied artifacts).

End to end through `airflow dags test`: one MLflow run per Airflow run with tags, parameters, the
evaluations as metrics, the artifacts and the dataset input (digest = the version's full-file md5);
re-running the same Airflow run updates that run; MLflow going away mid-run fails the attempt with a
retryable error and the retry finishes the same run. Plus fast checks of the connection reading.
"""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from mlflow_server import mlflow_server  # noqa: F401 - the session fixture
from test_user_code_failures import published, shop_env  # noqa: F401 - fixtures

PASSWORD = "pw-Zq81-never-shown"
TRAIN_MODULE = '''
import json, os, time
from pathlib import Path

def fit(path, *, artifacts_dir, tag, **_):
    import pandas as pd
    gate = os.environ.get("MLTRAIN_GATE")
    if gate:  # the outage test: say "training", wait until the test took MLflow away
        Path(gate, "started").touch()
        deadline = time.monotonic() + 120
        while not Path(gate, "go").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    frame = pd.read_csv(path)
    seen = sorted(k for k in os.environ if k.startswith("MLFLOW_TRACKING_"))
    Path(artifacts_dir, "model.txt").write_text("mean price %.6f" % frame.price.mean())
    Path(artifacts_dir, "plots").mkdir(exist_ok=True)
    Path(artifacts_dir, "plots", "hist.txt").write_text("|||")
    return {"parameters": {"kind": "mean", "window": {"days": 1}, "features": ["price"]},
            "evaluations": {"rows": int(len(frame)), "mean_price": float(frame.price.mean()),
                            "by": {"max": float(frame.price.max())}, "note": "text is not a metric",
                            "mlflow_env_seen": seen},
            "artifact_file_paths": {"model": str(Path(artifacts_dir, "model.txt"))}}
'''


def dags_test(env, dag_id: str, conf: dict, cwd: Path, **popen):
    airflow = str(Path(sys.executable).parent / "airflow")
    args = [airflow, "dags", "test", dag_id, "-c", json.dumps(conf)]
    if popen:
        return subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def experiment_rows(env) -> list[dict]:
    with sqlite3.connect(env["MODEL_DB_PATH"]) as db:
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute("SELECT * FROM experiments ORDER BY experiment_id")]
        except sqlite3.OperationalError:
            return []


def numeric(evaluations: dict, prefix: str = "") -> dict[str, float]:
    """What the experiment row's evaluations say MLflow's metrics must be (numbers, nested keys with '.')."""
    out = {}
    for key, value in evaluations.items():
        if isinstance(value, dict):
            out.update(numeric(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def runs_of(server, experiment: str):
    client = server.client()
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([found.experiment_id], max_results=100)


@pytest.fixture
def tracked_shop(tmp_path, shop, registry, mlflow_server):
    """The shop project with MLflow tracking on (its own experiment) and a version published."""
    experiment = f"shop-{uuid.uuid4().hex[:8]}"
    (tmp_path / "mltrain.py").write_text(TRAIN_MODULE)
    yaml_file = tmp_path / "projects" / "shop.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("train: shoptrain:fit", "train: mltrain:fit")
                         + f"mlflow_conn_id: mlflow_test\nmlflow_experiment: {experiment}\n")
    env = {**shop, "AIRFLOW_CONN_MLFLOW_TEST": mlflow_server.conn_json(
        login="tracker", password=PASSWORD, extra={"max_retries": 0, "timeout": 10})}
    proc = dags_test(env, "version_shop", {"start": "2024-05-01T00:00:00Z", "end": "2024-05-02T00:00:00Z"}, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return env, experiment, yaml_file


def check_run(server, experiment: str, row: dict, registry) -> object:
    """The one MLflow run of the experiment matches the experiment row in every respect."""
    runs = runs_of(server, experiment)
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run = runs[0]
    assert row["mlflow_run_id"] == run.info.run_id and run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["dataset.tag"] == row["training_dataset"] == "shop/v20240502T000000"
    assert tags["dataset.md5"] == row["dataset_md5"]
    assert tags["airflow.dag_id"] == "train_shop" and tags["airflow.run_id"] == row["airflow_run_id"]
    evaluations = json.loads(row["evaluations"])
    assert run.data.metrics == numeric(evaluations) and run.data.metrics["rows"] == 3.0
    assert "note" not in run.data.metrics and evaluations["mlflow_env_seen"] == []  # no credentials in training
    assert run.data.params == {"kind": "mean", "window.days": "1", "features": '["price"]',
                               "train_callable": "mltrain:fit"}
    (dataset_input,) = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert dataset.digest == row["dataset_md5"] and len(dataset.digest) == 32  # the full-file md5
    source = json.loads(dataset.source)
    assert source == {"repo_url": registry.repo_url, "tag": "shop/v20240502T000000", "path": "shop/orders.csv"}
    client = server.client()
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["model.txt", "plots"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/hist.txt"]
    return run


@pytest.mark.slow
def test_train_logs_one_mlflow_run_and_a_rerun_of_the_same_airflow_run_updates_it(
        tmp_path, tracked_shop, registry, mlflow_server):
    env, experiment, _ = tracked_shop
    first = dags_test(env, "train_shop", {"version": "v20240502T000000"}, tmp_path)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-4000:]
    assert PASSWORD not in out
    (row,) = experiment_rows(env)
    assert row["status"] == "succeeded"
    run = check_run(mlflow_server, experiment, row, registry)
    local = mlflow_server.client().download_artifacts(run.info.run_id, "model.txt", str(tmp_path / "dl"))
    assert Path(local).read_text() == f"mean price {(3.5 + 0 + 9.99) / 3:.6f}"

    # the same Airflow run again (what clearing the task does): `airflow tasks test` in that dag run
    airflow = str(Path(sys.executable).parent / "airflow")
    again = subprocess.run([airflow, "tasks", "test", "train_shop", "train_model", row["airflow_run_id"]],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert PASSWORD not in again.stdout + again.stderr
    (row2,) = experiment_rows(env)  # still one row: updated
    assert row2["experiment_id"] == row["experiment_id"] and row2["updated_datetime"] > row["updated_datetime"]
    rerun = check_run(mlflow_server, experiment, row2, registry)  # still one MLflow run, the same one
    assert rerun.info.run_id == run.info.run_id
    assert len(mlflow_server.client().get_metric_history(run.info.run_id, "rows")) == 2  # one point per attempt


@pytest.mark.slow
def test_mlflow_going_away_mid_run_is_retried_and_leaves_one_run(tmp_path, tracked_shop, registry, mlflow_server):
    """The run is opened, MLflow dies while the callable trains, logging fails: a retryable error naming
    the tracking URI (not the password); MLflow comes back; a retry finishes the same run."""
    env, experiment, yaml_file = tracked_shop
    yaml_file.write_text(yaml_file.read_text().replace("retries: 0", "retries: 6\nretry_delay_seconds: 1"))
    gate = tmp_path / "gate"
    gate.mkdir()
    env = {**env, "MLTRAIN_GATE": str(gate)}
    seen: dict = {}

    def outage():
        try:
            deadline = time.monotonic() + 180
            while not (gate / "started").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            mlflow_server.stop()
            (gate / "go").touch()
            while time.monotonic() < deadline:  # the failed attempt is recorded before MLflow returns
                rows = experiment_rows(env)
                if rows and rows[0]["status"] == "failed":
                    seen["row"] = rows[0]
                    break
                time.sleep(0.2)
        finally:
            mlflow_server.start()

    helper = threading.Thread(target=outage, daemon=True)
    helper.start()
    proc = dags_test(env, "train_shop", {"version": "v20240502T000000"}, tmp_path, popen=True)
    try:
        out, _ = proc.communicate(timeout=400)
    finally:
        proc.kill()
        helper.join(120)
        mlflow_server.ensure_running()
    assert proc.returncode == 0, out[-5000:]
    failed = json.loads(seen["row"]["evaluations"])["error"]
    assert failed.startswith(f"MLflow: MLflow tracking server {mlflow_server.uri}: ") and "Connection refused" in failed
    assert f"MLflow tracking server {mlflow_server.uri}" in out and "retryable: the task is retried" in out
    assert "AirflowFailException" not in out and PASSWORD not in out and PASSWORD not in failed
    assert "up_for_retry" in out.lower() or "try_number=2" in out
    (row,) = experiment_rows(env)
    assert row["status"] == "succeeded" and row["mlflow_run_id"] == seen["row"]["mlflow_run_id"]
    check_run(mlflow_server, experiment, row, registry)  # exactly one run, finished, complete


# ---------------------------------------------------------------- reading the connection (no server)
def test_tracking_uri_from_the_connection_fields():
    from dataset_registry.mlflow_tracking import build_tracking_uri

    assert build_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert build_tracking_uri("https://example.com/mlflow/") == "https://example.com/mlflow"
    assert build_tracking_uri("mlflow", None, 5000) == "http://mlflow:5000"
    assert build_tracking_uri("mlflow", "https", None) == "https://mlflow"
    assert build_tracking_uri("http://mlflow", None, 5000) == "http://mlflow:5000"
    assert build_tracking_uri("http://mlflow:5000", "http", 5000) == "http://mlflow:5000"
    for host, scheme, port, words in [
        ("", None, None, "must be the MLflow tracking URI"),
        ("http://mlflow:5000", None, 6000, "port 5000 in the URI but 6000"),
        ("http://mlflow", "https", None, "contradicts"),
        ("ftp://mlflow", None, None, "http or https"),
        ("http://bob:hunter2@mlflow:5000", None, None, "login and password"),
    ]:
        with pytest.raises(ValueError) as err:
            build_tracking_uri(host, scheme, port)
        assert words in str(err.value) and "hunter2" not in str(err.value)


def test_hook_reads_credentials_refuses_unknown_extra_and_keeps_secrets_out_of_the_environment(monkeypatch):
    import os

    from dataset_registry.hooks.mlflow_hook import MlflowHook
    from dataset_registry.mlflow_tracking import MlflowTrackingError, client_environment

    monkeypatch.setenv("AIRFLOW_CONN_MLF", json.dumps(
        {"conn_type": "http", "host": "mlflow", "port": 5000, "login": "bob", "password": PASSWORD,
         "extra": {"timeout": 7}}))
    settings = MlflowHook("mlf").settings()
    assert (settings.uri, settings.username, settings.password, settings.timeout) == \
        ("http://mlflow:5000", "bob", PASSWORD, 7)
    assert PASSWORD not in repr(settings)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "ambient-token")
    with client_environment(settings):
        assert os.environ["MLFLOW_TRACKING_PASSWORD"] == PASSWORD and "MLFLOW_TRACKING_TOKEN" not in os.environ
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ and os.environ["MLFLOW_TRACKING_TOKEN"] == "ambient-token"

    monkeypatch.setenv("AIRFLOW_CONN_MLF", json.dumps(
        {"conn_type": "http", "host": "http://mlflow:5000", "extra": {"tokn": "x"}}))
    with pytest.raises(MlflowTrackingError) as err:
        MlflowHook("mlf").settings()
    assert "unknown extra key(s) tokn" in str(err.value) and not err.value.retryable
    monkeypatch.setenv("AIRFLOW_CONN_MLF", json.dumps(  # another service's connection: its password stays home
        {"conn_type": "smtp", "host": "mail.example.com", "port": 25, "login": "bob", "password": PASSWORD}))
    with pytest.raises(MlflowTrackingError) as err:
        MlflowHook("mlf").settings()
    assert "type 'smtp' is not an MLflow tracking connection" in str(err.value) and not err.value.retryable
    assert PASSWORD not in str(err.value)
    monkeypatch.setenv("AIRFLOW_CONN_MLF", json.dumps(
        {"conn_type": "http", "host": f"http://bob:{PASSWORD}@mlflow:5000"}))
    with pytest.raises(MlflowTrackingError) as err:
        MlflowHook("mlf").settings()
    assert PASSWORD not in str(err.value) and "login and password" in str(err.value)


def test_a_refusing_server_is_not_retried_and_an_absent_one_is(mlflow_server):
    """401 (what a server with auth answers to wrong credentials) fails for good; no server is an outage."""
    from dataset_registry.mlflow_tracking import MlflowTracker, MlflowTrackingError, TrackingSettings
    from conftest import free_port

    absent = MlflowTracker(TrackingSettings(uri=f"http://127.0.0.1:{free_port()}", password=PASSWORD, max_retries=0))
    with pytest.raises(MlflowTrackingError) as err:
        absent.experiment_id("x")
    assert err.value.retryable and "Connection refused" in str(err.value) and PASSWORD not in str(err.value)

    import http.server

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(401)
            self.end_headers()
            self.wfile.write(b"Unauthorized")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        refusing = MlflowTracker(TrackingSettings(uri=f"http://127.0.0.1:{server.server_port}", username="bob",
                                                  password=PASSWORD, max_retries=0))
        with pytest.raises(MlflowTrackingError) as err:
            refusing.experiment_id("x")
    finally:
        server.shutdown()
    assert not err.value.retryable and "(401)" in str(err.value) and "login/password or token" in str(err.value)
    assert PASSWORD not in str(err.value)


def test_mlflow_down_before_training_fails_retryably_before_any_training(published, monkeypatch):
    """In-process: the run is opened before training, so an unreachable server costs no training time;
    the error is a normal (retryable) exception naming the tracking URI, never the password."""
    from airflow.sdk.exceptions import AirflowFailException

    from conftest import free_port
    from dataset_registry.mlflow_tracking import MlflowTrackingError
    from dataset_registry.operators.train_model import TrainModelOperator
    from test_user_code_failures import train_context

    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DOWN", json.dumps(
        {"conn_type": "http", "host": uri, "login": "bob", "password": PASSWORD, "extra": {"max_retries": 0}}))
    op = TrainModelOperator(task_id="train_model", project="shop", output_file="orders.csv",
                            asset_uri="dvc://registry/shop", version="v1", train_callable="shoptrain:fit",
                            include_path=str(published.include), mlflow_conn_id="mlflow_down")
    with pytest.raises(MlflowTrackingError) as err:
        op.execute(train_context())
    assert not isinstance(err.value, AirflowFailException) and err.value.retryable
    assert str(err.value).startswith(f"MLflow tracking server {uri}: looking up experiment 'shop' failed")
    assert PASSWORD not in str(err.value)
    (row,) = experiment_rows(published.env)
    assert row["status"] == "failed" and json.loads(row["evaluations"])["error"].startswith("MLflow: ")
    assert row["mlflow_run_id"] is None
    assert not (Path(published.env["DATASET_DATA_DIR"]) / "train_shop" / "manual__1" / "artifacts").exists()
