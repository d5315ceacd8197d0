"""The export never writes to the raw database, against the real MariaDB.

Most tests export with the ADMIN account (it may do anything): the point is that the export code
itself refuses, whatever the account could do. Three layers are shown one by one: the statement
guard (refused before anything runs), the connection (multi-statements off: the server refuses a
second statement), the session (READ ONLY: a COMMIT cannot open a writable transaction). The last
tests show the fourth layer: the demo/test export account is SELECT-only.
"""
from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import MYSQL_USER, REPO
from dataset_registry import mysql_export
from dataset_registry.mysql_export import ExportError, export_query

ROWS = [(1, "a"), (2, "b"), (3, "c")]


@pytest.fixture
def victim(mysql_db):
    """A table ``t`` with three rows, a sequence ``s`` and a procedure returning two result sets."""
    name, connect = mysql_db
    conn = connect()
    cur = conn.cursor()
    cur.execute("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20))")
    cur.executemany("INSERT INTO t VALUES (%s, %s)", ROWS)
    cur.execute("CREATE SEQUENCE s START WITH 100")
    cur.execute("CREATE PROCEDURE two_results() BEGIN SELECT id FROM t ORDER BY id; SELECT v FROM t ORDER BY id; END")
    conn.close()
    return name, connect


def table_rows(connect, table="t"):
    conn = connect()
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT id, v FROM {table} ORDER BY id")
        return [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()


def tables(connect) -> list[str]:
    conn = connect()
    try:
        cur = conn.cursor()
        cur.execute("SHOW FULL TABLES")
        return sorted(r[0] for r in cur.fetchall())
    finally:
        conn.close()


def refused(params, db, sql, tmp_path, **kw) -> ExportError:
    with pytest.raises(ExportError) as err:
        export_query({**params, "db": db}, sql, tmp_path / "out.csv", **kw)
    assert list(tmp_path.iterdir()) == [], "nothing may be left behind (no CSV, no .partial)"
    return err.value


@pytest.fixture
def no_guard(monkeypatch):
    """Switch the statement guard off, to show the layers below it on their own."""
    try:
        from dataset_registry import sql_guard
    except ImportError:  # code without a guard: nothing to switch off
        return
    monkeypatch.setattr(sql_guard, "check_query", lambda *a, **k: None)


# --------------------------------------------------------------- the reported attacks, whole export
def test_select_then_drop_table_is_refused_and_the_table_survives(tmp_path, mysql_admin_params, victim):
    db, connect = victim
    err = refused(mysql_admin_params, db, "SELECT id, v FROM t ORDER BY id; DROP TABLE t", tmp_path)
    assert str(err).startswith("query refused (one statement): more than one statement")
    assert "'DROP TABLE t'" in str(err) and err.retryable is False
    assert table_rows(connect) == ROWS


def test_select_commit_update_is_refused_and_no_row_changes(tmp_path, mysql_admin_params, victim):
    db, connect = victim
    err = refused(mysql_admin_params, db, "SELECT id, v FROM t ORDER BY id; COMMIT; UPDATE t SET v = 'pwned'", tmp_path)
    assert "query refused (one statement)" in str(err) and err.retryable is False
    assert table_rows(connect) == ROWS


def test_select_then_create_table_is_refused_and_nothing_is_created(tmp_path, mysql_admin_params, victim):
    db, connect = victim
    err = refused(mysql_admin_params, db, "SELECT id FROM t ORDER BY id;\n CREATE TABLE t2 (id INT)", tmp_path)
    assert "query refused (one statement)" in str(err)
    assert tables(connect) == ["s", "t"]


@pytest.mark.parametrize("kind", ["OUTFILE", "DUMPFILE"])
def test_into_outfile_is_refused_and_no_file_is_written_on_the_db_host(tmp_path, mysql_admin_params, victim, kind):
    db, _ = victim
    target = Path(f"/tmp/dsv-{kind.lower()}-{uuid.uuid4().hex}")
    sql = f"SELECT id FROM t WHERE id = 1 INTO {kind} '{target}'"
    try:
        err = refused(mysql_admin_params, db, sql, tmp_path)
        assert str(err).startswith(f"query refused (no INTO): INTO {kind} at line 1, column 31 would write a file")
        assert err.retryable is False
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


def test_a_dash_dash_del_comment_cannot_hide_into_outfile(tmp_path, mysql_admin_params, victim):
    db, connect = victim
    target = Path(f"/tmp/dsv-del-{uuid.uuid4().hex}")
    try:  # the server reads "--\x7f" as a comment start, so the quote after it would hide the next line
        err = refused(mysql_admin_params, db, f"SELECT id FROM t --\x7f '\nINTO OUTFILE '{target}' # '\n", tmp_path)
        assert str(err).startswith("query refused (no control characters): control character '\\x7f' at line 1")
        assert not target.exists() and err.retryable is False
    finally:
        target.unlink(missing_ok=True)
    assert table_rows(connect) == ROWS


def test_executable_comment_is_refused_and_writes_no_file(tmp_path, mysql_admin_params, victim):
    db, connect = victim
    target = Path(f"/tmp/dsv-comment-{uuid.uuid4().hex}")
    try:
        err = refused(mysql_admin_params, db, f"SELECT id FROM t WHERE id = 1 /*! INTO OUTFILE '{target}' */", tmp_path)
        assert str(err).startswith("query refused (no executable comment): '/*! '... at line 1, column 31")
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)
    assert table_rows(connect) == ROWS


@pytest.mark.parametrize("clause", ["FOR UPDATE", "LOCK IN SHARE MODE", "FOR SHARE"])
def test_locking_read_is_refused_before_it_runs(tmp_path, mysql_admin_params, victim, clause):
    db, _ = victim
    err = refused(mysql_admin_params, db, f"SELECT id FROM t ORDER BY id {clause}", tmp_path)
    assert str(err).startswith("query refused (no locking read)") and err.retryable is False


def test_guard_reads_backslashes_as_the_session_does(tmp_path, mysql_admin_params, victim):
    """Under NO_BACKSLASH_ESCAPES, 'a\\' is a whole string: what follows is a second statement."""
    db, connect = victim
    params = {**mysql_admin_params, "init_command": "SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'"}
    err = refused(params, db, "SELECT 'a\\' AS x; DROP TABLE t; -- '", tmp_path)
    assert "query refused (one statement)" in str(err)
    assert table_rows(connect) == ROWS


def test_legitimate_tricky_query_still_exports_exactly(tmp_path, mysql_params, victim):
    db, _ = victim
    sql = ("-- leading comment; with a semicolon\n"
           "WITH x AS (SELECT id, v FROM t WHERE v <> ';') /* ; DROP TABLE t */\n"
           "SELECT id, 'it''s; fine' AS s1, \"c\\\"; d\" AS s2, v AS `semi;colon` FROM x # end ; comment\n"
           "ORDER BY id ;  -- the only statement\n")
    res = export_query({**mysql_params, "db": db}, sql, tmp_path / "ok.csv")
    assert res.rows == 3
    assert (tmp_path / "ok.csv").read_text().splitlines() == [
        "id,s1,s2,semi;colon", '1,it\'s; fine,"c""; d",a', '2,it\'s; fine,"c""; d",b', '3,it\'s; fine,"c""; d",c']


# --------------------------------------------------------------- layer 2: the connection
def test_export_connection_has_multi_statements_off_on_the_server(mysql_admin_params, victim):
    import MySQLdb

    db, connect = victim
    conn = mysql_export.connect({**mysql_admin_params, "db": db})
    try:
        with pytest.raises(MySQLdb.Error) as err:
            conn.cursor().execute("SELECT 1; SELECT 2")
        assert err.value.args[0] == 1064 and "near 'SELECT 2'" in err.value.args[1]
    finally:
        conn.close()


def test_without_the_guard_the_server_refuses_the_second_statement(tmp_path, mysql_admin_params, victim, no_guard):
    db, connect = victim
    err = refused(mysql_admin_params, db, "SELECT id, v FROM t ORDER BY id; DROP TABLE t", tmp_path)
    assert "MySQL error 1064" in str(err) and "near 'DROP TABLE t'" in str(err) and err.retryable is False
    assert table_rows(connect) == ROWS


def test_a_second_result_set_fails_the_export_and_publishes_nothing(tmp_path, mysql_admin_params, victim, no_guard):
    db, _ = victim
    err = refused(mysql_admin_params, db, "CALL two_results()", tmp_path)
    assert "returned more than one result set" in str(err) and err.retryable is False


# --------------------------------------------------------------- layer 3: the read-only session
def test_session_stays_read_only_after_a_commit(mysql_admin_params, victim):
    import MySQLdb

    db, connect = victim
    conn = mysql_export.connect({**mysql_admin_params, "db": db})
    try:
        cur = conn.cursor()
        version, _ = mysql_export.session_info(cur)
        mysql_export.begin_read_only_snapshot(cur, version=version)
        cur.execute("COMMIT")  # ends the READ ONLY transaction: the next one must still be read-only
        with pytest.raises(MySQLdb.Error) as err:
            cur.execute("UPDATE t SET v = 'pwned' WHERE id = 1")
        assert err.value.args == (1792, "Cannot execute statement in a READ ONLY transaction")
        with pytest.raises(MySQLdb.Error) as err:
            cur.execute("CREATE TABLE t3 (id INT)")
        assert err.value.args[0] == 1792
    finally:
        conn.close()
    assert table_rows(connect) == ROWS and tables(connect) == ["s", "t"]


def test_a_write_the_guard_lets_through_fails_at_once_without_retry(tmp_path, mysql_admin_params, victim):
    """NEXTVAL() is a SELECT that writes (it advances a sequence): the read-only session refuses it
    with 1792, and that error is permanent (case 20: it used to be retried for minutes)."""
    db, connect = victim
    err = refused(mysql_admin_params, db, "SELECT NEXTVAL(s) AS n", tmp_path)
    assert "MySQL error 1792: Cannot execute statement in a READ ONLY transaction" in str(err)
    assert err.retryable is False
    conn = connect()
    cur = conn.cursor()
    cur.execute("SELECT next_not_cached_value FROM s")
    assert cur.fetchone()[0] == 100  # never advanced
    conn.close()


def test_a_direct_update_without_the_guard_is_a_permanent_1792(tmp_path, mysql_admin_params, victim, no_guard):
    db, connect = victim
    err = refused(mysql_admin_params, db, "UPDATE t SET v = 'pwned'", tmp_path)
    assert "MySQL error 1792" in str(err) and err.retryable is False
    assert table_rows(connect) == ROWS


@pytest.mark.parametrize("code", [1792, 1290, 1836, 1227, 1142, 1143])
def test_read_only_and_privilege_errors_are_permanent(code):
    import MySQLdb

    assert mysql_export._retryable(MySQLdb.OperationalError(code, "x")) is False
    assert mysql_export._retryable(MySQLdb.OperationalError(2013, "Lost connection")) is True


@pytest.mark.parametrize("sql,code", [
    ("SELECT id FROM t UNION SELECT 1, 2", 1222),  # different number of columns
    ("SELECT id FROM t JOIN t AS u ON 1 = 1", 1052),  # ambiguous column
    ("SELECT ABS(1, 2)", 1582),  # wrong argument count
    ("SELECT nosuch FROM t", 1054),
])
def test_deterministic_sql_errors_fail_without_retry(tmp_path, mysql_params, victim, sql, code):
    db, _ = victim
    err = refused(mysql_params, db, sql, tmp_path)
    assert f"MySQL error {code}" in str(err) and err.retryable is False


def test_operator_fails_a_read_only_violation_without_retry(tmp_path, mysql_admin_params, victim, registry, monkeypatch):
    import json
    import time

    from airflow.sdk.exceptions import AirflowFailException

    from dataset_registry.operators.version_dataset import VersionDatasetOperator

    db, _ = victim
    monkeypatch.setenv("AIRFLOW_CONN_MYSQL_RAW", json.dumps({
        "conn_type": "mysql", "host": "127.0.0.1", "port": 3306, "schema": db,
        "login": mysql_admin_params["user"], "password": mysql_admin_params["passwd"]}))
    monkeypatch.setenv("AIRFLOW_CONN_DVC_REGISTRY", registry.conn_json())
    monkeypatch.setenv("DATASET_WORK_DIR", str(tmp_path / "worker"))
    op = VersionDatasetOperator(task_id="t", project="seq", output_file="o.csv", query="SELECT NEXTVAL(s) AS n",
                                version="v1", start="2024-01-01", end="2024-01-02")
    started = time.monotonic()
    with pytest.raises(AirflowFailException) as err:
        op.execute({"data_interval_start": None, "data_interval_end": None})
    assert time.monotonic() - started < 30
    assert "MySQL error 1792" in str(err.value)
    assert registry.tags() == []


# --------------------------------------------------------------- layer 4: the account (bootstrap)
def test_demo_account_is_select_only(tmp_path, mysql_params, victim):
    import MySQLdb

    db, connect = victim
    conn = MySQLdb.connect(**mysql_params, db=db, autocommit=True)
    try:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM t")
        assert cur.fetchone()[0] == 3
        for sql, command in [("DROP TABLE t", "DROP"), ("INSERT INTO t VALUES (9, 'x')", "INSERT"),
                             ("UPDATE t SET v = 'x'", "UPDATE"), ("CREATE TABLE t4 (id INT)", "CREATE")]:
            with pytest.raises(MySQLdb.Error) as err:
                cur.execute(sql)
            assert err.value.args[0] == 1142, err.value.args
            assert err.value.args[1].startswith(f"{command} command denied to user '{MYSQL_USER}'@")
        cur.execute("SHOW GRANTS")
        grants = "\n".join(r[0] for r in cur.fetchall())
    finally:
        conn.close()
    assert "ALL PRIVILEGES" not in grants and "FILE" not in grants
    assert "GRANT SELECT ON `dsv\\_test\\_%`.*" in grants and "GRANT SELECT ON `demo_raw`.*" in grants
    assert table_rows(connect) == ROWS and tables(connect) == ["s", "t"]


def test_demo_account_cannot_write_files_even_without_the_guard(tmp_path, mysql_params, victim, no_guard):
    db, _ = victim
    target = Path(f"/tmp/dsv-outfile-{uuid.uuid4().hex}")
    try:
        err = refused(mysql_params, db, f"SELECT id FROM t INTO OUTFILE '{target}'", tmp_path)
        assert "MySQL error 1227: Access denied; you need (at least one of) the FILE privilege(s)" in str(err)
        assert err.retryable is False
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


def test_bootstrap_twice_keeps_the_account_select_only(mysql_params):
    import MySQLdb

    for _ in range(2):
        proc = subprocess.run(["bash", str(REPO / "scripts" / "bootstrap.sh")], capture_output=True, text=True,
                              timeout=900, env={**os.environ})
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "[bootstrap] ready" in proc.stdout
    conn = MySQLdb.connect(**mysql_params)
    try:
        cur = conn.cursor()
        cur.execute("SHOW GRANTS")
        grants = sorted(r[0].split(" TO ")[0] for r in cur.fetchall())
    finally:
        conn.close()
    assert grants == ["GRANT SELECT ON `demo_raw`.*", "GRANT SELECT ON `dsv\\_bench`.*",
                      "GRANT SELECT ON `dsv\\_test\\_%`.*", "GRANT USAGE ON *.*"]


# --------------------------------------------------------------- the guard's rules, one by one
GUARD_REFUSES = [
    ("SELECT 1; SELECT 2", "one statement"),
    ("SELECT 1;;", "one statement"),
    ("SELECT 1 --\n; DROP TABLE t", "one statement"),
    ("SELECT 1--1; DROP TABLE t", "one statement"),  # "--1" is not a comment for the server
    ("SELECT 1 # x\n; DROP TABLE t", "one statement"),
    ("SELECT '\\''; DROP TABLE t; -- '", "one statement"),
    ("SELECT \"a\"\"b\"; DROP TABLE t", "one statement"),
    ("", "read-only statement"), ("  \n ", "read-only statement"), ("-- nothing\n", "read-only statement"),
    (";", "read-only statement"),
    ("DO SLEEP(1)", "read-only statement"), ("SET @a = 1", "read-only statement"),
    ("CALL two_results()", "read-only statement"), ("SHOW TABLES", "read-only statement"),
    ("HANDLER t OPEN", "read-only statement"), ("INSERT INTO t VALUES (9, 'x')", "read-only statement"),
    ("LOAD DATA INFILE '/etc/passwd' INTO TABLE t", "read-only statement"),
    ("  update t set v = 1", "read-only statement"), ("(UPDATE t SET v = 1)", "read-only statement"),
    ("WITH c AS (SELECT 1) UPDATE t SET v = 1", "read-only statement"),
    ("WITH c AS (SELECT 1), d AS (SELECT 2) DELETE FROM t", "read-only statement"),
    ("SELECT 1 INTO @a", "no INTO"), ("SELECT 1e0INTO @a", "no INTO"), ("SELECT .5INTO @a", "no INTO"),
    ("SELECT 1 INTO/**/OUTFILE '/tmp/x'", "no INTO"), ("select 1 into dumpfile '/tmp/x'", "no INTO"),
    ("SELECT id FROM t FOR UPDATE SKIP LOCKED", "no locking read"), ("SELECT 1 FOR SHARE NOWAIT", "no locking read"),
    ("SELECT 1 lock  in share mode", "no locking read"),
    ("SELECT 1 /*!50000 , 2 */", "no executable comment"), ("SELECT 1 /*M!100000 , 2 */", "no executable comment"),
    ("SELECT 1 AS a --\x7f '\nINTO OUTFILE '/tmp/x' # '\n", "no control characters"),
    ("SELECT id FROM t --\x7f '\nLOCK IN SHARE MODE # '\n", "no control characters"),
    ("SELECT 1 --\x01 x", "no control characters"), ("SELECT '\x00'", "no control characters"),
    ("SELECT 'unterminated", "complete query"), ("SELECT `x", "complete query"), ("SELECT 1 /* open", "complete query"),
]


@pytest.mark.parametrize("sql,rule", GUARD_REFUSES, ids=[repr(s)[:40] for s, _ in GUARD_REFUSES])
def test_guard_refuses_with_the_rule_name(sql, rule):
    from dataset_registry.sql_guard import QueryRefused, check_query

    with pytest.raises(QueryRefused) as err:
        check_query(sql)
    assert err.value.rule == rule and str(err.value).startswith(f"query refused ({rule}): ")


def test_guard_reads_double_quotes_as_identifiers_under_ansi_quotes():
    from dataset_registry.sql_guard import QueryRefused, check_query

    sql = 'SELECT "a\\"; DROP TABLE t; -- "'
    check_query(sql)  # default sql_mode: one string literal
    with pytest.raises(QueryRefused, match=r"query refused \(one statement\)"):
        check_query(sql, ansi_quotes=True)


GUARD_ACCEPTS = [
    ("SELECT 1 AS x;", "x\n1\n"),
    ("SELECT 'a;b' AS x -- ; DROP\n", "x\na;b\n"),
    ("SELECT 1 AS x # ; DROP TABLE t", "x\n1\n"),
    ("SELECT 1--1 AS x", "x\n2\n"),
    ("(SELECT id FROM t WHERE id = 1) UNION (SELECT id FROM t WHERE id = 2) ORDER BY id", "id\n1\n2\n"),
    ("WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 3) SELECT n FROM c", "n\n1\n2\n3\n"),
    ("VALUES (1, 'a'), (2, 'b')", "1,a\n1,a\n2,b\n"),
    ("SELECT `into` FROM (SELECT 1 AS `into`) AS d", "into\n1\n"),
    ("SELECT 'it\\'s' AS x, \"say \"\"hi\"\"\" AS y", "x,y\nit's,\"say \"\"hi\"\"\"\n"),
    ("SELECT /*+ not a hint */ pinto FROM (SELECT 1 AS pinto) d /* ; */ ;  -- done", "pinto\n1\n"),
]


@pytest.mark.parametrize("sql,csv_text", GUARD_ACCEPTS, ids=[repr(s)[:40] for s, _ in GUARD_ACCEPTS])
def test_guard_accepts_what_the_server_runs_as_one_select(tmp_path, mysql_params, victim, sql, csv_text):
    db, connect = victim
    export_query({**mysql_params, "db": db}, sql, tmp_path / "ok.csv")
    assert (tmp_path / "ok.csv").read_text() == csv_text
    assert table_rows(connect) == ROWS
