"""Quality checks before publish: the YAML keys are validated, every check fails and passes, `warn`
publishes, an unsorted stream is refused for `unique`, and a failed check publishes nothing (no tag,
no commit, no DVC object), without retry."""
from datetime import datetime, timezone
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from dataset_registry.checks import evaluate, validate_checks
from dataset_registry.project_config import ProjectConfigError, load_project

SHOP_SQL = ("SELECT id, item, price, at FROM {db}.orders WHERE at >= '{{{{ data_interval_start }}}}' "
            "AND at < '{{{{ data_interval_end }}}}' ORDER BY {order}")


# ---------------------------------------------------------------- the YAML
def write_project(tmp_path: Path, extra: str) -> Path:
    folder = tmp_path / "projects"
    folder.mkdir(exist_ok=True)
    path = folder / "shop.yaml"
    path.write_text("project: shop\nschedule: null\nquery: SELECT 1\noutput: o.csv\n" + extra)
    return path


def test_checks_and_key_load_from_yaml(tmp_path):
    cfg = load_project(write_project(tmp_path, (
        "key: [id]\nchecks:\n  columns: {id: int, item: VARCHAR}\n  min_rows: 1\n  max_rows: 100\n"
        "  not_null: [id]\n  max_null_share: {item: 0.5}\n  max_rows_change: 0.5\n  mode: warn\n")))
    assert cfg.key == ["id"] and cfg.checks["mode"] == "warn"
    normalized, problems = validate_checks(cfg.checks, cfg.key)
    assert problems == [] and normalized["unique"] == ["id"]  # unique defaults to the key
    assert normalized["columns"] == [["id", "INT"], ["item", "VARCHAR"]]


def test_every_bad_check_is_named_at_once(tmp_path):
    with pytest.raises(ProjectConfigError) as err:
        load_project(write_project(tmp_path, (
            "key: id\nchecks:\n  min_row: 1\n  max_rows: -1\n  not_null: id\n  unique: []\n"
            "  max_null_share: {item: 1.5}\n  max_rows_change: yes\n  mode: loud\n  columns: [a, a]\n")))
    text = str(err.value)
    for expected in ("key 'key': must be a list", "key 'checks.min_row': unknown check; did you mean 'min_rows'?",
                     "key 'checks.max_rows': must be a whole number", "key 'checks.not_null': must be a list",
                     "key 'checks.unique': must be a list", "key 'checks.max_null_share': item: must be a fraction",
                     "key 'checks.max_rows_change': must be a fraction", "key 'checks.mode': must be 'fail'",
                     "key 'checks.columns': must be a list of column names"):
        assert expected in text, text
    with pytest.raises(ProjectConfigError, match="key 'checks': must be a mapping"):
        load_project(write_project(tmp_path, "checks: [min_rows]\n"))


# ---------------------------------------------------------------- evaluation, check by check
PROFILE = {"id": {"type": "INT", "nulls": 0}, "item": {"type": "VARCHAR", "nulls": 1}, "price": {"type": "DECIMAL", "nulls": 0}}
COLUMNS = ["id", "item", "price"]
SORTED = {"columns": ["id"], "missing": [], "nulls": 0, "duplicates": 0, "unsorted": 0, "example": None}


def run(checks, rows=4, key_facts=SORTED, previous_rows=None, key=None):
    normalized, problems = validate_checks(checks, key)
    assert problems == []
    return evaluate(normalized, rows=rows, columns=COLUMNS, profile=PROFILE, key_facts=key_facts,
                    previous_rows=previous_rows, previous_version="shop/v0" if previous_rows is not None else None)


@pytest.mark.parametrize("checks, failure", [
    ({"columns": ["id", "item"]}, "columns: columns are ['id', 'item', 'price'], expected ['id', 'item'] (unexpected ['price'])"),
    ({"columns": ["id", "price", "item"]}, "same names in another order"),
    ({"columns": {"id": "INT", "item": "VARCHAR", "price": "DOUBLE"}}, "column 'price' has type DECIMAL, expected DOUBLE"),
    ({"min_rows": 5}, "min_rows: 4 rows, allowed at least 5"),
    ({"max_rows": 3}, "max_rows: 4 rows, allowed at most 3"),
    ({"not_null": ["item"]}, "not_null: column 'item' has 1 NULL value(s), allowed 0"),
    ({"max_null_share": {"item": 0.2}}, "max_null_share: column 'item' is 25% NULL (1 of 4 rows), allowed at most 20%"),
    ({"max_rows_change": 0.5}, "max_rows_change: 4 rows vs 10 in the previous version shop/v0 (-60%), allowed at most 50% change"),
])
def test_each_check_fails_with_measured_and_allowed_values(checks, failure):
    report = run(checks, previous_rows=10)
    assert not report.ok and report.errors == []
    assert any(failure in f for f in report.failures), report.failures


@pytest.mark.parametrize("checks", [
    {"columns": ["id", "item", "price"]}, {"columns": {"id": "int", "item": "VARCHAR", "price": "DECIMAL"}},
    {"min_rows": 4, "max_rows": 4}, {"not_null": ["id", "price"]}, {"max_null_share": {"item": 0.25}},
    {"max_rows_change": 0.6}, {"unique": ["id"]},
])
def test_each_check_passes(checks):
    report = run(checks, previous_rows=10)
    assert report.ok, report.failures + report.errors


def test_unique_defaults_to_key_and_reports_duplicates_nulls_and_disorder():
    assert run({"min_rows": 0}, key=["id"]).passed == ["min_rows", "unique"]
    dup = run({"unique": ["id"]}, key_facts={**SORTED, "duplicates": 2, "nulls": 1})
    assert dup.failures == ["unique (id): 2 duplicate key(s) and 1 NULL key value(s), allowed 0"]
    unsorted = run({}, key=["id"], key_facts={**SORTED, "unsorted": 1, "example": [["5"], ["3"]]})
    assert "not sorted by the key (e.g. ['5'] comes before ['3'])" in unsorted.failures[0]
    assert "ORDER BY id" in unsorted.failures[0]


def test_columns_not_in_the_result_are_errors_naming_them():
    report = run({"not_null": ["nope"], "max_null_share": {"ghost": 0.1}, "unique": ["id", "missing"]})
    assert len(report.errors) == 3
    assert "not_null: column(s) 'nope' not in the result (columns: id, item, price)" in report.errors[0]
    assert "'ghost'" in report.errors[1] and "'missing'" in report.errors[2]


def test_no_previous_version_passes_max_rows_change():
    assert run({"max_rows_change": 0.1}).passed == ["max_rows_change (no previous version)"]


def test_unique_is_tracked_on_a_preprocess_output(tmp_path, mysql_params, mysql_db):
    from dataset_registry.mysql_export import export_query

    name, _ = mysql_db

    def prep(frame):
        out = frame.copy()
        out["bucket"] = out["n"].astype(int) // 3  # int64, created here: 0,0,1,1,1,2,...
        return out

    sql = "SELECT seq AS n FROM seq_1_to_10 ORDER BY seq"
    res = export_query({**mysql_params, "db": name}, sql, tmp_path / "a.csv", preprocess=prep,
                       unique_key=["n"], fetch_rows=3)
    assert res.key_facts["duplicates"] == 0 and res.key_facts["unsorted"] == 0
    res = export_query({**mysql_params, "db": name}, sql, tmp_path / "b.csv", preprocess=prep,
                       unique_key=["bucket"], fetch_rows=3)
    assert res.key_facts["duplicates"] == 6 and res.key_facts["unsorted"] == 0  # 10 rows, 4 distinct buckets
    assert res.profile["bucket"]["type"] == "BIGINT" and res.profile["bucket"]["max"] == "3"


# ---------------------------------------------------------------- the operator, on real parts
class _MySql:
    def __init__(self, params):
        self.params = params

    def connect_params(self):
        return dict(self.params)


class _Registry:
    def __init__(self, registry):
        from dataset_registry.registry import RegistryClient

        self.settings = registry.settings()
        self.client = RegistryClient(self.settings)

    def get_conn(self):
        return self.client


def publish(mysql_params, mysql_db, registry, *, checks=None, key=None, version="v1", day=1, order="id"):
    """VersionDatasetOperator.execute over the shop table for one day, with these checks."""
    from dataset_registry.operators.version_dataset import VersionDatasetOperator

    db, _ = mysql_db
    op = VersionDatasetOperator(task_id="publish", project="shop", output_file="orders.csv",
                                query=SHOP_SQL.format(db=db, order=order), version=version,
                                start=f"2024-05-0{day}T00:00:00Z", end=f"2024-05-0{day + 1}T00:00:00Z",
                                key=key, checks=checks, mysql_hook=_MySql({**mysql_params, "db": db}),
                                registry_hook=_Registry(registry))
    start = datetime(2024, 5, day, tzinfo=timezone.utc)
    return op.execute({"params": {}, "data_interval_start": start, "data_interval_end": start})


def remote_objects(registry) -> list[Path]:
    return [p for p in registry.store.rglob("*") if p.is_file()]


def assert_nothing_published(registry, tags=(), commits=0, objects=0):
    assert registry.tags() == list(tags)
    assert registry.commit_count() == commits
    assert len(remote_objects(registry)) == objects


def test_failed_checks_publish_nothing_and_list_every_failure(tmp_path, shop, mysql_params, mysql_db, registry):
    with pytest.raises(AirflowFailException) as err:
        publish(mysql_params, mysql_db, registry, key=["id"],
                checks={"min_rows": 5, "not_null": ["item"], "columns": {"id": "INT", "item": "VARCHAR",
                                                                         "price": "DOUBLE", "at": "DATETIME"}})
    text = str(err.value)
    assert "3 check(s) failed for shop/v1" in text
    assert "min_rows: 3 rows, allowed at least 5" in text
    assert "not_null: column 'item' has 1 NULL value(s), allowed 0" in text
    assert "column 'price' has type DECIMAL, expected DOUBLE" in text
    assert "Nothing was published" in text
    assert_nothing_published(registry)
    staging = tmp_path / "worker" / "staging"
    assert not staging.exists() or not any(staging.iterdir())  # the export was removed


def test_warn_mode_logs_and_publishes(shop, mysql_params, mysql_db, registry, caplog, capsys):
    event = publish(mysql_params, mysql_db, registry, checks={"min_rows": 5, "mode": "warn"})
    assert registry.tags() == ["shop/v1"]
    assert event["checks"] == {"mode": "warn", "passed": [], "failed": ["min_rows: 3 rows, allowed at least 5"]}
    logged = caplog.text + capsys.readouterr().out  # the task logger writes through structlog
    assert "min_rows: 3 rows, allowed at least 5" in logged and "mode: warn, so the version is published" in logged


def test_errors_fail_even_in_warn_mode(shop, mysql_params, mysql_db, registry):
    with pytest.raises(AirflowFailException, match="not_null: column\\(s\\) 'nope' not in the result"):
        publish(mysql_params, mysql_db, registry, checks={"not_null": ["nope"], "mode": "warn"})
    assert_nothing_published(registry)


def test_passing_checks_publish(shop, mysql_params, mysql_db, registry):
    event = publish(mysql_params, mysql_db, registry, key=["id"],
                    checks={"columns": ["id", "item", "price", "at"], "min_rows": 1, "max_rows": 3,
                            "not_null": ["id", "price"], "max_null_share": {"item": 0.34}})
    assert registry.tags() == ["shop/v1"]
    assert event["checks"]["failed"] == [] and "unique" in event["checks"]["passed"]


def test_stream_not_sorted_by_the_key_is_refused_with_the_order_by_to_use(shop, mysql_params, mysql_db, registry):
    with pytest.raises(AirflowFailException) as err:
        publish(mysql_params, mysql_db, registry, key=["id"], checks={"min_rows": 1}, order="id DESC")
    assert "unique (id): the data is not sorted by the key" in str(err.value)
    assert "ORDER BY id" in str(err.value)
    assert_nothing_published(registry)


def test_duplicate_keys_fail_unique(shop, mysql_params, mysql_db, registry):
    # 3.50, 0.00, 9.99 on May 1st are distinct: add a duplicate price
    db, connect = mysql_db
    conn = connect()
    conn.cursor().execute("INSERT INTO orders VALUES (5, 'cup', 3.50, '2024-05-01 12:00:00')")
    conn.close()
    with pytest.raises(AirflowFailException, match="unique \\(price\\): 1 duplicate key\\(s\\), allowed 0"):
        publish(mysql_params, mysql_db, registry, checks={"unique": ["price"]}, day=1, order="price, id")
    assert_nothing_published(registry)


def test_max_rows_change_compares_with_the_previous_version(shop, mysql_params, mysql_db, registry):
    publish(mysql_params, mysql_db, registry, version="v1", day=1)  # 3 rows
    # the tag's metadata, as every reader of the registry sees it (VersionInfo from the tag message)
    from dataset_registry.registry import RegistryClient

    info = RegistryClient(registry.settings()).resolve_version("shop", "orders.csv", "v1")
    assert info.rows == 3 and info.columns == ["id", "item", "price", "at"] and info.created
    assert (info.window_start, info.window_end) == ("2024-05-01T00:00:00+00:00", "2024-05-02T00:00:00+00:00")
    assert info.profile["price"] == {"type": "DECIMAL", "nulls": 0, "empty": 0, "min": "0.00", "max": "9.99",
                                     "distinct": 3}
    commits, objects = registry.commit_count(), len(remote_objects(registry))
    with pytest.raises(AirflowFailException) as err:
        publish(mysql_params, mysql_db, registry, version="v2", day=2, checks={"max_rows_change": 0.5})  # 1 row
    assert "max_rows_change: 1 rows vs 3 in the previous version shop/v1 (-66.67%), allowed at most 50% change" \
        in str(err.value)
    assert_nothing_published(registry, tags=["shop/v1"], commits=commits, objects=objects)
    event = publish(mysql_params, mysql_db, registry, version="v2", day=2, checks={"max_rows_change": 0.7})
    assert event["checks"]["passed"] == ["max_rows_change"] and sorted(registry.tags()) == ["shop/v1", "shop/v2"]


def test_yaml_checks_gate_the_scheduled_dag_end_to_end(tmp_path, shop, registry):
    """The project YAML's ``key``/``checks`` reach the generated DAG: `airflow dags test` fails without
    retry naming the check, and nothing is published; relaxed, the same window publishes."""
    from test_dags_e2e import dags_test

    yaml_file = Path(shop["DATASET_PROJECTS_DIR"]) / "shop.yaml"
    base = yaml_file.read_text()
    yaml_file.write_text(base + "key: [id]\nchecks:\n  min_rows: 10\n  not_null: [id]\n")
    window = {"start": "2024-05-01T00:00:00Z", "end": "2024-05-02T00:00:00Z"}
    proc = dags_test(shop, window, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "min_rows: 3 rows, allowed at least 10" in out, out[-3000:]
    assert_nothing_published(registry)

    yaml_file.write_text(base + "key: [id]\nchecks:\n  min_rows: 1\n  unique: [id]\n")
    proc = dags_test(shop, window, tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert registry.tags() == ["shop/v20240502T000000"]
