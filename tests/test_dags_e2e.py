"""End to end: `airflow dags test version_<project>` for a test project, over the real sshd registry."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, plain_pull

pytestmark = pytest.mark.slow


def dags_test(env, conf: dict, cwd: Path, dag_id: str = "version_shop") -> subprocess.CompletedProcess:
    airflow = str(Path(sys.executable).parent / "airflow")
    return subprocess.run([airflow, "dags", "test", dag_id, "-c", json.dumps(conf)],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_scheduled_window_publishes_exact_bytes_and_rerun_changes_nothing(tmp_path, shop, registry, sshd):
    conf = {"start": "2024-05-01T00:00:00Z", "end": "2024-05-02T00:00:00Z"}
    proc = dags_test(shop, conf, tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert registry.tags() == ["shop/v20240502T000000"]
    expected = b'id,item,price,at\n1,tea,3.50,2024-05-01 10:00:00\n2,"",0.00,2024-05-01 11:00:00\n3,,9.99,2024-05-01 23:00:00\n'
    pulled = plain_pull(registry, sshd, "shop/v20240502T000000", tmp_path / "pull", "shop/orders.csv")
    assert pulled == expected
    commits = registry.commit_count()
    tag_commit = registry.git("rev-parse", "shop/v20240502T000000^{commit}")

    again = dags_test(shop, conf, tmp_path)
    assert again.returncode == 0, again.stdout[-4000:]
    assert "already published shop/v20240502T000000" in again.stdout + again.stderr
    assert "in the background: not fetched again" in again.stdout + again.stderr  # fetched during the export
    assert registry.commit_count() == commits
    assert registry.git("rev-parse", "shop/v20240502T000000^{commit}") == tag_commit


def test_version_param_names_the_tag(tmp_path, shop, registry):
    proc = dags_test(shop, {"version": "release-1.0", "start": "2024-05-02T00:00:00Z", "end": "2024-05-03T00:00:00Z"}, tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert registry.tags() == ["shop/release-1.0"]
    assert "rows: 1" in registry.git("tag", "-n9", "shop/release-1.0")


@pytest.mark.parametrize("bad", ["$(touch pwned)", "--upload-pack=touch pwned", "../x", "a b"])
def test_hostile_version_param_is_refused_before_any_git_call(tmp_path, shop, registry, bad):
    proc = dags_test(shop, {"version": bad, "start": "2024-05-01T00:00:00Z", "end": "2024-05-02T00:00:00Z"}, tmp_path)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "does not match" in out or "must match" in out
    assert registry.tags() == [] and registry.commit_count() == 0
    assert not (tmp_path / "pwned").exists() and not (REPO / "pwned").exists()
    assert not (tmp_path / "worker" / "clones").exists() or not any((tmp_path / "worker" / "clones").iterdir())


def test_empty_window_is_skipped_without_a_version(tmp_path, shop, registry):
    proc = dags_test(shop, {"start": "2023-01-01T00:00:00Z", "end": "2023-01-02T00:00:00Z"}, tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "no rows in window [2023-01-01 00:00:00, 2023-01-02 00:00:00)" in proc.stdout + proc.stderr
    assert registry.tags() == []


def test_inverted_window_is_refused(tmp_path, shop, registry):
    proc = dags_test(shop, {"start": "2024-05-02T00:00:00Z", "end": "2024-05-01T00:00:00Z"}, tmp_path)
    assert proc.returncode != 0 and "'start' must be before 'end'" in proc.stdout + proc.stderr
    assert registry.tags() == []


def test_an_arrow_preprocess_runs_in_the_dag_and_publishes_its_output(tmp_path, shop, registry, sshd):
    """``preprocess_api: arrow`` from the YAML to the pulled bytes, the tag's profile and the Asset event."""
    (tmp_path / "shopprep.py").write_text(
        "import pyarrow as pa, pyarrow.compute as pc\n"
        "def clean(batch):\n"
        "    item = pc.utf8_upper(batch.column('item'))\n"
        "    cents = pc.multiply(batch.column('price').cast(pa.decimal128(8, 2)), 100).cast(pa.int64())\n"
        "    return pa.RecordBatch.from_arrays([batch.column('id'), item, cents], names=['id', 'item', 'cents'])\n")
    yaml_path = tmp_path / "projects" / "shop.yaml"
    yaml_path.write_text(yaml_path.read_text() + "preprocess: shopprep:clean\npreprocess_api: arrow\nkey: [id]\n"
                         "checks:\n  unique: [id]\n  columns: {id: INT, item: VARCHAR, cents: BIGINT}\n")
    proc = dags_test(shop, {"start": "2024-05-01T00:00:00Z", "end": "2024-05-03T00:00:00Z"}, tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert registry.tags() == ["shop/v20240503T000000"]
    pulled = plain_pull(registry, sshd, "shop/v20240503T000000", tmp_path / "pull", "shop/orders.csv")
    assert pulled == b'id,item,cents\n1,TEA,350\n2,"",0\n3,,999\n4,"MUG ""XL""",1200\n'
    message = registry.git("tag", "-l", "--format=%(contents)", "shop/v20240503T000000")
    assert "rows: 4" in message and '"cents"' in message
    assert "preprocess" in proc.stdout + proc.stderr and "Arrow batches" in proc.stdout + proc.stderr


def model_db_rows(env, sql):
    import sqlite3

    with sqlite3.connect(env["MODEL_DB_PATH"]) as db:
        return db.execute(sql).fetchall()


def test_train_dag_pulls_the_version_and_records_one_experiment(tmp_path, shop, registry):
    assert dags_test(shop, {"start": "2024-05-01T00:00:00Z", "end": "2024-05-02T00:00:00Z"}, tmp_path).returncode == 0
    assert dags_test(shop, {"start": "2024-05-02T00:00:00Z", "end": "2024-05-03T00:00:00Z"}, tmp_path).returncode == 0
    recorded = model_db_rows(shop, "SELECT tag, rows FROM dataset_versions ORDER BY tag")
    assert recorded == [("shop/v20240502T000000", 3), ("shop/v20240503T000000", 1)]

    proc = dags_test(shop, {"version": "v20240502T000000"}, tmp_path, "train_shop")
    assert proc.returncode == 0, proc.stdout[-4000:]
    rows = model_db_rows(shop, "SELECT training_dataset, status, evaluations, dataset_md5, airflow_dag_id FROM experiments")
    assert len(rows) == 1
    tag, status, evaluations, md5, dag_id = rows[0]
    assert tag == "shop/v20240502T000000" and status == "succeeded" and dag_id == "train_shop"
    assert json.loads(evaluations) == {"rows": 3, "mean_price": pytest.approx((3.5 + 0 + 9.99) / 3)}
    assert md5 == model_db_rows(shop, "SELECT md5 FROM dataset_versions WHERE tag = 'shop/v20240502T000000'")[0][0]

    newest = dags_test(shop, {}, tmp_path, "train_shop")  # no param, no event: the newest version
    assert newest.returncode == 0, newest.stdout[-4000:]
    assert model_db_rows(shop, "SELECT training_dataset FROM experiments ORDER BY experiment_id")[-1][0] == "shop/v20240503T000000"


def test_train_callable_that_raises_leaves_a_failed_experiment(tmp_path, shop, registry):
    assert dags_test(shop, {"start": "2024-05-01T00:00:00Z", "end": "2024-05-02T00:00:00Z"}, tmp_path).returncode == 0
    proc = dags_test({**shop, "SHOP_TRAIN_FAIL": "1"}, {}, tmp_path, "train_shop")
    assert proc.returncode != 0 and "diverged" in proc.stdout + proc.stderr
    rows = model_db_rows(shop, "SELECT status, evaluations FROM experiments")
    assert len(rows) == 1 and rows[0][0] == "failed" and "diverged" in rows[0][1]


def test_train_with_unknown_version_lists_what_exists(tmp_path, shop, registry):
    assert dags_test(shop, {"start": "2024-05-01T00:00:00Z", "end": "2024-05-02T00:00:00Z"}, tmp_path).returncode == 0
    proc = dags_test(shop, {"version": "v1999"}, tmp_path, "train_shop")
    assert proc.returncode != 0
    assert "newest available: v20240502T000000" in proc.stdout + proc.stderr
    assert model_db_rows(shop, "SELECT count(*) FROM experiments") == [(0,)]


def rendered_fields(env, dag_id: str, task_id: str) -> dict:
    """The newest Rendered Template record of a task, as the UI's Rendered Template tab shows it."""
    import os
    import sqlite3

    db = Path(env.get("AIRFLOW_HOME") or os.environ["AIRFLOW_HOME"]) / "airflow.db"
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT rendered_fields FROM rendered_task_instance_fields WHERE dag_id = ? AND task_id = ? "
            "ORDER BY rowid DESC LIMIT 1", (dag_id, task_id)).fetchone()
    assert row, f"no rendered fields for {dag_id}.{task_id}"
    return json.loads(row[0])


def test_sql_file_query_is_resolved_and_the_sql_that_ran_is_in_rendered_template(tmp_path, shop, registry):
    """query: a .sql path (Airflow's template_ext) relative to the YAML; the Rendered Template tab then
    shows the exact SQL for the effective window (the trigger params' window, not the run's interval)."""
    import yaml

    yaml_file = Path(shop["DATASET_PROJECTS_DIR"]) / "shop.yaml"
    config = yaml.safe_load(yaml_file.read_text())
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "shop.sql").write_text(config["query"])
    config["query"] = "../sql/shop.sql"
    yaml_file.write_text(yaml.safe_dump(config))

    proc = dags_test(shop, {"version": "from-file", "start": "2024-05-02T00:00:00Z", "end": "2024-05-03T00:00:00Z"}, tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert registry.tags() == ["shop/from-file"]
    shown = rendered_fields(shop, "version_shop", "publish_version")["query"]
    assert "at >= '2024-05-02 00:00:00' AND at < '2024-05-03 00:00:00'" in shown, shown
    assert "{{" not in shown and "../sql" not in shown
