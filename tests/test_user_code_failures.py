"""User code and user input failing: fail at once (no retry), say what and where, leave nothing behind.

Real MariaDB, real sshd registry, real model DB (SQLite); the operators run in-process.
Cases 19 (ragged preprocess output), 20 (load errors retried, training row left `running`),
22 (a full copy of the dataset kept per train run) and 17 (version param "None" / "v1\\n").
"""
from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException

from dataset_registry.mysql_export import ExportError, export_query

SHOP_ENV_KEYS = ("DATASET_PROJECTS_DIR", "DATASET_WORK_DIR", "DATASET_DATA_DIR", "MODEL_DB_PATH",
                 "AIRFLOW_CONN_MYSQL_RAW", "AIRFLOW_CONN_DVC_REGISTRY")


@pytest.fixture
def shop_env(shop, monkeypatch, tmp_path):
    """The shop project's connections and folders in this process; yields (db name, include root)."""
    for key in SHOP_ENV_KEYS:
        monkeypatch.setenv(key, shop[key])
    monkeypatch.delenv("SHOP_TRAIN_FAIL", raising=False)
    db = json.loads(shop["AIRFLOW_CONN_MYSQL_RAW"])  # the SELECT-only account
    return SimpleNamespace(include=tmp_path, conn=db, env=shop)


def shop_db(shop_env) -> str:
    text = (shop_env.include / "projects" / "shop.yaml").read_text()
    return text.split("FROM ")[1].split(".orders")[0]


def version_op(shop_env, **kw):
    from dataset_registry.operators.version_dataset import VersionDatasetOperator

    db = shop_db(shop_env)
    args = dict(task_id="publish_version", project="shop", output_file="orders.csv",
                query=f"SELECT id, item, price, at FROM {db}.orders ORDER BY id", version="v1",
                start="2024-05-01T00:00:00Z", end="2024-05-03T00:00:00Z", preprocess_path=str(shop_env.include))
    args.update(kw)
    return VersionDatasetOperator(**args)


CONTEXT = {"data_interval_start": None, "data_interval_end": None}


def write_module(root: Path, body: str) -> str:
    name = f"usercode_{uuid.uuid4().hex[:8]}"
    (root / f"{name}.py").write_text(body)
    return name


# --------------------------------------------------------------- case 19: ragged preprocess output
def test_preprocess_with_different_columns_per_chunk_is_refused(tmp_path, mysql_params, mysql_db):
    name, connect = mysql_db
    calls = []

    def ragged(frame):
        calls.append(len(frame))
        out = frame.copy()
        if len(calls) == 2:
            out["extra"] = 1  # chunk 2 grows a column
        return out

    dest = tmp_path / "out" / "r.csv"
    dest.parent.mkdir()
    with pytest.raises(ExportError) as err:
        export_query({**mysql_params, "db": name}, "SELECT seq AS n, seq * 2 AS m FROM seq_1_to_10 ORDER BY seq",
                     dest, preprocess=ragged, fetch_rows=4)
    assert str(err.value) == (
        f"preprocess {__name__}:test_preprocess_with_different_columns_per_chunk_is_refused.<locals>.ragged "
        "returned different columns on chunk 2 (rows 5-8): expected ['n', 'm'] (the header, from chunk 1), "
        "got ['n', 'm', 'extra']. A preprocess must return the same columns in the same order for every chunk.")
    assert err.value.retryable is False
    assert list(dest.parent.iterdir()) == []  # no CSV, no .partial


def test_preprocess_with_reordered_columns_is_refused(tmp_path, mysql_params, mysql_db):
    name, _ = mysql_db
    state = {"n": 0}

    def reorder(frame):
        state["n"] += 1
        return frame[["m", "n"]] if state["n"] == 3 else frame

    with pytest.raises(ExportError) as err:
        export_query({**mysql_params, "db": name}, "SELECT seq AS n, seq * 2 AS m FROM seq_1_to_10 ORDER BY seq",
                     tmp_path / "r.csv", preprocess=reorder, fetch_rows=4)
    assert "on chunk 3 (rows 9-10): expected ['n', 'm'] (the header, from chunk 1), got ['m', 'n']" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_exception_inside_preprocess_is_permanent_and_names_the_callable(tmp_path, mysql_params, mysql_db):
    name, _ = mysql_db

    def broken(frame):
        return frame["no_such_column"]

    with pytest.raises(ExportError) as err:
        export_query({**mysql_params, "db": name}, "SELECT seq AS n FROM seq_1_to_3 ORDER BY seq",
                     tmp_path / "b.csv", preprocess=broken)
    assert str(err.value).startswith(
        f"preprocess {__name__}:test_exception_inside_preprocess_is_permanent_and_names_the_callable.<locals>.broken "
        "raised KeyError on chunk 1 (rows 1-3): 'no_such_column'")
    assert err.value.retryable is False and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------- case 20: the version operator
def test_preprocess_that_cannot_be_loaded_fails_at_once(shop_env, registry):
    module = write_module(shop_env.include, "def clean(frame):\n    return frame\n")
    with pytest.raises(AirflowFailException) as err:
        version_op(shop_env, preprocess=f"{module}:clen").execute(dict(CONTEXT))
    assert str(err.value).startswith(f"cannot load preprocess: callable '{module}:clen': ")
    assert "defines no 'clen'" in str(err.value)
    assert registry.tags() == []


def test_preprocess_that_raises_fails_without_retry_and_publishes_nothing(shop_env, registry):
    module = write_module(shop_env.include, "def clean(frame):\n    raise ValueError('bad price ' + str(len(frame)))\n")
    with pytest.raises(AirflowFailException) as err:
        version_op(shop_env, preprocess=f"{module}:clean").execute(dict(CONTEXT))
    assert str(err.value) == f"preprocess {module}:clean raised ValueError on chunk 1 (rows 1-4): bad price 4"
    assert registry.tags() == [] and registry.commit_count() == 0


# --------------------------------------------------------------- case 17: the version param as given
@pytest.mark.parametrize("bad", ["None", "v1\n", " v1", "v1 ", "v\t1"])
def test_version_param_is_used_as_given_and_refused_with_the_rule(shop_env, registry, bad):
    with pytest.raises(AirflowFailException) as err:
        version_op(shop_env, version=bad).execute(dict(CONTEXT))
    assert f"invalid version {bad!r}: it must match ^[A-Za-z0-9][A-Za-z0-9._-]{{0,63}}$" in str(err.value)
    assert registry.tags() == []


# --------------------------------------------------------------- cases 20 and 22: the train operator
def train_op(shop_env, spec="shoptrain:fit"):
    from dataset_registry.operators.train_model import TrainModelOperator

    return TrainModelOperator(task_id="train_model", project="shop", output_file="orders.csv",
                              asset_uri="dvc://registry/shop", version="v1", train_callable=spec,
                              include_path=str(shop_env.include))


def train_context(run_id="manual__1"):
    return {"dag": SimpleNamespace(dag_id="train_shop"), "run_id": run_id, "triggering_asset_events": {}}


def experiments(shop_env):
    with sqlite3.connect(shop_env.env["MODEL_DB_PATH"]) as db:
        try:
            return db.execute("SELECT status, evaluations FROM experiments ORDER BY experiment_id").fetchall()
        except sqlite3.OperationalError:  # no table yet: nothing was ever written
            return []


def run_dir(shop_env, run_id="manual__1") -> Path:
    return Path(shop_env.env["DATASET_DATA_DIR"]) / "train_shop" / run_id


@pytest.fixture
def published(shop_env, registry):
    version_op(shop_env).execute(dict(CONTEXT))
    assert registry.tags() == ["shop/v1"]
    return shop_env


def test_train_callable_that_cannot_be_loaded_fails_before_any_row_or_pull(published):
    with pytest.raises(AirflowFailException) as err:
        train_op(published, "shoptrain:fitt").execute(train_context())
    assert str(err.value).startswith("cannot load the train callable: callable 'shoptrain:fitt': ")
    assert experiments(published) == []  # no row left 'running' forever
    assert not (run_dir(published) / "orders.csv").exists()


def test_train_callable_that_raises_marks_the_row_failed_and_does_not_retry(published, monkeypatch):
    monkeypatch.setenv("SHOP_TRAIN_FAIL", "1")
    with pytest.raises(AirflowFailException) as err:
        train_op(published).execute(train_context())
    assert str(err.value).startswith("train callable shoptrain:fit failed on shop/v1: RuntimeError: diverged")
    rows = experiments(published)
    assert [r[0] for r in rows] == ["failed"] and json.loads(rows[0][1]) == {"error": "RuntimeError: diverged"}
    assert not (run_dir(published) / "orders.csv").exists()  # deleted on failure too


def test_train_run_keeps_artifacts_but_not_a_copy_of_the_data(published):
    summary = train_op(published).execute(train_context("manual__2"))
    assert summary["training_dataset"] == "shop/v1" and summary["evaluations"]["rows"] == 4
    assert [r[0] for r in experiments(published)] == ["succeeded"]
    work = run_dir(published, "manual__2")
    assert (work / "artifacts").is_dir()
    assert sorted(p.name for p in work.iterdir()) == ["artifacts"]  # the data file is gone


def test_rows_count_what_the_preprocess_wrote_not_what_was_read(tmp_path, mysql_params, mysql_db):
    from dataset_registry.mysql_export import export_query

    name, connect = mysql_db
    conn = connect()
    conn.cursor().execute("CREATE TABLE r (id INT PRIMARY KEY, v VARCHAR(5))")
    conn.cursor().execute("INSERT INTO r VALUES (1,'a'),(2,'b'),(3,'c')")
    conn.close()
    sql = "SELECT id, v FROM r ORDER BY id"
    dropped = export_query({**mysql_params, "db": name}, sql, tmp_path / "none.csv",
                           preprocess=lambda df: df[df.id == "nope"])
    assert dropped.rows == 0 and (tmp_path / "none.csv").read_bytes() == b"id,v\n"  # -> the run is skipped
    kept = export_query({**mysql_params, "db": name}, sql, tmp_path / "two.csv", fetch_rows=2,
                        preprocess=lambda df: df[df.id != "2"])
    assert kept.rows == 2 and (tmp_path / "two.csv").read_bytes() == b"id,v\n1,a\n3,c\n"
