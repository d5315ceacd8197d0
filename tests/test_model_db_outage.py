"""Model DB down when train_<p> runs: the task fails and retries; when the DB is back, exactly one
experiment row (a real TCP proxy in front of PostgreSQL that starts listening only later)."""
import json
import socket
import threading
import time

import pytest
import sqlalchemy as sa

from conftest import PG_PASSWORD, PG_USER, free_port
from test_dags_e2e import dags_test

pytestmark = pytest.mark.slow


class LateProxy:
    """Refuses connections (nothing listens) until ``up_after`` seconds, then forwards to PostgreSQL."""

    def __init__(self, port, up_after):
        self.port, self.up_after, self.stop = port, up_after, threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        time.sleep(self.up_after)
        server = socket.create_server(("127.0.0.1", self.port))
        server.settimeout(0.5)
        while not self.stop.is_set():
            try:
                client, _ = server.accept()
            except socket.timeout:
                continue
            upstream = socket.create_connection(("127.0.0.1", 5432))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()
        server.close()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_train_retries_through_a_model_db_outage_and_records_once(tmp_path, shop, registry, pg_database):
    yaml_path = tmp_path / "projects" / "shop.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("retries: 0", "retries: 6\nretry_delay_seconds: 2"))
    assert dags_test(shop, {"start": "2024-05-01T00:00:00Z", "end": "2024-05-02T00:00:00Z"}, tmp_path).returncode == 0

    port = free_port()
    database = pg_database.rsplit("/", 1)[1]
    env = {**shop, "AIRFLOW_CONN_MODEL_DB": json.dumps({
        "conn_type": "postgres", "host": "127.0.0.1", "port": port, "login": PG_USER, "password": PG_PASSWORD,
        "schema": database, "extra": {"connect_timeout": 3}})}
    proxy = LateProxy(port, up_after=20)
    try:
        proc = dags_test(env, {"version": "v20240502T000000"}, tmp_path, "train_shop")
    finally:
        proxy.stop.set()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "127.0.0.1" in out and "Connection refused" in out  # the outage was seen and reported
    assert "up_for_retry" in out or "try_number=2" in out or "UP_FOR_RETRY" in out
    engine = sa.create_engine(pg_database)
    with engine.begin() as conn:
        rows = conn.execute(sa.text("SELECT training_dataset, status FROM experiments")).all()
        versions = conn.execute(sa.text("SELECT tag FROM dataset_versions")).all()
    engine.dispose()
    assert rows == [("shop/v20240502T000000", "succeeded")]
    assert versions == [("shop/v20240502T000000",)]
