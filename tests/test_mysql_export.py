"""The export against a real MariaDB: contract CSV format, exact round-trip, clean errors."""
import csv
import hashlib
import io

import pytest

from dataset_registry.mysql_export import ExportError, export_query

TRICKY = [
    # id, txt, dec, dt6, ts, bin
    (1, None, None, None, None, None),
    (2, "", "0.00", "2024-01-01 00:00:00.000000", "2024-01-01 00:00:00", b""),
    (3, 'say "hi", ok', "12.50", "2024-02-29 23:59:59.123456", "2024-06-01 12:00:00", b"\x00\xff\n"),
    (4, "line1\nline2", "-1.05", "2024-03-01 08:00:00.000001", "2024-12-31 23:59:59", b"ab"),
    (5, "crlf\r\nend", "99999999.99", "2024-03-01 08:00:00.500000", "2024-03-01 08:00:00", None),
    (6, "emoji 😀 李雷 Zürich", "1.00", "2024-03-01 08:00:00.000000", "2024-03-01 08:00:00", b"\x01"),
    (7, "x" * 70_000, "3.30", "2024-03-01 08:00:00.000000", "2024-03-01 08:00:00", None),
    (8, "NULL", "5.00", "2024-03-01 08:00:00.000000", "2024-03-01 08:00:00", None),
    (9, " lead and trail ", "5.00", "2024-03-01 08:00:00.000000", "2024-03-01 08:00:00", None),
]


@pytest.fixture(autouse=True, params=["c", "python"])
def engine(request, monkeypatch):
    """Every test here runs on both export engines (the C one only when it is built)."""
    if request.param == "c":
        try:
            from dataset_registry import _fastexport  # noqa: F401
        except ImportError:
            pytest.skip("the C export engine is not built")
    monkeypatch.setenv("DATASET_EXPORT_ENGINE", request.param)
    return request.param


@pytest.fixture
def tricky_table(mysql_db):
    name, connect = mysql_db
    conn = connect()
    cur = conn.cursor()
    cur.execute("SET time_zone = '+00:00'")
    cur.execute(
        "CREATE TABLE t (id INT PRIMARY KEY, txt MEDIUMTEXT NULL, dec10 DECIMAL(10,2) NULL, "
        "dt6 DATETIME(6) NULL, ts TIMESTAMP NULL, bin VARBINARY(20) NULL, big DECIMAL(38,10) NULL, blb BLOB NULL)"
    )
    for row in TRICKY:
        cur.execute("INSERT INTO t VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
                    (*row, "123456789012345678901234567.0123456789" if row[0] == 3 else None, row[5]))
    conn.close()
    return name


def export(params, db, sql, path, **kw):
    return export_query({**params, "db": db}, sql, path, **kw)


def test_tricky_values_round_trip_exactly(tmp_path, mysql_params, tricky_table):
    out = tmp_path / "t.csv"
    res = export(mysql_params, tricky_table, "SELECT * FROM t ORDER BY id", out)
    data = out.read_bytes()
    assert res.rows == len(TRICKY) and res.bytes == len(data) and res.md5 == hashlib.md5(data).hexdigest()
    assert not (tmp_path / "t.csv.partial").exists()
    text = data.decode("utf-8")
    lines = text.split("\n")
    assert lines[0] == "id,txt,dec10,dt6,ts,bin,big,blb"
    assert lines[1] == "1,,,,,,,"  # NULLs: empty unquoted
    assert lines[2] == '2,"",0.00,2024-01-01 00:00:00.000000,2024-01-01 00:00:00,0x,,0x'  # '' is ""
    assert lines[3].startswith('3,"say ""hi"", ok",12.50,2024-02-29 23:59:59.123456,2024-06-01 12:00:00,0x00FF0A,')
    assert lines[3].endswith(",123456789012345678901234567.0123456789,0x00FF0A")
    # Parse back with an RFC 4180 reader: every text value identical.
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == ["id", "txt", "dec10", "dt6", "ts", "bin", "big", "blb"]
    for (rid, txt, dec, dt6, ts, _), got in zip(TRICKY, rows[1:]):
        assert got[0] == str(rid)
        assert got[1] == ("" if txt is None else txt)
        assert got[2] == (dec or "") and got[3] == (dt6 or "") and got[4] == (ts or "")
    assert "\r\n" in text and text.endswith("\n") and not text.endswith("\n\n")


def test_same_rows_give_identical_bytes_whatever_the_session_time_zone(tmp_path, mysql_params, mysql_admin_params,
                                                                      tricky_table):
    import MySQLdb

    a = export(mysql_params, tricky_table, "SELECT * FROM t ORDER BY id", tmp_path / "a.csv")
    admin = MySQLdb.connect(**mysql_admin_params, autocommit=True)  # SET GLOBAL needs the admin account
    old = admin.cursor()
    old.execute("SELECT @@global.time_zone")
    previous = old.fetchone()[0]
    try:
        old.execute("SET GLOBAL time_zone = '+05:30'")
        b = export(mysql_params, tricky_table, "SELECT * FROM t ORDER BY id", tmp_path / "b.csv")
    finally:
        old.execute(f"SET GLOBAL time_zone = '{previous}'")
        admin.close()
    assert a.md5 == b.md5
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_preprocess_sees_strings_and_can_add_columns(tmp_path, mysql_params, tricky_table):
    def prep(frame):
        out = frame[["id", "txt"]].copy()
        out["n"] = out["txt"].str.len()
        return out

    res = export(mysql_params, tricky_table, "SELECT id, txt FROM t WHERE id <= 3 ORDER BY id", tmp_path / "p.csv", preprocess=prep)
    text = (tmp_path / "p.csv").read_text()
    assert res.rows == 3
    assert text.splitlines()[0] == "id,txt,n"
    assert text.splitlines()[1] == "1,,"
    assert text.splitlines()[2].startswith('2,"",')


def test_sql_error_shows_server_message_and_leaves_no_file(tmp_path, mysql_params, tricky_table):
    with pytest.raises(ExportError) as err:
        export(mysql_params, tricky_table, "SELECT nope FROM t", tmp_path / "e.csv")
    assert "Unknown column 'nope'" in str(err.value) and "1054" in str(err.value)
    assert err.value.retryable is False
    assert list(tmp_path.iterdir()) == []


def test_unreachable_mysql_is_a_clear_retryable_error(tmp_path, mysql_params):
    from conftest import free_port

    with pytest.raises(ExportError) as err:
        export_query({**mysql_params, "port": free_port(), "connect_timeout": 3}, "SELECT 1", tmp_path / "x.csv")
    assert "cannot connect to MySQL at 127.0.0.1" in str(err.value) and err.value.retryable
    assert list(tmp_path.iterdir()) == []


def test_empty_result_writes_header_only(tmp_path, mysql_params, tricky_table):
    res = export(mysql_params, tricky_table, "SELECT id, txt FROM t WHERE id < 0", tmp_path / "z.csv")
    assert res.rows == 0 and (tmp_path / "z.csv").read_text() == "id,txt\n"


def test_large_export_streams_and_counts(tmp_path, mysql_params, mysql_db):
    name, connect = mysql_db
    res = export(mysql_params, name, "SELECT seq AS n, CONCAT('r', seq) AS s FROM seq_1_to_200000 ORDER BY seq",
                 tmp_path / "big.csv", fetch_rows=5000)
    lines = (tmp_path / "big.csv").read_text().splitlines()
    assert res.rows == 200_000 and len(lines) == 200_001 and lines[-1] == "200000,r200000"
