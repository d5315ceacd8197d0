"""The model DB on real PostgreSQL and on the SQLite default."""
import sqlalchemy as sa
import pytest

from dataset_registry.model_db import ModelDB, ModelDbError


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request, tmp_path):
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_database")
    else:
        url = f"sqlite:///{tmp_path / 'model.sqlite'}"
    database = ModelDB(url)
    yield database
    database.engine.dispose()


def test_schema_is_created_with_the_contract_tables(db):
    db.ensure_schema()
    inspector = sa.inspect(db.engine)
    assert {"projects", "models", "experiments", "dataset_versions"} <= set(inspector.get_table_names())
    cols = {c["name"] for c in inspector.get_columns("experiments")}
    assert {"parameters", "training_dataset", "validation_dataset", "test_dataset", "evaluations",
            "artifact_file_paths", "created_datetime", "model_version_id", "airflow_run_id"} <= cols
    assert {c["name"] for c in inspector.get_columns("dataset_versions")} >= {
        "project", "version", "tag", "md5", "rows", "bytes", "commit", "created"}
    assert inspector.get_foreign_keys("experiments")[0]["referred_table"] == "models"


def test_get_or_create_is_idempotent(db):
    p1 = db.get_or_create_project("shop")
    assert db.get_or_create_project("shop") == p1
    m1 = db.get_or_create_model(p1, "baseline")
    assert db.get_or_create_model(p1, "baseline") == m1
    assert db.get_or_create_model(db.get_or_create_project("other"), "baseline") != m1


def test_experiment_keyed_on_airflow_run_and_json_merge(db):
    model = db.get_or_create_model(db.get_or_create_project("shop"), "baseline")
    key = dict(model_id=model, model_version_id="r1", training_dataset="shop/v1", dataset_md5="a" * 32,
               airflow_dag_id="train_shop", airflow_run_id="manual__1")
    e1 = db.upsert_experiment(**key, parameters={"lr": 0.1})
    assert db.upsert_experiment(**key, parameters={"lr": 0.2}) == e1  # same run: same row
    db.update_experiment(e1, evaluations={"mae": 1.5}, artifact_file_paths={"model": "/m.pkl"})
    row = db.update_experiment(e1, evaluations={"rmse": 2.0}, status="succeeded")
    assert row["evaluations"] == {"mae": 1.5, "rmse": 2.0}  # merged, not overwritten
    assert row["artifact_file_paths"] == {"model": "/m.pkl"} and row["parameters"] == {"lr": 0.2}
    assert row["status"] == "succeeded"
    other = db.upsert_experiment(**{**key, "airflow_run_id": "manual__2", "training_dataset": "shop/v2"})
    assert other != e1
    assert [e["experiment_id"] for e in db.list_experiments(project="shop")] == [other, e1]
    assert [e["experiment_id"] for e in db.list_experiments(training_dataset="shop/v1")] == [e1]
    assert db.list_experiments(project="shop", model="baseline", model_version_id="r1")[0]["project_name"] == "shop"
    assert db.list_experiments(project="nope") == []


def test_dataset_version_record_is_idempotent_and_refuses_other_md5(db):
    args = dict(project="shop", version="v1", tag="shop/v1", md5="a" * 32, rows=3, bytes=10, commit="c" * 40)
    first = db.record_dataset_version(**args)
    assert db.record_dataset_version(**args) == first
    with db.engine.begin() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM dataset_versions")).scalar() == 1
    with pytest.raises(ModelDbError, match="already records shop/v1"):
        db.record_dataset_version(**{**args, "md5": "b" * 32})


def test_schema_upgrade_adds_columns_without_losing_rows(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # an older schema: no status / airflow ids
        conn.execute(sa.text("CREATE TABLE projects (project_id INTEGER PRIMARY KEY, project_name VARCHAR(64) UNIQUE NOT NULL, description TEXT, created_datetime TIMESTAMP NOT NULL)"))
        conn.execute(sa.text("CREATE TABLE models (model_id INTEGER PRIMARY KEY, project_id INTEGER NOT NULL REFERENCES projects(project_id), model_name VARCHAR(128) NOT NULL, description TEXT, created_datetime TIMESTAMP NOT NULL)"))
        conn.execute(sa.text("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY, model_id INTEGER NOT NULL, model_version_id VARCHAR(128) NOT NULL, parameters JSON, training_dataset TEXT, validation_dataset TEXT, test_dataset TEXT, evaluations JSON, artifact_file_paths JSON, created_datetime TIMESTAMP NOT NULL)"))
        conn.execute(sa.text("INSERT INTO projects VALUES (1, 'legacy', NULL, '2024-01-01 00:00:00')"))
        conn.execute(sa.text("INSERT INTO models VALUES (1, 1, 'old', NULL, '2024-01-01 00:00:00')"))
        conn.execute(sa.text("INSERT INTO experiments VALUES (1, 1, 'v0', '{}', 'legacy/v0', NULL, NULL, '{}', '{}', '2024-01-01 00:00:00')"))
    db = ModelDB(url)
    db.ensure_schema()
    rows = db.list_experiments(project="legacy")
    assert len(rows) == 1 and rows[0]["training_dataset"] == "legacy/v0" and "airflow_run_id" in rows[0]
    assert "dataset_versions" in sa.inspect(db.engine).get_table_names()


def test_unreachable_database_is_a_clear_error(tmp_path):
    from conftest import free_port

    db = ModelDB(f"postgresql+psycopg2://x:y@127.0.0.1:{free_port()}/nope", connect_args={"connect_timeout": 3})
    with pytest.raises(sa.exc.OperationalError, match="127.0.0.1"):
        db.ensure_schema()


def test_concurrent_schema_upgrades_both_succeed(db, monkeypatch):
    """Two workers upgrading an old schema at once (both inspected it before either altered it):
    neither fails, on PostgreSQL (ADD COLUMN IF NOT EXISTS) nor SQLite (duplicate column = done)."""
    import threading

    db.ensure_schema()
    with db.engine.begin() as conn:  # an older dataset_versions: without the profile columns
        for column in ("window_start", "window_end", "columns", "profile"):
            conn.execute(sa.text(f'ALTER TABLE dataset_versions DROP COLUMN "{column}"'))
    real_inspect, both_inspected = sa.inspect, threading.Barrier(2, timeout=30)

    def inspect_then_wait(engine):
        inspector = real_inspect(engine)
        inspector.get_columns("dataset_versions")
        both_inspected.wait()  # the narrow race: each saw the columns missing
        return inspector

    monkeypatch.setattr(sa, "inspect", inspect_then_wait)
    workers = [ModelDB(db.engine.url) for _ in range(2)]
    errors: list = []

    def upgrade(worker):
        try:
            worker.ensure_schema()
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    monkeypatch.setattr(sa, "inspect", real_inspect)
    assert errors == []
    present = {c["name"] for c in sa.inspect(db.engine).get_columns("dataset_versions")}
    assert {"window_start", "window_end", "columns", "profile"} <= present
    for worker in workers:
        worker.engine.dispose()
