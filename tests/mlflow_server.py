"""A real MLflow tracking server for the tests (``.venv-mlflow/bin/mlflow server``, made by
scripts/bootstrap.sh in its own venv) on a free loopback port, SQLite backend store, artifacts
proxied by the server (``--artifacts-destination``) so the client uploads over HTTP as it would to a
remote server. Session-scoped; ``stop()``/``start()`` keep the port, the store and the artifacts, so
an outage test can take it away and bring the same server back.

Use it with ``from mlflow_server import mlflow_server  # noqa: F401`` in a test module.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, free_port

MLFLOW_BIN = REPO / ".venv-mlflow" / "bin" / "mlflow"
READY_SECONDS = 90


@dataclass
class MlflowServer:
    root: Path
    port: int
    proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def conn_json(self, **fields) -> str:
        """An Airflow connection (JSON) for this server; ``fields`` are added (login, password, extra)."""
        return json.dumps({"conn_type": "http", "host": self.uri, **fields})

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def start(self) -> None:
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [str(MLFLOW_BIN), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts")],
            cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            # No background job runner: eight huey processes the tracking tests never use.
            env={**{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHONPATH"))},
                 "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.healthy():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("mlflow server did not become ready: " + (self.root / "server.log").read_text()[-3000:])

    def stop(self) -> None:
        """Kill the server and its children (uvicorn worker, job runner) at once, as a crash would
        (SQLite is crash-safe); the port is closed after."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.proc = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)

    def ensure_running(self) -> None:
        if not self.healthy():
            self.stop()
            self.start()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    if not MLFLOW_BIN.exists():
        pytest.fail(f"{MLFLOW_BIN} is missing: run `make setup` (scripts/bootstrap.sh installs the MLflow server)")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"), free_port())
    server.start()
    yield server
    server.stop()
