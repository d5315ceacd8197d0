"""No silent per-worker state: without a ``model_db`` connection the embedded SQLite fallback is
only used on single-machine executors; on a distributed one the hook refuses, naming the fix."""
import pytest

from dataset_registry.hooks.model_db_hook import ModelDbHook, ModelDbNotConfigured
from dataset_registry.model_db import ModelDbError


@pytest.fixture
def no_model_db(monkeypatch, tmp_path):
    monkeypatch.delenv("AIRFLOW_CONN_MODEL_DB", raising=False)
    monkeypatch.setenv("MODEL_DB_PATH", str(tmp_path / "model_db.sqlite"))
    return tmp_path / "model_db.sqlite"


@pytest.mark.parametrize("executor", [
    "CeleryExecutor",
    "KubernetesExecutor",
    "airflow.providers.celery.executors.celery_executor.CeleryExecutor",
    "LocalExecutor,CeleryExecutor",
    "fast:LocalExecutor, remote:airflow.providers.cncf.kubernetes.executors.kubernetes_executor.KubernetesExecutor",
])
def test_missing_model_db_on_a_distributed_executor_is_a_clear_error(monkeypatch, no_model_db, executor):
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", executor)
    with pytest.raises(ModelDbNotConfigured) as err:
        ModelDbHook().get_conn()
    message = str(err.value)
    assert "'model_db' is not defined" in message
    assert ("Celery" in executor and "CeleryExecutor" in message) or "KubernetesExecutor" in message
    assert "LocalExecutor" not in message  # names the offending executor, not the harmless one
    assert "postgres connection 'model_db'" in message and "AIRFLOW_CONN_MODEL_DB" in message
    assert isinstance(err.value, ModelDbError)
    assert not no_model_db.exists()  # no private SQLite file was made


@pytest.mark.parametrize("executor", ["LocalExecutor", "SequentialExecutor",
                                      "airflow.executors.local_executor.LocalExecutor"])
def test_single_machine_executors_keep_the_embedded_sqlite_default(monkeypatch, no_model_db, executor):
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", executor)
    assert str(ModelDbHook().sqlalchemy_url()) == f"sqlite:///{no_model_db}"


def test_a_defined_model_db_is_used_on_any_executor(monkeypatch, no_model_db, tmp_path):
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    monkeypatch.setenv("AIRFLOW_CONN_MODEL_DB", '{"conn_type": "postgres", "host": "db", "login": "u", "schema": "models"}')
    url = ModelDbHook().sqlalchemy_url()
    assert (url.host, url.database, url.username) == ("db", "models", "u")
