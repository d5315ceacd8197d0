"""A project's query and version template see only the window and the trigger params: never Airflow
connections, variables or the task context (a YAML must not be able to copy a secret into a CSV or a
tag name, where no log masker sees it)."""
import json
from datetime import datetime, timezone

import pytest

from dataset_registry.window import SqlDateTime, TemplateError, render_window_template

START = SqlDateTime.of(datetime(2024, 3, 1, tzinfo=timezone.utc))
END = SqlDateTime.of(datetime(2024, 3, 2, tzinfo=timezone.utc))


def test_window_names_and_filters_render():
    text = ("{{ data_interval_start }}|{{ data_interval_end | ts_nodash }}|{{ window_start | ds }}|"
            "{{ window_end | ds_nodash }}|{{ params.version or '' }}")
    assert render_window_template(text, START, END, {"version": "v7"}) == \
        "2024-03-01 00:00:00|20240302T000000|2024-03-01|20240302|v7"


@pytest.mark.parametrize("hostile", [
    "SELECT '{{ conn.dvc_registry.password }}' AS leaked",
    "v{{ var.value.secret }}",
    "{{ ti.xcom_pull(task_ids='x') }}",
    "{{ macros.datetime }}",
    "{{ params.__class__.__mro__ }}",
    "{{ data_interval_start.__class__.__init__.__globals__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% set x = params.update({'a': 1}) %}",
])
def test_context_secrets_and_internals_are_out_of_reach(hostile, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_DVC_REGISTRY", json.dumps({"conn_type": "generic", "password": "S3cr3t-Pw"}))
    with pytest.raises(TemplateError) as err:
        render_window_template(hostile, START, END, {"version": None})
    assert "S3cr3t-Pw" not in str(err.value)


def test_the_operator_fails_at_once_when_a_query_reaches_for_a_connection(tmp_path, monkeypatch):
    import subprocess

    from airflow.sdk.exceptions import AirflowFailException

    from dataset_registry.operators.version_dataset import VersionDatasetOperator

    monkeypatch.setenv("AIRFLOW_CONN_DVC_REGISTRY", json.dumps({"conn_type": "generic", "password": "S3cr3t-Pw"}))
    monkeypatch.setenv("DATASET_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("subprocess called")))

    class Accessor:  # what Airflow puts in the context as `conn`
        def __getattr__(self, name):
            return type("C", (), {"password": "S3cr3t-Pw"})()

    context = {"conn": Accessor(), "params": {}, "data_interval_start": None, "data_interval_end": None}
    for kwargs in ({"query": "SELECT '{{ conn.dvc_registry.password }}' AS leaked"},
                   {"query": "SELECT 1", "version": "", "version_template": "v{{ conn.dvc_registry.password }}"}):
        op = VersionDatasetOperator(task_id="t", project="shop", output_file="o.csv", start="2024-03-01",
                                    end="2024-03-02", **{"version": "v1", **kwargs})
        with pytest.raises(AirflowFailException) as err:
            op.execute(context)
        assert "'conn' is undefined" in str(err.value) and "S3cr3t-Pw" not in str(err.value)
