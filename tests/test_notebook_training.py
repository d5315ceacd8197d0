"""Notebooks as training code: `train: training/x.ipynb` executed with papermill on a real ipykernel.

End to end on the demo data through `airflow dags test train_demo` (with MLflow), the failure modes
in-process (a failing cell, garbage metrics.json, a killed kernel, a cell timeout, no metrics), what
the kernel's environment holds, and hostile `train:` values refused at parse time.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from conftest import REPO
from mlflow_server import mlflow_server  # noqa: F401 - the session fixture
from test_mlflow_tracking import dags_test, experiment_rows, numeric, runs_of
from test_user_code_failures import published, shop_env, train_context  # noqa: F401 - fixtures

PARAMETERS = ('data_path = "x.csv"\nproject = ""\nversion = ""\ntag = ""\nmd5 = ""\nartifacts_dir = "."', )


def write_notebook(path: Path, *sources: str, parameters: bool = True) -> Path:
    """A real nbformat-4 notebook: an optional `parameters` cell, then one code cell per source."""
    cells = []
    for index, source in enumerate((PARAMETERS if parameters else ()) + sources):
        cell = {"cell_type": "code", "id": f"c{index}", "metadata": {}, "execution_count": None, "outputs": [],
                "source": source}
        if parameters and index == 0:
            cell["metadata"]["tags"] = ["parameters"]
        cells.append(cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cells": cells, "nbformat": 4, "nbformat_minor": 5, "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}))
    return path


WRITE_METRICS = ('import json, os\n'
                 'with open(os.path.join(artifacts_dir, "metrics.json"), "w") as f:\n'
                 '    json.dump({"evaluations": {"rows": sum(1 for _ in open(data_path)) - 1}}, f)')


# ---------------------------------------------------------------- end to end on the demo data
@pytest.fixture
def demo_project(tmp_path, shop, mysql_db, registry, mlflow_server):
    """The demo project over a fresh copy of the demo rows, training with include/training/demo_baseline.ipynb."""
    db, connect = mysql_db
    conn = connect()
    seed = (REPO / "include" / "demo" / "seed.sql").read_text().replace("demo_raw", db)
    for statement in (s.strip() for s in seed.split(";\n")):
        if statement and not all(line.startswith("--") for line in statement.splitlines()):
            conn.cursor().execute(statement)
    conn.close()
    for folder in ("preprocess", "training"):
        shutil.copytree(REPO / "include" / folder, tmp_path / folder)
    experiment = f"demo-{uuid.uuid4().hex[:8]}"
    demo_yaml = (REPO / "include" / "projects" / "demo.yaml").read_text()
    assert "train: training.demo_baseline:train" in demo_yaml
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "demo.sql").write_text((REPO / "include" / "sql" / "demo.sql").read_text().replace("demo_raw", db))
    (tmp_path / "projects" / "demo.yaml").write_text(
        demo_yaml.replace("train: training.demo_baseline:train", "train: training/demo_baseline.ipynb")
        + f"retries: 0\nmlflow_conn_id: mlflow_nb\nmlflow_experiment: {experiment}\nnotebook_cell_timeout: 120\n")
    env = {**shop, "AIRFLOW_CONN_MLFLOW_NB": mlflow_server.conn_json(extra={"max_retries": 0})}
    return env, experiment


@pytest.mark.slow
def test_demo_notebook_trains_end_to_end_and_reports_what_it_computed(tmp_path, demo_project, registry,
                                                                     mlflow_server):
    env, experiment = demo_project
    published_run = dags_test(env, "version_demo", {"version": "v1", "start": "2024-03-01T00:00:00Z",
                                                    "end": "2024-03-03T00:00:00Z"}, tmp_path)
    assert published_run.returncode == 0, (published_run.stdout + published_run.stderr)[-4000:]
    proc = dags_test(env, "train_demo", {"version": "v1"}, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "Executing notebook with kernel: python3" in out  # papermill ran it, on this worker's kernel

    (row,) = experiment_rows(env)
    assert row["status"] == "succeeded" and row["training_dataset"] == "demo/v1"
    evaluations = json.loads(row["evaluations"])
    # the same computation, here, on the same bytes (the version's object on the DVC remote, md5-checked)
    md5 = row["dataset_md5"]
    data = registry.store / "files" / "md5" / md5[:2] / md5[2:]
    assert hashlib.md5(data.read_bytes()).hexdigest() == md5
    from training.demo_baseline import train as baseline

    expected = baseline(str(data), artifacts_dir=str(tmp_path), tag="demo/v1")
    assert evaluations == expected["evaluations"] and evaluations["rows_in_file"] == 8
    assert json.loads(row["parameters"]) == {**expected["parameters"], "train_notebook": "training/demo_baseline.ipynb"}

    from dataset_registry.operators.pull_dataset import run_scoped_dir

    artifacts = run_scoped_dir(Path(env["DATASET_DATA_DIR"]), "train_demo", row["airflow_run_id"]) / "artifacts"
    paths = json.loads(row["artifact_file_paths"])
    executed = Path(paths["executed_notebook"])
    assert executed == artifacts / "demo_baseline.executed.ipynb" and executed.is_file()
    notebook = json.loads(executed.read_text())
    injected = [c for c in notebook["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and "demo/v1" in "".join(injected[0]["source"])
    assert all(c.get("execution_count") for c in notebook["cells"] if c["cell_type"] == "code")
    assert json.loads(Path(paths["model"]).read_text())["trained_on"] == "demo/v1"

    (run,) = runs_of(mlflow_server, experiment)
    assert run.info.status == "FINISHED" and row["mlflow_run_id"] == run.info.run_id
    assert run.data.metrics == numeric(evaluations)
    client = mlflow_server.client()
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"demo_baseline.executed.ipynb", "metrics.json", "mean_model.json"} <= names
    uploaded = client.download_artifacts(run.info.run_id, "demo_baseline.executed.ipynb", str(tmp_path / "dl"))
    assert Path(uploaded).read_bytes() == executed.read_bytes()


# ---------------------------------------------------------------- failure modes (operator in-process)
def notebook_op(shop_env, spec: str, **kw):
    from dataset_registry.operators.train_model import TrainModelOperator

    return TrainModelOperator(task_id="train_model", project="shop", output_file="orders.csv",
                              asset_uri="dvc://registry/shop", version="v1", train_callable=spec,
                              include_path=str(shop_env.include), **kw)


def rows(shop_env) -> list[dict]:
    return experiment_rows(shop_env.env)


BROKEN = {
    "failing_cell": (("x = 1", "raise ValueError('bad feature: amount')"), "cell [4] raised ValueError: bad feature: amount"),
    "garbage_metrics": (('open(artifacts_dir + "/metrics.json", "w").write("{not json")',), "metrics.json is not valid JSON"),
    "metrics_not_numbers": (('open(artifacts_dir + "/metrics.json", "w").write(\'{"evaluations": {"mae": NaN}}\')',),
                            "NaN is not a JSON number"),
    "metrics_wrong_shape": (('open(artifacts_dir + "/metrics.json", "w").write(\'{"evaluation": {"mae": 1}}\')',),
                            "unknown key(s) 'evaluation'"),
    "no_metrics": (("y = 2",), "the notebook wrote no metrics.json"),
    "killed_kernel": (("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",), "the kernel died"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_failing_notebook_fails_without_retry_and_keeps_the_executed_notebook(published, case):
    sources, message = BROKEN[case]
    write_notebook(published.include / "training" / f"{case}.ipynb", *sources)
    started = time.monotonic()
    with pytest.raises(AirflowFailException) as err:  # no retry: the notebook's own failure
        notebook_op(published, f"training/{case}.ipynb", notebook_cell_timeout=60).execute(train_context())
    assert time.monotonic() - started < 60
    assert message in str(err.value) and str(err.value).startswith(f"train notebook training/{case}.ipynb failed")
    (row,) = rows(published)
    error = json.loads(row["evaluations"])["error"]
    assert row["status"] == "failed" and message in error and error.startswith("NotebookFailed: ")
    kept = Path(json.loads(row["artifact_file_paths"])["executed_notebook"])
    assert kept.name == f"{case}.executed.ipynb" and kept.is_file()
    outputs = [o for c in json.loads(kept.read_text())["cells"] for o in c.get("outputs", [])]
    if case == "failing_cell":
        assert any(o.get("output_type") == "error" and o.get("evalue") == "bad feature: amount" for o in outputs)


def test_cell_timeout_bounds_a_hanging_notebook(published):
    write_notebook(published.include / "training" / "hang.ipynb", "import time\ntime.sleep(600)")
    started = time.monotonic()
    with pytest.raises(AirflowFailException) as err:
        notebook_op(published, "training/hang.ipynb", notebook_cell_timeout=3).execute(train_context())
    assert time.monotonic() - started < 45
    assert "ran longer than the cell timeout of 3 s" in str(err.value)
    assert [r["status"] for r in rows(published)] == ["failed"]


def test_failing_notebook_marks_the_mlflow_run_failed_with_the_executed_notebook(published, monkeypatch,
                                                                                mlflow_server):
    experiment = f"nbfail-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_NB", mlflow_server.conn_json(extra={"max_retries": 0}))
    write_notebook(published.include / "training" / "fails.ipynb", "raise RuntimeError('diverged')")
    with pytest.raises(AirflowFailException):
        notebook_op(published, "training/fails.ipynb", mlflow_conn_id="mlflow_nb",
                    mlflow_experiment=experiment).execute(train_context())
    (row,) = rows(published)
    (run,) = runs_of(mlflow_server, experiment)
    assert run.info.status == "FAILED" and row["mlflow_run_id"] == run.info.run_id and row["status"] == "failed"
    assert "RuntimeError: diverged" in run.data.tags["error"]
    assert "fails.executed.ipynb" in {a.path for a in mlflow_server.client().list_artifacts(run.info.run_id)}


def test_the_kernel_gets_no_airflow_connections_or_mlflow_credentials(published, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "leak-me-not")
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "leak-me-not-either")
    monkeypatch.setenv("NOTEBOOK_VISIBLE", "yes")
    write_notebook(published.include / "training" / "env.ipynb",
                   'import json, os, sys\n'
                   'names = sorted(k for k in os.environ if k.startswith(("AIRFLOW_CONN_", "AIRFLOW__", "MLFLOW_TRACKING")))\n'
                   'with open(os.path.join(artifacts_dir, "metrics.json"), "w") as f:\n'
                   '    json.dump({"parameters": {"python": sys.executable, "visible": os.environ.get("NOTEBOOK_VISIBLE")},\n'
                   '               "evaluations": {"hidden_names_seen": names}}, f)')
    summary = notebook_op(published, "training/env.ipynb").execute(train_context())
    assert summary["evaluations"] == {"hidden_names_seen": []}
    (row,) = rows(published)
    import sys

    params = json.loads(row["parameters"])
    assert params["python"] == sys.executable and params["visible"] == "yes"  # the worker's own interpreter
    assert os.environ["AIRFLOW_CONN_DVC_REGISTRY"]  # the worker still has them; only the kernel does not


def test_notebook_results_on_a_rerun_replace_the_previous_attempt(published):
    """A stale metrics.json from an earlier attempt of the same run is never reported again."""
    write_notebook(published.include / "training" / "ok.ipynb", WRITE_METRICS)
    assert notebook_op(published, "training/ok.ipynb").execute(train_context())["evaluations"] == {"rows": 4}
    write_notebook(published.include / "training" / "ok.ipynb", "pass")  # now reports nothing
    with pytest.raises(AirflowFailException) as err:
        notebook_op(published, "training/ok.ipynb").execute(train_context())
    assert "wrote no metrics.json" in str(err.value)
    (row,) = rows(published)
    assert row["status"] == "failed" and "rows" not in json.loads(row["evaluations"])


# ---------------------------------------------------------------- hostile train values at parse time
def project_with_train(tmp_path: Path, train: str) -> Path:
    projects = tmp_path / "inc" / "projects"
    projects.mkdir(parents=True, exist_ok=True)
    path = projects / "nb.yaml"
    path.write_text(f"project: nb\nschedule: null\nquery: SELECT 1 AS x\noutput: x.csv\ntrain: {json.dumps(train)}\n")
    return path


def test_notebook_train_path_is_checked_at_parse_time(tmp_path):
    from dataset_registry.project_config import ProjectConfigError, load_project

    include = tmp_path / "inc"
    write_notebook(include / "training" / "good.ipynb", WRITE_METRICS)
    cfg = load_project(project_with_train(tmp_path, "training/good.ipynb"))
    assert cfg.train == "training/good.ipynb" and cfg.train_is_notebook and cfg.notebook_cell_timeout == 3600

    outside = write_notebook(tmp_path / "elsewhere" / "evil.ipynb", "import os")
    (include / "training" / "link.ipynb").symlink_to(outside)
    (include / "training" / "notes.ipynb").write_text("print('I am Python, not a notebook')")
    (include / "training" / "model.py").write_text("def train(*a, **k):\n    return {}\n")
    (include / "training" / "folder.ipynb").mkdir()
    cases = {
        "../elsewhere/evil.ipynb": "'..' is refused",
        "training/../../elsewhere/evil.ipynb": "'..' is refused",
        str(outside): "absolute paths are refused",
        "~/evil.ipynb": "absolute paths are refused",
        "training/link.ipynb": "outside the include root",
        "training/notes.ipynb": "is not a Jupyter notebook",
        "training/model.py": "must end in .ipynb",
        "training/missing.ipynb": "no file",
        "training/folder.ipynb": "not a regular file",
        "training/x.ipynb\n": "is not a notebook path",
    }
    for value, words in cases.items():
        with pytest.raises(ProjectConfigError) as err:
            load_project(project_with_train(tmp_path, value))
        text = str(err.value)
        assert "key 'train': " in text and words in text, (value, text)
        if words in ("'..' is refused", "absolute paths are refused", "outside the include root"):
            assert "relative to the include root" in text and "inside the include root" in text  # the rule


@pytest.mark.parametrize("extra, key", [
    ("mlflow_conn_id: 'bad id!'", "mlflow_conn_id"),
    ("mlflow_conn_id: 5", "mlflow_conn_id"),
    ("mlflow_experiment: \"a\\u0000b\"", "mlflow_experiment"),
    ("mlflow_experiment: ''", "mlflow_experiment"),
    ("notebook_cell_timeout: 0", "notebook_cell_timeout"),
    ("notebook_cell_timeout: true", "notebook_cell_timeout"),
])
def test_mlflow_and_notebook_keys_are_validated(tmp_path, extra, key):
    from dataset_registry.project_config import ProjectConfigError, load_project

    path = project_with_train(tmp_path, "x:y")
    path.write_text(path.read_text().replace('train: "x:y"\n', extra + "\n"))
    with pytest.raises(ProjectConfigError) as err:
        load_project(path)
    assert f"key '{key}': " in str(err.value)
