import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dataset_registry.project_config import ProjectConfigError, load_project, load_projects

REPO = Path(__file__).resolve().parents[1]
GOOD = """\
project: {name}
schedule: "@daily"
query: SELECT 1 AS x ORDER BY 1
output: train.csv
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_minimal_project_gets_defaults(tmp_path):
    cfg = load_project(write(tmp_path, "sales", GOOD.format(name="sales")))
    assert cfg.project == "sales" and cfg.output == "train.csv" and cfg.schedule == "@daily"
    assert cfg.version_template == "v{{ data_interval_end | ts_nodash }}"
    assert cfg.mysql_conn_id == "mysql_raw" and cfg.registry_conn_id == "dvc_registry"


@pytest.mark.parametrize("key", ["project", "schedule", "query", "output"])
def test_missing_required_key_names_file_and_key(tmp_path, key):
    text = "\n".join(line for line in GOOD.format(name="p").splitlines() if not line.startswith(key + ":"))
    path = write(tmp_path, "p", text)
    with pytest.raises(ProjectConfigError) as err:
        load_project(path)
    assert str(path) in str(err.value) and f"'{key}'" in str(err.value) and "missing" in str(err.value)


def test_unknown_key_is_refused(tmp_path):
    path = write(tmp_path, "p", GOOD.format(name="p") + "schedul: '@hourly'\n")
    with pytest.raises(ProjectConfigError, match="key 'schedul': unknown key"):
        load_project(path)


@pytest.mark.parametrize("line,key", [
    ("output: ../escape.csv", "output"),
    ("schedule: '@once'", "schedule"),
    ("schedule: 'every day'", "schedule"),
    ("preprocess: 'os.system'", "preprocess"),
    ("version_template: '$(touch x)'", "version_template"),
    ("query: ../../../etc/passwd.sql", "query"),
    ("retries: -1", "retries"),
    ("preprocess_api: polars", "preprocess_api"),
    ("preprocess_api: [arrow]", "preprocess_api"),
])
def test_bad_values_name_the_key(tmp_path, line, key):
    base = GOOD.format(name="p")
    k = line.split(":")[0]
    text = "\n".join(l for l in base.splitlines() if not l.startswith(k + ":")) + "\n" + line + "\n"
    with pytest.raises(ProjectConfigError, match=f"key '{key}'"):
        load_project(write(tmp_path, "p", text))


def test_project_name_must_match_file(tmp_path):
    with pytest.raises(ProjectConfigError, match="file name stem"):
        load_project(write(tmp_path, "other", GOOD.format(name="sales")))


def test_one_bad_file_does_not_hide_the_others(tmp_path):
    write(tmp_path, "good", GOOD.format(name="good"))
    write(tmp_path, "bad", "project: bad\n")
    configs, errors = load_projects(tmp_path)
    assert [c.project for c in configs] == ["good"]
    assert len(errors) == 1 and "bad.yaml" in str(errors[0])


def _dagbag(projects_dir: Path) -> str:
    code = textwrap.dedent(f"""
        import os, sys, json
        os.environ["DATASET_PROJECTS_DIR"] = {str(projects_dir)!r}
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag({str(REPO / 'dags')!r})
        out = {{d: (bag.dags[d].description or "") for d in bag.dag_ids}}
        heavy = sorted(m for m in ("pandas", "dvc", "MySQLdb", "pyarrow") if m in sys.modules)
        print(json.dumps({{"dags": out, "errors": {{k: str(v) for k, v in bag.import_errors.items()}}, "heavy": heavy}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_dag_folder_parses_one_dag_per_project_without_heavy_imports(tmp_path):
    import json

    write(tmp_path, "alpha", GOOD.format(name="alpha"))
    write(tmp_path, "beta", GOOD.format(name="beta").replace('"@daily"', "null"))
    write(tmp_path, "broken", "project: broken\nschedule: null\n")
    result = json.loads(_dagbag(tmp_path))
    assert result["errors"] == {}
    assert {"version_alpha", "version_beta", "config_error_broken"} <= set(result["dags"])
    assert "'query': required key is missing" in result["dags"]["config_error_broken"]
    assert result["heavy"] == [], f"DAG parsing imported heavy modules: {result['heavy']}"


def test_dag_shape_params_and_timetable(tmp_path, monkeypatch):
    from airflow.sdk import CronDataIntervalTimetable

    from dataset_registry.dag_factory import build_version_dag

    cfg = load_project(write(tmp_path, "alpha", GOOD.format(name="alpha")))
    dag = build_version_dag(cfg)
    assert dag.dag_id == "version_alpha"
    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert set(dag.params.keys()) == {"version", "start", "end"}
    task = dag.get_task("publish_version")
    assert set(task.template_fields) >= {"project", "version", "start", "end"}
    assert [o.uri for o in task.outlets] == ["dvc://registry/alpha"]
    assert "dataset-versioning" in dag.tags and dag.doc_md


def test_preprocess_api_defaults_to_pandas_and_takes_arrow(tmp_path):
    assert load_project(write(tmp_path, "p", GOOD.format(name="p"))).preprocess_api == "pandas"
    cfg = load_project(write(tmp_path, "q", GOOD.format(name="q") + "preprocess_api: arrow\n"))
    assert cfg.preprocess_api == "arrow"
