"""TLS to the raw database (case 12): the ``mysql_raw`` connection's TLS settings reach the export.

A second MariaDB is started for this module with a certificate generated here and
``--require-secure-transport=ON``: a plain connection is refused, a TLS one works. Connections are
real Airflow Connections (``AIRFLOW_CONN_<ID>`` JSON) read by ``MySqlSourceHook(conn_id).connect_params()``.
"""
from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import MYSQL_PASSWORD, MYSQL_USER, free_port, run
from dataset_registry.hooks.mysql_source_hook import MySqlSourceHook
from dataset_registry.mysql_export import ExportError, export_query

EXPECTED = "id,name\n1,Zürich\n2,\"a,b\"\n3,\n"
READER, READER_PW = "tls_reader", "tls-reader-pw"


class TlsServer:
    def __init__(self, root, port, cert, other_ca, sock, proc):
        self.root, self.port, self.cert, self.other_ca, self.sock, self.proc = root, port, cert, other_ca, sock, proc


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    import MySQLdb

    for tool in ("mariadbd", "mariadb-install-db", "openssl"):
        if not (shutil.which(tool) or os.path.exists(f"/usr/sbin/{tool}")):
            pytest.fail(f"{tool} is not installed: run `make setup`")
    mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    root = tmp_path_factory.mktemp("tlsdb")
    cert, key, other_ca = root / "cert.pem", root / "key.pem", root / "other-ca.pem"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", root / "other.key", "-out", other_ca,
         "-days", "2", "-subj", "/CN=someone-else"])
    data, sock, port, user = root / "data", root / "mysqld.sock", free_port(), getpass.getuser()
    run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", f"--user={user}", "--skip-test-db"], timeout=120)
    args = [mariadbd, "--no-defaults", f"--datadir={data}", f"--socket={sock}", f"--port={port}",
            "--bind-address=127.0.0.1", f"--pid-file={root / 'mysqld.pid'}", f"--log-error={root / 'error.log'}",
            f"--ssl-cert={cert}", f"--ssl-key={key}", f"--ssl-ca={cert}", "--require-secure-transport=ON",
            "--skip-name-resolve", "--innodb-buffer-pool-size=32M", f"--tmpdir={root}"]
    if os.geteuid() == 0:
        args.append("--user=root")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    admin = None
    try:
        deadline = time.monotonic() + 60
        while admin is None:
            try:
                admin = MySQLdb.connect(unix_socket=str(sock), user=user, autocommit=True, charset="utf8mb4")
            except MySQLdb.Error:
                log = (root / "error.log").read_text(errors="replace")[-3000:] if (root / "error.log").exists() else ""
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the TLS MariaDB did not start (exit {proc.poll()}):\n{log}")
                time.sleep(0.2)
        cur = admin.cursor()
        cur.execute("SELECT @@have_ssl, @@require_secure_transport")
        assert cur.fetchone() == ("YES", 1)
        cur.execute("CREATE DATABASE tlsdb CHARACTER SET utf8mb4")
        cur.execute("CREATE TABLE tlsdb.t (id INT PRIMARY KEY, name VARCHAR(20) NULL) CHARSET utf8mb4")
        cur.execute("INSERT INTO tlsdb.t VALUES (1, 'Zürich'), (2, 'a,b'), (3, NULL)")
        cur.execute(f"CREATE USER '{READER}'@'127.0.0.1' IDENTIFIED BY '{READER_PW}'")
        cur.execute(f"GRANT SELECT ON tlsdb.* TO '{READER}'@'127.0.0.1'")
        admin.close()
        yield TlsServer(root, port, cert, other_ca, sock, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def conn_params(monkeypatch, conn_id: str, port: int, extra: dict | None = None, **fields) -> dict:
    """A real Airflow Connection from ``AIRFLOW_CONN_<ID>``, turned into connect() params by the hook."""
    conn = {"conn_type": "mysql", "host": "127.0.0.1", "port": port, "login": READER, "password": READER_PW,
            "schema": "tlsdb", **fields}
    if extra is not None:
        conn["extra"] = extra
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    return MySqlSourceHook(conn_id).connect_params()


def test_without_tls_settings_the_server_refuses_the_connection(tmp_path, tls_server, monkeypatch):
    params = conn_params(monkeypatch, "tls_plain", tls_server.port)
    with pytest.raises(ExportError) as err:
        export_query(params, "SELECT id, name FROM t ORDER BY id", tmp_path / "x.csv")
    assert f"cannot connect to MySQL at 127.0.0.1:{tls_server.port}: MySQL error 1045: Access denied for user " \
           f"'{READER}'@'127.0.0.1'" in str(err.value)
    assert "or the server requires TLS (require_secure_transport)" in str(err.value)
    assert err.value.retryable is False and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra", [
    pytest.param("ssl_dict", id="ssl-dict-ca"),
    pytest.param("ssl_json_string", id="ssl-json-string"),
    pytest.param("ssl_mode_required", id="ssl_mode-REQUIRED"),
    pytest.param("verify_identity", id="ssl_mode-VERIFY_IDENTITY"),
])
def test_export_over_tls_returns_the_exact_bytes(tmp_path, tls_server, monkeypatch, extra):
    extras = {
        "ssl_dict": {"ssl": {"ca": str(tls_server.cert)}},
        "ssl_json_string": {"ssl": json.dumps({"ca": str(tls_server.cert)})},
        "ssl_mode_required": {"ssl_mode": "REQUIRED"},
        "verify_identity": {"ssl_mode": "VERIFY_IDENTITY", "ssl": {"ca": str(tls_server.cert)}},
    }[extra]
    params = conn_params(monkeypatch, "tls_raw", tls_server.port, extras)
    res = export_query(params, "SELECT id, name FROM t ORDER BY id", tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text(encoding="utf-8") == EXPECTED and res.rows == 3


def test_verify_ca_with_the_wrong_ca_is_refused(tmp_path, tls_server, monkeypatch):
    params = conn_params(monkeypatch, "tls_wrong_ca", tls_server.port,
                         {"ssl_mode": "VERIFY_CA", "ssl": {"ca": str(tls_server.other_ca)}})
    with pytest.raises(ExportError) as err:
        export_query(params, "SELECT id, name FROM t ORDER BY id", tmp_path / "t.csv")
    assert "MySQL error 2026: TLS/SSL error: self-signed certificate" in str(err.value)
    assert err.value.retryable is False and list(tmp_path.iterdir()) == []


def test_unix_socket_from_the_extra_is_used(tmp_path, tls_server, monkeypatch):
    """unix_socket (a secure transport for require_secure_transport) with the OS user's socket auth."""
    params = conn_params(monkeypatch, "tls_sock", tls_server.port, {"unix_socket": str(tls_server.sock)},
                         host="localhost", login=getpass.getuser(), password="")
    assert params["unix_socket"] == str(tls_server.sock)
    export_query(params, "SELECT id, name FROM tlsdb.t ORDER BY id", tmp_path / "s.csv")
    assert (tmp_path / "s.csv").read_text(encoding="utf-8") == EXPECTED


@pytest.mark.parametrize("extra", [{"ssl_mode": "REQUIRED"}, {"ssl": {"ca": "/nonexistent/ca.pem"}}],
                         ids=["ssl_mode-REQUIRED", "ssl-dict"])
def test_tls_required_against_a_server_without_tls_fails_clearly(tmp_path, mysql_params, monkeypatch, extra):
    """The main server has have_ssl=DISABLED; Connector/C would silently talk plain text."""
    import MySQLdb

    probe = MySQLdb.connect(**mysql_params)
    cur = probe.cursor()
    cur.execute("SELECT @@have_ssl")
    assert cur.fetchone()[0] in ("DISABLED", "NO")
    probe.close()
    params = conn_params(monkeypatch, "plain_raw", 3306, extra, login=MYSQL_USER, password=MYSQL_PASSWORD, schema="")
    with pytest.raises(ExportError) as err:
        export_query(params, "SELECT 1 AS one", tmp_path / "p.csv")
    assert str(err.value).startswith("the connection asks for TLS (")
    assert "but the session with 127.0.0.1:3306 is not encrypted (the server offers no TLS)" in str(err.value)
    assert err.value.retryable is False and list(tmp_path.iterdir()) == []


def test_connect_params_are_mysqlhooks_own(monkeypatch):
    """Every field the official MySqlHook honours comes through unchanged (plus connect_timeout)."""
    from airflow.providers.mysql.hooks.mysql import MySqlHook

    extra = {"ssl": json.dumps({"ca": "/x/ca.pem", "cert": "/x/c.pem", "key": "/x/k.pem"}), "ssl_mode": "VERIFY_CA",
             "unix_socket": "/run/x.sock", "charset": "latin1", "connect_timeout": 7}
    params = conn_params(monkeypatch, "fields_raw", 3307, extra)
    official = MySqlHook(mysql_conn_id="fields_raw")._get_conn_config_mysql_client(
        MySqlHook(mysql_conn_id="fields_raw").get_connection("fields_raw"))
    assert params == {**official, "connect_timeout": 7}
    assert params["ssl"] == {"ca": "/x/ca.pem", "cert": "/x/c.pem", "key": "/x/k.pem"}
    assert params["ssl_mode"] == "VERIFY_CA" and params["unix_socket"] == "/run/x.sock" and params["port"] == 3307
