"""The C export engine (``dataset_registry._fastexport``) against the reference Python engine:
byte-for-byte the same CSV, the same profile and the same unique-key facts, on a tricky-values table
and on a seeded 1M-row random table; the same failures (killed stream, full disk, second result
set); and the fallback to the Python engine when the extension is not there."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
import uuid

import pytest

from dataset_registry.column_profile import SKETCH_K
from dataset_registry.mysql_export import ExportError, export_query

try:
    from dataset_registry import _fastexport  # noqa: F401
except ImportError:  # pragma: no cover - the whole module needs the built engine
    pytest.skip("dataset_registry._fastexport is not built (scripts/build_fastexport.py)", allow_module_level=True)

BIG_ROWS = 1_000_000

TRICKY_DDL = """
CREATE TABLE tricky (
  id INT PRIMARY KEY, txt MEDIUMTEXT NULL, vbin VARCHAR(400) COLLATE utf8mb4_bin NULL, dec2 DECIMAL(10,2) NULL,
  dec30 DECIMAL(30,10) NULL, dt0 DATETIME NULL, dt3 DATETIME(3) NULL, dt6 DATETIME(6) NULL, ts TIMESTAMP NULL,
  tm TIME NULL, yr YEAR NULL, bt BIT(10) NULL, bn BINARY(4) NULL, vb VARBINARY(20) NULL, bl MEDIUMBLOB NULL, js JSON NULL,
  en ENUM('a','b,c','"q"','') NULL, st SET('x','y','z') NULL, zf INT(6) ZEROFILL NULL, ub BIGINT UNSIGNED NULL,
  fl FLOAT NULL, db DOUBLE NULL, ch CHAR(3) NULL, ti TINYINT NULL, g POINT NULL
) CHARSET utf8mb4"""

# Each row: values for id..g (g is WKT text or None).
TRICKY_ROWS = [
    (1,) + (None,) * 24,
    (2, "", "", "0.00", "0.0000000000", "2024-01-01 00:00:00", "2024-01-01 00:00:00.000", "2024-01-01 00:00:00.000000",
     "2024-01-01 00:00:00", "00:00:00", 2024, 0, b"\x00\x00\x00\x00", b"", b"", "{}", "", "", 0, 0, 0.0, 0.0, "", 0,
     "POINT(0 0)"),
    (3, 'say "hi", ok', 'Zürich', "-12.50", "-12345678901234567890.0123456789", "1999-12-31 23:59:59",
     "2024-02-29 23:59:59.999", "2024-02-29 23:59:59.123456", "2038-01-19 03:14:07", "-838:59:59", 1901, 1023,
     b"\xff\xfe\x00\n", b"\x00\xff\n", b"a\x00b", '{"a": [1, "x,y"], "q": "\\"quoted\\""}', "b,c", "x,z", 7,
     18446744073709551615, -3.4e38, -1.7976931348623157e308, "abc", -128, "POINT(1.5 -2.25)"),
    (4, "line1\nline2", "a", "99999999.99", "12345678901234567890.0123456789", "2024-03-01 08:00:00",
     "2024-03-01 08:00:00.001", "2024-03-01 08:00:00.000001", "1970-01-01 00:00:01", "838:59:59", 2155, 1, b"ab",
     b"ab", b"\x01\x02", "[]", '"q"', "y", 999999, 1, 1.5, 2.5e-300, "x\"y", 127, "POINT(-1 1)"),
    (5, "crlf\r\nend\rcr", "b", "-0.01", "0.0000000001", "2000-02-29 12:34:56", "2000-02-29 12:34:56.500",
     "2000-02-29 12:34:56.500000", "2000-02-29 12:34:56", "-00:00:01", 2000, 512, None, b"\xff", b"\xff" * 300, "null",
     "a", "x,y,z", 42, 9223372036854775808, 3.14159, 0.1, "é", 0, None),
    (6, "emoji 😀 李雷 Zürich, and more", "éclair", "1.00", "-0.0000000001", "2024-03-01 08:00:00",
     "2024-03-01 08:00:00.000", "2024-03-01 08:00:00.000000", "2024-03-01 08:00:00", "12:00:00.000000"[:8], 1970,
     None, b"1234", b"\x80", None, '{"emoji": "😀"}', None, None, 1, 5, -0.0, -2.5, "😀", -1, None),
    (7, "x" * 70_000, "y" * 300, "3.30", "3.3000000000", "2024-03-01 08:00:00", "2024-03-01 08:00:00.000",
     "2024-03-01 08:00:00.000000", "2024-03-01 08:00:00", "00:00:00", 2024, 3, None, None, b"z" * 70_000, "1", "a",
     "x", 123, 5, 1e10, 1e-5, ",", 5, None),
    (8, "NULL", "NULL", "5.00", "5.0000000000", "2024-03-01 08:00:00", "2024-03-01 08:00:00.000",
     "2024-03-01 08:00:00.000000", "2024-03-01 08:00:00", "00:00:00", 2024, 3, None, None, None, '"a,b"', "a", "x", 123,
     5, 1e10, 1e-5, '"', 5, None),
    (9, " lead and trail ", "", "5.00", "5.0000000000", "2024-03-01 08:00:00", "2024-03-01 08:00:00.000",
     "2024-03-01 08:00:00.000000", "2024-03-01 08:00:00", "00:00:00", 2024, 3, None, None, None, None, "a", "x", 123,
     5, 1e10, 1e-5, "\n", 5, None),
]

BIG_DDL = """
CREATE TABLE big (
  id BIGINT PRIMARY KEY, k INT NOT NULL, grp SMALLINT NOT NULL, amount DECIMAL(12,2) NULL, created DATETIME(3) NOT NULL,
  s VARCHAR(80) NULL, b VARBINARY(8) NULL, f DOUBLE NULL, u BIGINT UNSIGNED NULL
) CHARSET utf8mb4"""

BIG_FILL = f"""
INSERT INTO big SELECT seq, CRC32(seq) % 200000, seq % 1000,
  IF(seq % 13 = 0, NULL, (CAST(CRC32(seq * 7) AS SIGNED) % 2000000 - 1000000) / 100),
  '2024-01-01' + INTERVAL (CRC32(seq * 3) % 31536000000) / 1000 SECOND,
  CASE seq % 9 WHEN 0 THEN NULL WHEN 1 THEN '' WHEN 2 THEN CONCAT('q "', seq % 5000, '", x')
    WHEN 3 THEN CONCAT('line\\n', seq % 70) WHEN 4 THEN CONCAT('é😀 ', seq % 20000) ELSE CONCAT('k', CRC32(seq) % 100000) END,
  IF(seq % 5 = 0, NULL, UNHEX(LPAD(HEX(CRC32(seq) % 3000), 4, '0'))),
  IF(seq % 11 = 0, NULL, CRC32(seq) / 7.0e3 - 300000),
  IF(seq % 17 = 0, NULL, 18446744073709551615 - seq)
FROM seq_1_to_{BIG_ROWS}"""


def create_engine_tables(admin_params: dict, prefix: str, rows: int = BIG_ROWS):
    """A new database with the tricky table and ``rows`` rows of the random ``big`` table: (name, admin
    connection, in that database)."""
    import MySQLdb

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = MySQLdb.connect(**admin_params, charset="utf8mb4", autocommit=True)
    cur = admin.cursor()
    cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    cur.execute(f"USE {name}")
    cur.execute("SET time_zone = '+00:00'")
    cur.execute(TRICKY_DDL)
    for row in TRICKY_ROWS:
        cur.execute("INSERT INTO tricky VALUES (" + ",".join(["%s"] * 24) + ", ST_GeomFromText(%s))", row)
    cur.execute(BIG_DDL)
    cur.execute(BIG_FILL.replace(f"seq_1_to_{BIG_ROWS}", f"seq_1_to_{rows}"))
    return name, admin


@pytest.fixture(scope="module")
def engine_db(mysql_admin_params):
    """One database for the module: the tricky table and the 1M-row table (seeded once)."""
    name, admin = create_engine_tables(mysql_admin_params, "dsv_test_engine")
    yield name
    admin.cursor().execute(f"DROP DATABASE {name}")
    admin.close()


def both(params, db, sql, tmp_path, **kw):
    """(reference result, reference bytes, C result, C bytes)."""
    tag = uuid.uuid4().hex[:6]
    ref = export_query({**params, "db": db}, sql, tmp_path / f"ref-{tag}.csv", engine="python", **kw)
    fast = export_query({**params, "db": db}, sql, tmp_path / f"c-{tag}.csv", engine="c", **kw)
    ref_bytes, fast_bytes = ref.path.read_bytes(), fast.path.read_bytes()
    ref.path.unlink()
    fast.path.unlink()
    return ref, ref_bytes, fast, fast_bytes


def assert_same(ref, ref_bytes, fast, fast_bytes, approx_distinct: bool = False):
    if ref_bytes != fast_bytes:  # show the first differing line, not 80 MB
        a, b = ref_bytes.split(b"\n"), fast_bytes.split(b"\n")
        at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        raise AssertionError(f"line {at} differs:\nref {a[at][:300]!r}\nc   {b[at][:300] if at < len(b) else None!r}")
    assert fast.md5 == ref.md5 == hashlib.md5(ref_bytes).hexdigest()
    assert (fast.rows, fast.bytes, fast.columns, fast.column_types, fast.csv_columns) == \
        (ref.rows, ref.bytes, ref.columns, ref.column_types, ref.csv_columns)
    assert fast.key_facts == ref.key_facts
    if ref.profile is None:
        assert fast.profile is None
        return
    assert list(fast.profile) == list(ref.profile)
    for column, want in ref.profile.items():
        got = dict(fast.profile[column])
        want = dict(want)
        if want["distinct"] > SKETCH_K and approx_distinct:
            assert got.pop("distinct") == pytest.approx(want.pop("distinct"), rel=0.05), column
        assert got == want, column


@pytest.mark.parametrize("fetch_rows", [20_000, 3])
def test_tricky_values_are_byte_identical_with_equal_profile(tmp_path, mysql_params, engine_db, fetch_rows):
    result = both(mysql_params, engine_db, "SELECT * FROM tricky ORDER BY id", tmp_path, fetch_rows=fetch_rows)
    assert_same(*result)
    ref, data = result[0], result[1]
    assert data.startswith(b"id,txt,vbin,dec2,dec30,dt0,dt3,dt6,ts,tm,yr,bt,bn,vb,bl,js,en,st,zf,ub,fl,db,ch,ti,g\n")
    lines = data.split(b"\n")
    assert lines[1] == b"1" + b"," * 24
    assert b',"say ""hi"", ok",Z\xc3\xbcrich,-12.50,-12345678901234567890.0123456789,1999-12-31 23:59:59,' in lines[3]
    assert b",-838:59:59,1901,0x03FF,0xFFFE000A,0x00FF0A," in lines[3] and b",000007,18446744073709551615," in lines[3]
    assert ref.profile["bt"]["type"] == "BIT" and ref.profile["zf"]["min"] == "000000" and ref.profile["zf"]["max"] == "999999"


@pytest.mark.parametrize("key", [["id"], ["txt"], ["dec2", "id"], ["zf"], ["db"], ["bl"], ["nope"]])
def test_unique_key_facts_are_equal(tmp_path, mysql_params, engine_db, key):
    for fetch_rows in (20_000, 2):
        assert_same(*both(mysql_params, engine_db, "SELECT * FROM tricky ORDER BY ti, id", tmp_path,
                          fetch_rows=fetch_rows, unique_key=key))


@pytest.mark.parametrize("sql", [
    "SELECT id FROM tricky WHERE id < 0",  # empty result: header only
    "SELECT txt FROM tricky ORDER BY id",  # one column
    "SELECT NULL AS n, '' AS e, 1 AS one, 1.5 AS d, CAST('x' AS BINARY) AS b, 'a' COLLATE utf8mb4_bin AS t",
    "SELECT CAST(12.5 AS DECIMAL(30,10)) AS d, -0.0e0 AS z, CAST(-1 AS TIME) AS tm, YEAR('2024-05-01') AS y",
])
def test_small_shapes_are_byte_identical(tmp_path, mysql_params, engine_db, sql):
    assert_same(*both(mysql_params, engine_db, sql, tmp_path))
    assert_same(*both(mysql_params, engine_db, sql, tmp_path, profile=False))


def test_500_columns(tmp_path, mysql_params, engine_db):
    cols = ", ".join(f"IF(seq % {i % 7 + 2} = 0, NULL, CONCAT(seq * {i}, IF(seq % 3 = 0, ',\"', ''))) AS c{i}"
                     for i in range(500))
    assert_same(*both(mysql_params, engine_db, f"SELECT {cols} FROM seq_1_to_300 ORDER BY seq", tmp_path,
                      fetch_rows=7))


def test_a_16_mb_value(tmp_path, mysql_params, engine_db):
    sql = ("SELECT 1 AS id, REPEAT('a\"b,', 4 * 1024 * 1024) AS big, UNHEX(REPEAT('00FF', 1024 * 1024)) AS bin "
           "UNION ALL SELECT 2, 'small', NULL")
    ref, ref_bytes, fast, fast_bytes = both(mysql_params, engine_db, sql, tmp_path)
    assert_same(ref, ref_bytes, fast, fast_bytes)
    assert len(fast_bytes) > 16 * 1024 * 1024 + 2 * 2 * 1024 * 1024
    assert len(fast.profile["big"]["min"]) == 200 and fast.profile["big"]["max"] == "small"


def test_one_million_random_rows_are_byte_identical(tmp_path, mysql_params, engine_db, request):
    from conftest import report_line

    sql = "SELECT * FROM big ORDER BY id"
    started = time.monotonic()
    ref = export_query({**mysql_params, "db": engine_db}, sql, tmp_path / "ref.csv", engine="python", unique_key=["id"])
    ref_s = time.monotonic() - started
    started = time.monotonic()
    fast = export_query({**mysql_params, "db": engine_db}, sql, tmp_path / "c.csv", engine="c", unique_key=["id"])
    fast_s = time.monotonic() - started
    ref_bytes, fast_bytes = ref.path.read_bytes(), fast.path.read_bytes()
    report_line(request, f"1M rows, {len(ref_bytes) / 1e6:.0f} MB: python engine {ref_s:.2f} s, C engine {fast_s:.2f} s")
    assert ref.rows == BIG_ROWS and ref.key_facts["duplicates"] == 0 and ref.key_facts["unsorted"] == 0
    assert_same(ref, ref_bytes, fast, fast_bytes, approx_distinct=True)
    p = fast.profile
    assert p["grp"]["distinct"] == 1000 and p["id"]["distinct"] == pytest.approx(BIG_ROWS, rel=0.05)
    assert p["s"]["empty"] > 0 and p["s"]["nulls"] > 0 and p["b"]["type"] == "VARBINARY"


def test_unsorted_key_over_a_million_rows(tmp_path, mysql_params, engine_db):
    sql = "SELECT id, grp FROM big ORDER BY grp, id"
    assert_same(*both(mysql_params, engine_db, sql, tmp_path, unique_key=["grp"], profile=False))


# ------------------------------------------------------------------------ failures, as before
def test_killed_mid_stream_fails_and_leaves_no_file(tmp_path, mysql_params, engine_db):
    import MySQLdb

    dest = tmp_path / "k.csv"
    outcome = {}

    def exporter():
        try:
            export_query({**mysql_params, "db": engine_db},
                         "SELECT seq AS killme_c, REPEAT('x', 200) AS pad FROM seq_1_to_5000000 ORDER BY seq", dest,
                         engine="c")
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
        partial = dest.with_name("k.csv.partial")
        if partial.exists() and partial.stat().st_size > 1_000_000:
            cur.execute("SELECT id FROM information_schema.processlist WHERE info LIKE 'SELECT seq AS killme_c%%'")
            row = cur.fetchone()
            if row:
                victim = row[0]
                break
    assert victim, "the export never showed up streaming"
    cur.execute(f"KILL {int(victim)}")
    thread.join(120)
    admin.close()
    assert "error" in outcome, outcome
    message = str(outcome["error"])
    assert "reading the result failed after" in message and "MySQL error" in message, message
    assert outcome["error"].retryable
    assert not dest.exists() and not dest.with_name("k.csv.partial").exists()


def test_full_disk_fails_fast_names_the_file_and_leaves_nothing(tmp_path, mysql_params, engine_db):
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
    try:
        dest = mount / "big.csv"
        started = time.monotonic()
        with pytest.raises(ExportError) as err:
            export_query({**mysql_params, "db": engine_db}, "SELECT * FROM big ORDER BY id", dest, engine="c")
        # the connection is closed before the result is freed: the other ~80 MB are not read first
        assert time.monotonic() - started < 5
        assert "no space left on the device while writing the export" in str(err.value) and str(dest) in str(err.value)
        assert list(mount.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_sql_errors_keep_codes_and_retry_classification(tmp_path, mysql_params, engine_db):
    with pytest.raises(ExportError) as err:
        export_query({**mysql_params, "db": engine_db}, "SELECT nope FROM tricky", tmp_path / "e.csv", engine="c")
    assert "MySQL error 1054" in str(err.value) and err.value.retryable is False
    with pytest.raises(ExportError) as err:
        export_query({**mysql_params, "db": engine_db}, "SELECT SLEEP(5) AS s", tmp_path / "t.csv", engine="c",
                     query_timeout=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("engine", ["c", "python"])
def test_text_that_is_not_utf8_stops_both_engines_and_publishes_nothing(tmp_path, mysql_params, engine_db, engine):
    """MariaDB passes `_utf8mb4 X'EDA080'` (an encoded surrogate) through as it is: the CSV must be
    UTF-8, so neither engine may write it (the C engine once copied the bytes as they came)."""
    sql = "SELECT 1 AS id, 'ok' AS a UNION ALL SELECT 2, _utf8mb4 X'EDA080' ORDER BY id"
    with pytest.raises(ExportError) as err:
        export_query({**mysql_params, "db": engine_db}, sql, tmp_path / "u.csv", engine=engine)
    assert "not valid UTF-8" in str(err.value) and err.value.retryable is False
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ engine choice and fallback
def test_fallback_to_python_engine_when_the_extension_is_missing(tmp_path, mysql_params, engine_db, monkeypatch,
                                                                 caplog):
    sql = "SELECT * FROM tricky ORDER BY id"
    reference = export_query({**mysql_params, "db": engine_db}, sql, tmp_path / "ref.csv", engine="python")
    import dataset_registry

    monkeypatch.setitem(sys.modules, "dataset_registry._fastexport", None)  # import now raises ImportError
    monkeypatch.delattr(dataset_registry, "_fastexport", raising=False)
    caplog.set_level("INFO", logger="dataset_registry.mysql_export")
    res = export_query({**mysql_params, "db": engine_db}, sql, tmp_path / "fallback.csv")
    assert res.md5 == reference.md5 and res.profile == reference.profile
    assert "export engine: python (the C engine is not built" in caplog.text
    with pytest.raises(ExportError) as err:  # asked for explicitly: a clear error, not a silent fallback
        export_query({**mysql_params, "db": engine_db}, sql, tmp_path / "c.csv", engine="c")
    assert "cannot be imported" in str(err.value) and not err.value.retryable


def test_a_different_client_library_falls_back(tmp_path, mysql_params, engine_db, monkeypatch, caplog):
    import MySQLdb

    from dataset_registry import _fastexport

    monkeypatch.setattr(MySQLdb._mysql, "get_client_info", lambda: "8.0.99-other")
    caplog.set_level("INFO", logger="dataset_registry.mysql_export")
    res = export_query({**mysql_params, "db": engine_db}, "SELECT id FROM tricky ORDER BY id", tmp_path / "a.csv")
    assert res.rows == len(TRICKY_ROWS)
    assert f"export engine: python (the C engine is linked with client library {_fastexport.client_info()}" in caplog.text


def test_default_engine_is_c_and_env_var_chooses(tmp_path, mysql_params, engine_db, monkeypatch, caplog):
    caplog.set_level("INFO", logger="dataset_registry.mysql_export")
    export_query({**mysql_params, "db": engine_db}, "SELECT id FROM tricky", tmp_path / "a.csv")
    assert "export engine: c (dataset_registry._fastexport)" in caplog.text
    caplog.clear()
    monkeypatch.setenv("DATASET_EXPORT_ENGINE", "python")
    export_query({**mysql_params, "db": engine_db}, "SELECT id FROM tricky", tmp_path / "b.csv")
    assert "export engine: python (asked for)" in caplog.text
    caplog.clear()
    export_query({**mysql_params, "db": engine_db}, "SELECT id FROM tricky", tmp_path / "p.csv",
                 preprocess=lambda frame: frame, engine="c")
    assert "export engine: python (preprocess)" in caplog.text


def test_a_fresh_process_picks_the_c_engine(tmp_path, mysql_params, engine_db):
    """Nothing but the export imported (as in a task process or the benchmark)."""
    from conftest import REPO

    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"
            f"sys.path.insert(0, {str(REPO / 'plugins')!r})\n"
            "from pathlib import Path\nfrom dataset_registry.mysql_export import export_query\n"
            f"export_query({ {**mysql_params, 'db': engine_db}!r}, 'SELECT id FROM tricky', Path({str(tmp_path / 'f.csv')!r}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "export engine: c (dataset_registry._fastexport)" in proc.stdout, proc.stdout


def test_hash_is_stable_and_spreads():
    from dataset_registry import _fastexport

    assert _fastexport.hash_value(b"abc") == _fastexport.hash_value(bytearray(b"abc"))
    values = {_fastexport.hash_value(str(i).encode()) for i in range(100_000)}
    assert len(values) == 100_000
    assert len({_fastexport.hash_value(b"x" * n) for n in range(64)}) == 64  # zero padding vs length
    negatives = sum(v < 0 for v in values)
    assert 0.48 < negatives / 100_000 < 0.52


def test_progress_is_logged_while_streaming(tmp_path, mysql_params, engine_db, caplog):
    caplog.set_level("INFO", logger="dataset_registry.mysql_export")
    export_query({**mysql_params, "db": engine_db}, "SELECT id, s FROM big WHERE id <= 100000 ORDER BY id",
                 tmp_path / "p.csv", engine="c", fetch_rows=10_000, progress_seconds=0)
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("exported ")]
    assert len(progress) >= 10 and progress[-1].startswith("exported 100000 rows"), progress[-3:]
