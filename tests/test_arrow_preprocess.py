"""The vectorized preprocess API (``preprocess_api: arrow``) against the engines it builds on.

An identity Arrow preprocess must give back the export's exact bytes (every MySQL type family of the
tricky-values table, 200k random rows) and the same profile and key facts; the demo's Arrow version
must write the same bytes as its pandas version; user-code failures, bad output and a full disk stop
the export with the batch named and leave nothing behind (neither the output nor the raw file).
"""
from __future__ import annotations

import hashlib
import subprocess
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from conftest import REPO
from dataset_registry import arrow_csv
from dataset_registry.mysql_export import ExportError, export_query
from test_export_engine import create_engine_tables

ROWS = 200_000
ENGINES = ["c", "python"]


@pytest.fixture(scope="module")
def arrow_db(mysql_admin_params):
    name, admin = create_engine_tables(mysql_admin_params, "dsv_test_arrow", rows=ROWS)
    cur = admin.cursor()
    cur.execute("CREATE TABLE events (id INT PRIMARY KEY, city VARCHAR(40) NULL, note TEXT NULL) CHARSET utf8mb4")
    cur.execute("INSERT INTO events SELECT seq, ELT(1 + seq % 5, 'Lisboa', ' Zürich ', 'São Paulo', '北京', ''), "
                "IF(seq % 7 = 0, NULL, IF(seq % 3 = 0, '', CONCAT('n, \"', seq, '\"'))) FROM seq_1_to_5000")
    yield name
    cur.execute(f"DROP DATABASE {name}")
    admin.close()


def identity(batch):
    return batch


def export(params, db, sql, path, **kw):
    return export_query({**params, "db": db}, sql, path, **kw)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("table", ["tricky", "big"])
def test_identity_preprocess_gives_the_exports_exact_bytes_profile_and_key_facts(tmp_path, mysql_params, arrow_db,
                                                                                 table, engine):
    sql = f"SELECT * FROM {table} ORDER BY id"
    plain = export(mysql_params, arrow_db, sql, tmp_path / "plain.csv", engine=engine, unique_key=["id"])
    arrow = export(mysql_params, arrow_db, sql, tmp_path / "arrow.csv", engine=engine, unique_key=["id"],
                   preprocess=identity, preprocess_api="arrow")
    assert (tmp_path / "arrow.csv").read_bytes() == (tmp_path / "plain.csv").read_bytes()
    assert arrow.md5 == plain.md5 == hashlib.md5((tmp_path / "arrow.csv").read_bytes()).hexdigest()
    assert (arrow.rows, arrow.bytes, arrow.csv_columns) == (plain.rows, plain.bytes, plain.csv_columns)
    assert arrow.key_facts == plain.key_facts
    for column, expected in plain.profile.items():
        got = arrow.profile[column]
        same = {k: v for k, v in expected.items() if k != "distinct"}
        assert {k: got[k] for k in same} == same, column
        if expected["distinct"] < 4096:  # exact below the sketch size
            assert got["distinct"] == expected["distinct"], column
        else:
            assert abs(got["distinct"] - expected["distinct"]) <= 0.08 * expected["distinct"], column
    assert leftovers(tmp_path) == ["arrow.csv", "plain.csv"]


@pytest.mark.parametrize("order, key, fact", [("id", ["grp", "k"], "unsorted"), ("grp, id", ["grp"], "duplicates"),
                                              ("amount, id", ["amount"], "nulls")])
def test_key_facts_of_unsorted_duplicate_and_null_keys_match(tmp_path, mysql_params, arrow_db, order, key, fact):
    sql = f"SELECT * FROM big ORDER BY {order}"
    plain = export(mysql_params, arrow_db, sql, tmp_path / "p.csv", unique_key=key)
    arrow = export(mysql_params, arrow_db, sql, tmp_path / "a.csv", unique_key=key,
                   preprocess=identity, preprocess_api="arrow")
    assert plain.key_facts[fact] >= 100
    if fact == "nulls":  # a batch with a NULL key is counted, not judged: batches differ (CSV blocks vs fetches)
        assert arrow.key_facts["nulls"] == plain.key_facts["nulls"] and arrow.key_facts["duplicates"] > 0
    else:
        assert arrow.key_facts == plain.key_facts


def test_demo_arrow_preprocess_writes_the_same_bytes_as_the_pandas_one(tmp_path, mysql_params, arrow_db):
    sys.path.insert(0, str(REPO / "include"))
    try:
        from preprocess.demo import clean as pandas_clean
        from preprocess.demo_arrow import clean as arrow_clean
    finally:
        sys.path.remove(str(REPO / "include"))
    sql = "SELECT * FROM events ORDER BY id"
    a = export(mysql_params, arrow_db, sql, tmp_path / "pandas.csv", preprocess=pandas_clean, fetch_rows=700)
    b = export(mysql_params, arrow_db, sql, tmp_path / "arrow.csv", preprocess=arrow_clean, preprocess_api="arrow")
    assert (tmp_path / "arrow.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()
    assert a.md5 == b.md5 and a.rows == b.rows == 5000
    assert b.csv_columns == ["id", "city", "note", "has_note"]
    assert b.profile["has_note"] == {"type": "BOOLEAN", "nulls": 0, "empty": 0, "min": "0", "max": "1", "distinct": 2}
    assert b.profile["city"]["min"] == "" and b.profile["city"]["empty"] == 1000


def test_output_types_print_as_documented(tmp_path, mysql_params, arrow_db):
    import datetime
    import decimal

    def typed(batch):
        n = batch.num_rows
        return pa.table({
            "id": batch.column(0).cast(pa.int64()),
            "half": pc.divide(batch.column(0).cast(pa.float64()), 2.0),
            "flag": pc.equal(pc.bit_wise_and(batch.column(0).cast(pa.int64()), 1), 1),
            "amount": pa.array([decimal.Decimal("1.50")] * n, pa.decimal128(8, 2)),
            "day": pa.array([datetime.date(2024, 2, 29)] * n, pa.date32()),
            "at": pa.array([datetime.datetime(2024, 7, 1, 12, 0, 0, 250000, tzinfo=datetime.timezone.utc)] * n,
                           pa.timestamp("ms", tz="Europe/Lisbon")),
            "at_s": pa.array([datetime.datetime(2024, 7, 1, 12, 0, 0)] * n, pa.timestamp("s")),
            "raw": pa.array([b"\x00\xfe"] * n),
            "nothing": pa.nulls(n),
            "label": pa.array(["a,b"] * n).dictionary_encode(),
        })

    res = export(mysql_params, arrow_db, "SELECT id FROM events WHERE id <= 2 ORDER BY id", tmp_path / "t.csv",
                 preprocess=typed, preprocess_api="arrow")
    assert (tmp_path / "t.csv").read_text() == (
        "id,half,flag,amount,day,at,at_s,raw,nothing,label\n"
        '1,0.5,1,1.50,2024-02-29,2024-07-01 12:00:00.250,2024-07-01 12:00:00,0x00FE,,"a,b"\n'
        '2,1,0,1.50,2024-02-29,2024-07-01 12:00:00.250,2024-07-01 12:00:00,0x00FE,,"a,b"\n')
    types = {c: p["type"] for c, p in res.profile.items()}
    assert types == {"id": "BIGINT", "half": "DOUBLE", "flag": "BOOLEAN", "amount": "DECIMAL", "day": "DATE",
                     "at": "DATETIME", "at_s": "DATETIME", "raw": "VARBINARY", "nothing": "TEXT", "label": "TEXT"}
    assert res.profile["half"]["min"] == "0.5" and res.profile["half"]["max"] == "1"


@pytest.mark.parametrize("engine", ENGINES)
def test_user_code_that_raises_names_the_batch_and_leaves_nothing(tmp_path, mysql_params, arrow_db, engine):
    seen = []

    def breaks(batch):
        seen.append(batch.num_rows)
        if len(seen) == 2:
            raise KeyError("no such column")
        return batch

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ExportError) as err:
        export(mysql_params, arrow_db, "SELECT * FROM big ORDER BY id", out / "b.csv", engine=engine,
               preprocess=breaks, preprocess_api="arrow")
    assert not err.value.retryable
    assert f"raised KeyError on batch 2 (rows {seen[0] + 1}-{seen[0] + seen[1]})" in str(err.value)
    assert leftovers(out) == []


@pytest.mark.parametrize("bad, message", [
    (lambda batch: batch.to_pandas(), "returned DataFrame on batch 1 (rows 1-"),
    (lambda batch: batch.drop_columns(["k"]) if batch.column(0)[0].as_py() != "1" else batch,
     "returned different columns on batch 2"),
    (lambda batch: pa.RecordBatch.from_pydict({"l": pa.array([[1]] * batch.num_rows)}),
     "column 'l' has Arrow type list<item: int64>, which has no CSV text"),
    (lambda batch: pa.RecordBatch.from_pydict({}), "returned no columns on batch 1"),
])
def test_bad_output_is_refused_with_the_rule(tmp_path, mysql_params, arrow_db, bad, message):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ExportError) as err:
        export(mysql_params, arrow_db, "SELECT * FROM big ORDER BY id", out / "b.csv", preprocess=bad,
               preprocess_api="arrow")
    assert message in str(err.value) and not err.value.retryable
    assert leftovers(out) == []


def test_a_table_with_several_chunks_and_filtered_rows_is_written_in_order(tmp_path, mysql_params, arrow_db):
    def odd_rows_twice(batch):
        odd = batch.filter(pc.equal(pc.bit_wise_and(batch.column(0).cast(pa.int64()), 1), 1))
        return pa.Table.from_batches([odd, odd.slice(0, 1)])

    res = export(mysql_params, arrow_db, "SELECT id, city FROM events WHERE id <= 6 ORDER BY id", tmp_path / "o.csv",
                 preprocess=odd_rows_twice, preprocess_api="arrow")
    assert (tmp_path / "o.csv").read_text() == "id,city\n1, Zürich \n3,北京\n5,Lisboa\n1, Zürich \n"
    assert res.rows == 4


def test_an_empty_result_writes_the_query_header(tmp_path, mysql_params, arrow_db):
    res = export(mysql_params, arrow_db, "SELECT id, city FROM events WHERE id < 0", tmp_path / "e.csv",
                 preprocess=identity, preprocess_api="arrow", unique_key=["id"])
    assert (tmp_path / "e.csv").read_text() == "id,city\n" and res.rows == 0
    assert res.profile["id"]["nulls"] == 0 and res.key_facts["duplicates"] == 0


def test_unknown_api_is_refused(tmp_path, mysql_params, arrow_db):
    with pytest.raises(ExportError, match="unknown preprocess_api 'polars'"):
        export(mysql_params, arrow_db, "SELECT 1", tmp_path / "x.csv", preprocess=identity, preprocess_api="polars")


def test_full_disk_fails_names_the_file_and_leaves_nothing(tmp_path, mysql_params, arrow_db):
    """A 24 MB tmpfs: the raw export (~16 MB) fits, the preprocessed copy (three times as wide) does not."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        def wider(batch):
            return pa.RecordBatch.from_arrays(list(batch.columns) * 3, names=[f"c{i}" for i in range(3 * batch.num_columns)])

        with pytest.raises(ExportError) as err:
            export(mysql_params, arrow_db, "SELECT * FROM big ORDER BY id", mount / "b.csv", preprocess=wider,
                   preprocess_api="arrow")
        assert "no space left on the device" in str(err.value).lower()
        assert str(mount / "b.csv.partial") in str(err.value)
        assert leftovers(mount) == []
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_arrow_kernels_format_the_same_bytes_as_the_c_formatter():
    """The fallback when the C engine is not built (``_batch_bytes_arrow``) against ``format_batch``."""
    columns = {
        "s": pa.array(["a", "", None, 'q"x', "a,b", "l\nm", "cr\r", "é😀"] * 50).slice(3),
        "i": pa.array([1, None, -3, 4, 5, 6, 7, 8] * 50).slice(3),
        "n": pa.nulls(397),
        "bin": pa.array([b"\x00\xff", None, b"", b"a", b"b", b"c", b"\n", b'"'] * 50).slice(3),
    }
    texts = [arrow_csv.column_text(a, n) for n, a in columns.items()]
    fast = bytes(arrow_csv.batch_bytes(texts))
    assert fast == bytes(arrow_csv._batch_bytes_arrow(texts))
    assert fast.startswith('"q""x",4,,0x61\n"a,b",5,,0x62\n"l\nm",6,,0x63\n"cr\r",7,,0x0A\né😀,8,,0x22\n'
                           'a,1,,0x00FF\n"",,,\n,-3,,0x\n'.encode())


def test_without_the_c_engine_the_same_bytes_and_profile(tmp_path, mysql_params, arrow_db, monkeypatch):
    """No built extension: the raw export, the formatting and the hashes all fall back to Python/Arrow."""
    sql = "SELECT * FROM tricky ORDER BY id"
    with_c = export(mysql_params, arrow_db, sql, tmp_path / "c.csv", preprocess=identity, preprocess_api="arrow")
    monkeypatch.setitem(sys.modules, "dataset_registry._fastexport", None)  # import raises ImportError
    without = export(mysql_params, arrow_db, sql, tmp_path / "py.csv", preprocess=identity, preprocess_api="arrow")
    assert (tmp_path / "py.csv").read_bytes() == (tmp_path / "c.csv").read_bytes()
    assert without.profile == with_c.profile  # every column has fewer distinct values than the sketch size


@pytest.mark.parametrize("engine", ENGINES)
def test_text_that_is_not_utf8_stops_the_arrow_path_too(tmp_path, mysql_params, arrow_db, engine):
    sql = "SELECT 1 AS id, 'ok' AS a UNION ALL SELECT 2, _utf8mb4 X'EDA080' ORDER BY id"
    with pytest.raises(ExportError) as err:
        export(mysql_params, arrow_db, sql, tmp_path / "u.csv", engine=engine, preprocess=identity, preprocess_api="arrow")
    assert "not valid UTF-8" in str(err.value) and err.value.retryable is False
    assert leftovers(tmp_path) == []


def test_killed_mid_stream_fails_retryably_and_leaves_nothing(tmp_path, mysql_params, arrow_db):
    """The server kills the query while the C engine hands Arrow batches to the preprocess."""
    import threading
    import time

    import MySQLdb

    dest = tmp_path / "k.csv"
    outcome, batches = {}, []

    def slow(batch):
        batches.append(batch.num_rows)
        time.sleep(0.01)
        return batch

    def exporter():
        try:
            export(mysql_params, arrow_db, "SELECT seq AS killme_arrow, REPEAT('x', 200) AS pad FROM seq_1_to_5000000 "
                   "ORDER BY seq", dest, engine="c", preprocess=slow, preprocess_api="arrow")
            outcome["result"] = "finished"
        except ExportError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=exporter)
    thread.start()
    admin = MySQLdb.connect(**mysql_params, autocommit=True)
    cur = admin.cursor()
    victim = None
    for _ in range(600):
        time.sleep(0.02)
        if len(batches) >= 3:
            cur.execute("SELECT id FROM information_schema.processlist WHERE info LIKE 'SELECT seq AS killme_arrow%%'")
            row = cur.fetchone()
            if row:
                victim = row[0]
                break
    assert victim, "the export never showed up streaming"
    cur.execute(f"KILL {int(victim)}")
    thread.join(120)
    admin.close()
    assert "error" in outcome, outcome
    assert "reading the result failed after" in str(outcome["error"]) and "MySQL error" in str(outcome["error"])
    assert outcome["error"].retryable
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("without_c", [False, True])
def test_output_text_that_is_not_utf8_is_refused(tmp_path, mysql_params, arrow_db, monkeypatch, without_c):
    """Arrow strings built without checks (``from_buffers``) may hold any bytes: the CSV must be UTF-8."""
    def smuggle(batch):
        n = batch.num_rows
        offsets = pa.array(range(0, 2 * n + 1, 2), pa.int32()).buffers()[1]
        bad = pa.StringArray.from_buffers(n, offsets, pa.py_buffer(b"\xed\xa0" * n))
        return pa.RecordBatch.from_arrays([batch.column(0), bad], names=["id", "bad"])

    if without_c:
        monkeypatch.setitem(sys.modules, "dataset_registry._fastexport", None)
    with pytest.raises(ExportError) as err:
        export(mysql_params, arrow_db, "SELECT id FROM events ORDER BY id", tmp_path / "u.csv", preprocess=smuggle,
               preprocess_api="arrow")
    assert "not valid UTF-8" in str(err.value) and "batch 1" in str(err.value) and not err.value.retryable
    assert leftovers(tmp_path) == []


def test_the_pandas_api_keeps_python_strings_with_pyarrow_installed(tmp_path, mysql_params, arrow_db):
    """pandas 3 backs ``str`` columns with Arrow when pyarrow is importable (it is, for this API): the
    pandas preprocess keeps Python storage, as before pyarrow was a dependency (and ~45% faster)."""
    import pandas as pd

    seen = []

    def spy(frame):
        seen.append({str(d) for d in frame.dtypes} | {getattr(d, "storage", "-") for d in frame.dtypes})
        frame["made_here"] = frame["city"].str.upper()
        seen.append(getattr(frame["made_here"].dtype, "storage", "-"))
        return frame

    export(mysql_params, arrow_db, "SELECT id, city FROM events ORDER BY id", tmp_path / "p.csv", preprocess=spy)
    assert "pyarrow" not in seen[0] and "python" in seen[0] and seen[1] == "python"
    assert pd.get_option("mode.string_storage") == "auto"  # only inside the export


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("sql", [
    "SELECT IF(seq % 2 = 0, NULL, IF(seq % 3 = 0, '', 'x')) AS only_one FROM seq_1_to_12 ORDER BY seq",
    "SELECT seq AS id, 'v' AS `two\nlines, \"quoted\"`, IF(seq = 2, REPEAT('y', 3000000), NULL) AS big, "
    "IF(seq = 3, UNHEX(REPEAT('FF', 600000)), NULL) AS bin FROM seq_1_to_5 ORDER BY seq",
])
def test_identity_on_odd_shapes_gives_the_exports_bytes(tmp_path, mysql_params, arrow_db, engine, sql):
    """One column whose NULLs are empty lines, a column name with a newline, a 3 MB text and a 1.2 MB hex value."""
    plain = export(mysql_params, arrow_db, sql, tmp_path / "plain.csv", engine=engine)
    arrow = export(mysql_params, arrow_db, sql, tmp_path / "arrow.csv", engine=engine, preprocess=identity,
                   preprocess_api="arrow")
    assert (tmp_path / "arrow.csv").read_bytes() == (tmp_path / "plain.csv").read_bytes()
    assert arrow.rows == plain.rows and arrow.profile == plain.profile


def test_nan_is_null_and_string_views_and_dictionaries_are_profiled(tmp_path, mysql_params, arrow_db):
    def odd_types(batch):
        ids = batch.column(0).cast(pa.int64())
        first = ids[0].as_py() == 1
        n = batch.num_rows
        return pa.RecordBatch.from_pydict({
            "id": ids,
            "ratio": pa.array([float("nan")] * n) if first else pc.divide(ids.cast(pa.float64()), 4.0),
            "view": batch.column(1).cast(pa.string_view()),
            "label": pa.DictionaryArray.from_arrays(pa.array([0, 1] * (n // 2) + [0] * (n % 2), pa.int32()),
                                                    pa.array(["a", None])),
        })

    res = export(mysql_params, arrow_db, "SELECT id, city FROM events WHERE id <= 8 ORDER BY id", tmp_path / "t.csv",
                 preprocess=odd_types, preprocess_api="arrow", fetch_rows=4, unique_key=["id"])
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[:3] == ["id,ratio,view,label", "1,, Zürich ,a", "2,,São Paulo,"]
    assert lines[5] == "5,1.25,Lisboa,a"
    assert res.profile["ratio"] == {"type": "DOUBLE", "nulls": 4, "empty": 0, "min": "1.25", "max": "2",
                                    "distinct": 4}
    assert res.profile["view"]["type"] == "TEXT" and res.profile["view"]["empty"] == 1  # not a query column's name
    assert res.profile["view"]["min"] == "" and res.profile["view"]["max"] == "北京"
    assert res.profile["label"]["nulls"] == 4 and res.profile["label"]["min"] == "a"
    assert res.key_facts["duplicates"] == 0 and res.key_facts["unsorted"] == 0
