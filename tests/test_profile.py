"""The profile of a version, computed while the CSV streams: exact values on tricky data, an
approximate distinct count within its stated error, and the profile where every consumer sees it
(Asset event extra, dataset_versions row, `git show <tag>`), plus the model DB upgraded in place."""
import json

import pytest
import sqlalchemy as sa

from dataset_registry.column_profile import DistinctSketch, KeyTracker, StreamProfiler
from dataset_registry.model_db import ModelDB
from dataset_registry.mysql_export import export_query
from dataset_registry.working_clone import MAX_JSON_LINE_BYTES, message_field, message_info, tag_message

ROWS = [
    # id, neg, dec, big, name, d, dt, f, bin
    (1, -10, "-1.05", "123456789012345678901234567.0123456788", None, "2024-02-29", "2024-01-01 00:00:00.000", -1.5, None),
    (2, 2, "12.50", "123456789012345678901234567.0123456789", "", "1999-12-31", "2024-12-31 23:59:59.999", 1e10, b""),
    (3, -3, "100.00", None, "Zürich", None, "2024-06-01 12:00:00.500", 2.25, b"\x00\xff"),
    (4, 0, "9.99", "-0.0000000001", "Zebra", "2024-01-01", None, None, b"\x01"),
    (5, None, None, "0.0000000000", "a", "2000-01-01", "2024-01-01 00:00:00.001", 3.0, b"\xff"),
    (6, 2, "9.99", None, "éclair", "2024-02-29", "2024-01-01 00:00:00.000", -1.5, b"\x00\xff"),
    (7, -10, "0.00", None, "北京", "2024-02-29", "2024-01-01 00:00:00.000", 0.0, None),
    (8, 7, "-1.05", None, "😀 smile", "2024-02-29", "2024-01-01 00:00:00.000", 0.0, None),
    (9, 7, "12.50", None, "", "2024-02-29", "2024-01-01 00:00:00.000", 0.0, None),
]


@pytest.fixture
def tricky(mysql_db):
    name, connect = mysql_db
    conn = connect()
    cur = conn.cursor()
    cur.execute("CREATE TABLE p (id INT PRIMARY KEY, neg INT NULL, dec10 DECIMAL(10,2) NULL, big DECIMAL(38,10) NULL, "
                "name VARCHAR(40) NULL, d DATE NULL, dt DATETIME(3) NULL, f DOUBLE NULL, bin VARBINARY(8) NULL) "
                "CHARSET utf8mb4")
    cur.executemany("INSERT INTO p VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)", ROWS)
    conn.close()
    return name


def test_profile_is_exact_on_tricky_values(tmp_path, mysql_params, tricky):
    out = tmp_path / "p.csv"
    # fetch_rows=4: the profile is merged over several batches
    res = export_query({**mysql_params, "db": tricky}, "SELECT * FROM p ORDER BY id", out, fetch_rows=4)
    assert res.csv_columns == ["id", "neg", "dec10", "big", "name", "d", "dt", "f", "bin"]
    p = res.profile
    assert list(p) == res.csv_columns
    assert p["id"] == {"type": "INT", "nulls": 0, "empty": 0, "min": "1", "max": "9", "distinct": 9}
    # negative numbers compare numerically (as text "-3" > "-10" > "0" would be wrong)
    assert p["neg"] == {"type": "INT", "nulls": 1, "empty": 0, "min": "-10", "max": "7", "distinct": 5}
    # DECIMAL: numeric order, printed with the declared scale
    assert p["dec10"] == {"type": "DECIMAL", "nulls": 1, "empty": 0, "min": "-1.05", "max": "100.00", "distinct": 5}
    # DECIMAL(38,10): beyond float precision (...88 and ...89 are one double), compared exactly
    assert p["big"]["min"] == "-0.0000000001" and p["big"]["max"] == "123456789012345678901234567.0123456789"
    assert p["big"]["nulls"] == 5 and p["big"]["distinct"] == 4
    # NULL vs "": counted apart; strings by UTF-8 byte order ("" < "Zebra" < "Zürich" < "a" < "éclair" < "北京" < "😀")
    assert p["name"] == {"type": "VARCHAR", "nulls": 1, "empty": 2, "min": "", "max": "😀 smile", "distinct": 7}
    assert sorted(["Zebra", "Zürich", "a", "éclair", "北京", "😀 smile"], key=lambda s: s.encode()) == \
        ["Zebra", "Zürich", "a", "éclair", "北京", "😀 smile"]
    assert p["d"] == {"type": "DATE", "nulls": 1, "empty": 0, "min": "1999-12-31", "max": "2024-02-29", "distinct": 4}
    assert p["dt"]["min"] == "2024-01-01 00:00:00.000" and p["dt"]["max"] == "2024-12-31 23:59:59.999"
    assert p["dt"]["nulls"] == 1 and p["dt"]["distinct"] == 4
    # DOUBLE as MySQL prints it (1e10 is "10000000000"), compared as numbers
    assert p["f"]["min"] == "-1.5" and p["f"]["max"] == "10000000000" and p["f"]["nulls"] == 1
    # binary: as the CSV prints it (0x hex), empty binary counted as empty
    assert p["bin"] == {"type": "VARBINARY", "nulls": 4, "empty": 1, "min": "0x", "max": "0xFF", "distinct": 4}
    # every min/max is a value of the CSV
    text = out.read_text()
    for column in ("neg", "dec10", "big", "d", "dt", "f"):
        assert p[column]["min"] in text and p[column]["max"] in text


def test_distinct_is_approximate_within_its_stated_error_on_100k_rows(tmp_path, mysql_params, mysql_db):
    name, _ = mysql_db
    res = export_query({**mysql_params, "db": name},
                       "SELECT seq AS id, seq % 1000 AS small, CONCAT('k', seq % 30000) AS mid, "
                       "IF(seq % 10 = 0, NULL, seq * 7) AS sparse FROM seq_1_to_100000 ORDER BY seq",
                       tmp_path / "d.csv")
    p = res.profile
    assert p["small"]["distinct"] == 1000  # exact below the sketch size (4096)
    # K-minimum-values with K=4096: relative standard error ~1.6%; 5% is > 3 standard errors
    assert p["id"]["distinct"] == pytest.approx(100_000, rel=0.05)
    assert p["mid"]["distinct"] == pytest.approx(30_000, rel=0.05)
    assert p["sparse"]["distinct"] == pytest.approx(90_000, rel=0.05) and p["sparse"]["nulls"] == 10_000
    assert p["id"]["min"] == "1" and p["id"]["max"] == "100000"
    assert p["mid"]["min"] == "k0" and p["mid"]["max"] == "k9999"


def test_sketch_merges_batches_and_is_exact_when_small():
    sketch = DistinctSketch(k=64)
    sketch.add_values([str(i) for i in range(50)])
    sketch.add_values([str(i) for i in range(25, 60)])
    assert sketch.estimate() == 60 and not sketch.saturated
    for start in range(0, 20_000, 1000):
        sketch.add_values([str(i) for i in range(start, start + 1000)])
    assert sketch.saturated and 20_000 * 0.6 < sketch.estimate() < 20_000 * 1.4  # k=64: ~12.7% error


def test_long_strings_are_cut_to_200_characters():
    profiler = StreamProfiler(["s"], ["TEXT"])
    profiler.add_batch([("a" * 500,), ("b" * 300,)])
    p = profiler.profile()["s"]
    assert p["min"] == "a" * 200 and p["max"] == "b" * 200


def test_preprocess_output_is_profiled_per_chunk(tmp_path, mysql_params, tricky):
    def prep(frame):
        out = frame[["id", "name", "dec10"]].copy()
        out["id2"] = out["id"].astype(int) * 2  # int64: created by the preprocess
        out["ratio"] = out["dec10"].astype(float) / 2  # float64
        return out

    res = export_query({**mysql_params, "db": tricky}, "SELECT * FROM p ORDER BY id", tmp_path / "pp.csv",
                       preprocess=prep, fetch_rows=4)
    p = res.profile
    assert res.csv_columns == ["id", "name", "dec10", "id2", "ratio"]
    assert p["id"]["type"] == "INT" and p["id"]["min"] == "1" and p["id"]["max"] == "9"  # still the query's text
    assert p["name"] == {"type": "VARCHAR", "nulls": 1, "empty": 2, "min": "", "max": "😀 smile", "distinct": 7}
    assert p["dec10"]["min"] == "-1.05" and p["dec10"]["max"] == "100.00" and p["dec10"]["nulls"] == 1
    assert p["id2"] == {"type": "BIGINT", "nulls": 0, "empty": 0, "min": "2", "max": "18", "distinct": 9}
    assert p["ratio"]["type"] == "DOUBLE" and p["ratio"]["min"] == "-0.525" and p["ratio"]["max"] == "50.0"
    assert p["ratio"]["nulls"] == 1
    text = (tmp_path / "pp.csv").read_text()
    assert ",-0.525\n" in text and ",50.0\n" in text  # as the CSV prints them


def test_key_tracker_finds_duplicates_and_disorder_across_batches():
    cols, types = ["id", "v"], ["INT", "VARCHAR"]
    sorted_unique = KeyTracker(["id"], cols, types)
    for batch in ([("1", "a"), ("2", "b")], [("10", "c")], [("11", "d")]):  # 2 < 10 numerically
        sorted_unique.add_rows(batch)
    assert sorted_unique.facts()["duplicates"] == 0 and sorted_unique.facts()["unsorted"] == 0
    dup = KeyTracker(["id"], cols, types)
    dup.add_rows([("1", "a"), ("2", "b")])
    dup.add_rows([("2", "c"), ("3", "d")])  # duplicate across the batch boundary
    assert dup.facts()["duplicates"] == 1 and dup.facts()["unsorted"] == 0
    unsorted = KeyTracker(["id"], cols, types)
    unsorted.add_rows([("1", "a"), ("5", "b")])
    unsorted.add_rows([("3", "c")])
    facts = unsorted.facts()
    assert facts["unsorted"] == 1 and facts["example"] == [["5"], ["3"]]
    nulls = KeyTracker(["v"], cols, types)
    nulls.add_rows([("1", None), ("2", "b")])
    assert nulls.facts()["nulls"] == 1


def test_tag_message_carries_window_columns_and_profile_and_stays_bounded():
    profile = {"name": {"type": "VARCHAR", "nulls": 1, "empty": 0, "min": "a b", "max": "z: y", "distinct": 3}}
    message = tag_message("shop", "v1", "a" * 32, 3, 10, "2024-01-01T00:00:00.000000Z", "pid",
                          window_start="2024-05-01T00:00:00+00:00", window_end="2024-05-02T00:00:00+00:00",
                          columns=["id", "name"], profile=profile)
    assert "\nprofile: {\"name\":{\"type\":\"VARCHAR\"" in message
    info = message_info(message)
    assert info == {"created": "2024-01-01T00:00:00.000000Z", "window_start": "2024-05-01T00:00:00+00:00",
                    "window_end": "2024-05-02T00:00:00+00:00", "columns": ["id", "name"], "profile": profile}
    assert message_field(message, "md5") == "a" * 32 and message_field(message, "rows") == "3"
    # an old message (no optional lines) still reads
    old = tag_message("shop", "v0", "b" * 32, 1, 5, "2023-01-01T00:00:00.000000Z", "old")
    assert message_info(old)["profile"] is None and message_info(old)["columns"] is None
    # 500 columns with 200-character min/max: the tag message stays far below git's 128 KiB argument limit
    wide = {f"column_{i}": {"type": "TEXT", "nulls": 0, "empty": 0, "min": "é" * 200, "max": "z" * 200,
                            "distinct": 10 ** 6} for i in range(500)}
    message = tag_message("shop", "v2", "c" * 32, 1, 5, "2024-01-01T00:00:00.000000Z", "pid",
                          columns=list(wide), profile=wide)
    assert len(message.encode()) < 2 * MAX_JSON_LINE_BYTES + 1000
    kept = message_info(message)["profile"]
    assert kept is None or set(kept) == set(wide)


OLD_DATASET_VERSIONS = (
    "CREATE TABLE dataset_versions (dataset_version_id INTEGER PRIMARY KEY, project VARCHAR(64) NOT NULL, "
    "version VARCHAR(64) NOT NULL, tag VARCHAR(128) NOT NULL UNIQUE, md5 VARCHAR(32) NOT NULL, \"rows\" BIGINT, "
    "bytes BIGINT, \"commit\" VARCHAR(40) NOT NULL, created TIMESTAMP NOT NULL)")


def _upgrade_in_place(url: str, create: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # a database written before the profile existed
        conn.execute(sa.text(create))
        conn.execute(sa.text("INSERT INTO dataset_versions (project, version, tag, md5, \"rows\", bytes, \"commit\", "
                             "created) VALUES ('shop', 'v0', 'shop/v0', :md5, 3, 10, :c, '2024-01-01 00:00:00')"),
                     {"md5": "a" * 32, "c": "c" * 40})
    engine.dispose()
    db = ModelDB(url)
    db.ensure_schema()
    present = {c["name"] for c in sa.inspect(db.engine).get_columns("dataset_versions")}
    assert {"profile", "columns", "window_start", "window_end"} <= present
    old = db.get_dataset_version("shop/v0")
    assert old["md5"] == "a" * 32 and old["rows"] == 3 and old["profile"] is None  # old row kept
    profile = {"id": {"type": "INT", "nulls": 0, "empty": 0, "min": "1", "max": "3", "distinct": 3}}
    db.record_dataset_version(project="shop", version="v1", tag="shop/v1", md5="b" * 32, rows=3, bytes=10,
                              commit="d" * 40, window_start="2024-05-01T00:00:00+00:00",
                              window_end="2024-05-02T00:00:00+00:00", columns=["id"], profile=profile)
    new = db.get_dataset_version("shop/v1")
    assert new["profile"] == profile and new["columns"] == ["id"] and new["window_end"] == "2024-05-02T00:00:00+00:00"
    # a row recorded without a profile (e.g. from an old tag) gets it filled in, idempotently
    db.record_dataset_version(project="shop", version="v0", tag="shop/v0", md5="a" * 32, rows=3, bytes=10,
                              commit="c" * 40, profile=profile)
    assert db.get_dataset_version("shop/v0")["profile"] == profile
    db.engine.dispose()


def test_model_db_schema_is_upgraded_in_place_on_sqlite(tmp_path):
    _upgrade_in_place(f"sqlite:///{tmp_path / 'old.sqlite'}", OLD_DATASET_VERSIONS)


def test_model_db_schema_is_upgraded_in_place_on_postgresql(pg_database):
    _upgrade_in_place(pg_database, OLD_DATASET_VERSIONS.replace("INTEGER PRIMARY KEY", "SERIAL PRIMARY KEY"))


@pytest.mark.slow
def test_profile_reaches_the_asset_event_the_model_db_and_git_show(tmp_path, shop, registry):
    import os
    import sqlite3
    from pathlib import Path

    from test_dags_e2e import dags_test, model_db_rows

    proc = dags_test(shop, {"start": "2024-05-01T00:00:00Z", "end": "2024-05-02T00:00:00Z"}, tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    tag = "shop/v20240502T000000"
    expected = {
        "id": {"type": "INT", "nulls": 0, "empty": 0, "min": "1", "max": "3", "distinct": 3},
        "item": {"type": "VARCHAR", "nulls": 1, "empty": 1, "min": "", "max": "tea", "distinct": 2},
        "price": {"type": "DECIMAL", "nulls": 0, "empty": 0, "min": "0.00", "max": "9.99", "distinct": 3},
        "at": {"type": "DATETIME", "nulls": 0, "empty": 0, "min": "2024-05-01 10:00:00",
               "max": "2024-05-01 23:00:00", "distinct": 3},
    }
    # the annotated tag: a plain git user sees it
    shown = registry.git("show", "--no-patch", tag)
    assert "window-start: 2024-05-01T00:00:00+00:00" in shown and "window-end: 2024-05-02T00:00:00+00:00" in shown
    assert 'columns: ["id","item","price","at"]' in shown
    assert message_info(shown)["profile"] == expected
    # the model DB row
    (columns, profile, start, end), = model_db_rows(
        shop, f"SELECT columns, profile, window_start, window_end FROM dataset_versions WHERE tag = '{tag}'")
    assert json.loads(columns) == ["id", "item", "price", "at"] and json.loads(profile) == expected
    assert (start, end) == ("2024-05-01T00:00:00+00:00", "2024-05-02T00:00:00+00:00")
    # the Asset event extra
    airflow_db = Path(shop.get("AIRFLOW_HOME") or os.environ["AIRFLOW_HOME"]) / "airflow.db"
    with sqlite3.connect(airflow_db) as conn:
        extras = [json.loads(r[0]) for r in conn.execute("SELECT extra FROM asset_event ORDER BY id DESC")]
    extra = next(e for e in extras if e.get("tag") == tag)
    assert extra["columns"] == ["id", "item", "price", "at"] and extra["profile"] == expected


def test_a_project_named_like_a_field_does_not_shadow_it():
    """The title line ``profile: version v1`` is not the ``profile:`` field (fields come after it)."""
    from dataset_registry.working_clone import message_field, message_json, tag_message

    for project in ("profile", "columns", "md5"):
        text = tag_message(project, "v1", "0" * 32, 3, 10, "2024-01-01T00:00:00.000000Z", "p1",
                           window_start=None, window_end=None, columns=["a"], profile={"a": {"nulls": 0}})
        assert message_json(text, "profile") == {"a": {"nulls": 0}}
        assert message_json(text, "columns") == ["a"] and message_field(text, "md5") == "0" * 32


def test_distinct_sketch_keeps_exactly_the_k_smallest_distinct_hashes():
    """Batch by batch (repeats inside and across batches), the kept hashes are those of one sort of all."""
    import numpy as np

    rng = np.random.default_rng(7)
    for _ in range(300):
        k = int(rng.integers(1, 50))
        sketch, seen = DistinctSketch(k), [np.empty(0, np.int64)]
        for _ in range(int(rng.integers(1, 20))):
            batch = rng.integers(-2**63, 2**63 - 1, size=int(rng.integers(0, 40)), dtype=np.int64)
            pool = np.concatenate(seen)
            if len(pool) and rng.random() < 0.5:
                batch = np.concatenate([batch, rng.choice(pool, size=5), batch[:3]])
            seen.append(batch)
            sketch.add_hashes(batch)
        every = np.unique(np.concatenate(seen))
        assert np.array_equal(sketch.kept, every[:k])
        assert sketch.saturated == (len(every) > k)
