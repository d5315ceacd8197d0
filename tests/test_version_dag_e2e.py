"""End to end: `airflow dags test version_<project>` for a test project, over the real sshd registry."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MYSQL_PASSWORD, MYSQL_USER, REPO, plain_pull

pytestmark = pytest.mark.slow


@pytest.fixture
def shop(tmp_path, mysql_db, registry):
    """A `shop` project over a fresh database, with its own projects folder and connections."""
    db, connect = mysql_db
    conn = connect()
    cur = conn.cursor()
    cur.execute("CREATE TABLE orders (id INT PRIMARY KEY, item VARCHAR(50) NULL, price DECIMAL(8,2), at DATETIME NOT NULL)")
    cur.executemany("INSERT INTO orders VALUES (%s,%s,%s,%s)", [
        (1, "tea", "3.50", "2024-05-01 10:00:00"), (2, "", "0.00", "2024-05-01 11:00:00"),
        (3, None, "9.99", "2024-05-01 23:00:00"), (4, 'mug "xl"', "12.00", "2024-05-02 09:00:00"),
    ])
    conn.close()
    projects = tmp_path / "projects"
    projects.mkdir()
    (projects / "shop.yaml").write_text(
        "project: shop\nschedule: '0 0 * * *'\noutput: orders.csv\nretries: 0\n"
        f"query: |\n  SELECT id, item, price, at FROM {db}.orders\n"
        "  WHERE at >= '{{ data_interval_start }}' AND at < '{{ data_interval_end }}'\n  ORDER BY id\n"
    )
    env = {
        **os.environ,
        "DATASET_PROJECTS_DIR": str(projects),
        "DATASET_WORK_DIR": str(tmp_path / "worker"),
        "DATASET_DATA_DIR": str(tmp_path / "runs"),
        "MODEL_DB_PATH": str(tmp_path / "model_db.sqlite"),
        "AIRFLOW_CONN_MYSQL_RAW": json.dumps({"conn_type": "mysql", "host": "127.0.0.1", "port": 3306,
                                              "login": MYSQL_USER, "password": MYSQL_PASSWORD}),
        "AIRFLOW_CONN_DVC_REGISTRY": registry.conn_json(),
    }
    return env


def dags_test(env, conf: dict, cwd: Path) -> subprocess.CompletedProcess:
    airflow = str(Path(sys.executable).parent / "airflow")
    return subprocess.run([airflow, "dags", "test", "version_shop", "-c", json.dumps(conf)],
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
