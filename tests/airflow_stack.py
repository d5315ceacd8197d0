"""Real Airflow processes for the end-to-end tests (test_scheduler_e2e, test_celery_e2e): the
environment, `airflow db migrate`, process groups started and always stopped, the REST API client
and log tails on failure."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil

from conftest import free_port

AIRFLOW = str(Path(sys.executable).parent / "airflow")
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, OSError)


def wait_for(what: str, fn, timeout: float, interval: float = 1.0, errors=NETWORK_ERRORS):
    """Call ``fn`` until it returns something truthy (returned); ``errors`` count as not yet."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = fn()
            if result:
                return result
            last = result
        except errors as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: {last}")


class Api:
    """The api-server's REST API as the all-admins SimpleAuthManager user."""

    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.token = None

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
            return json.loads(text) if text else None

    def wait(self, what, fn, timeout, interval=1.0):
        return wait_for(what, fn, timeout, interval)

    def login(self, timeout=120):
        self.wait("the api-server", lambda: self.call("GET", "/api/v2/monitor/health"), timeout)
        self.token = self.call("GET", "/auth/token")["access_token"]
        return self

    def unpause_when_parsed(self, dag_ids, timeout=120):
        for dag_id in dag_ids:
            self.wait(f"{dag_id} to be parsed", lambda d=dag_id: self.call("GET", f"/api/v2/dags/{d}"), timeout)
            self.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id, conf):
        return self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})["dag_run_id"]

    def dag_runs(self, dag_id):
        return self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns")["dag_runs"]

    def task_instances(self, dag_id, run_id):
        return self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def upstream_events(self, dag_id, run_id):
        return self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/upstreamAssetEvents")["asset_events"]


def airflow_env(base: dict, home: Path, db_url: str, port: int, executor: str, **overrides) -> dict:
    """The environment every process of one test stack shares: its own AIRFLOW_HOME and metadata DB,
    the api-server on ``port`` (also the execution API), a fresh JWT secret, fast heartbeats, and
    free ports for the log servers (another stack may be running on this machine)."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        **base,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
        "AIRFLOW__CORE__EXECUTOR": executor,
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex,
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "1",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        **overrides,
    }


def migrate(env: dict) -> None:
    proc = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


class Processes:
    """Long-running processes, each in its own process group with its log in ``logs/<name>.log``.

    As a context manager: every group is stopped on exit (SIGTERM, then SIGKILL after a bounded
    wait), and the log tails are printed first when the block raised."""

    def __init__(self, logs: Path, tail: int = 3000):
        self.logs = logs
        self.tail = tail
        self.procs: dict[str, subprocess.Popen] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list, env: dict, cwd=None) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "wb") as out:
            proc = subprocess.Popen([str(a) for a in argv], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_airflow(self, env: dict, components=COMPONENTS) -> None:
        for component in components:
            self.start(component, [AIRFLOW, component], env)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def assert_running(self) -> None:
        dead = {name: proc.returncode for name, proc in self.procs.items() if proc.poll() is not None}
        assert not dead, f"processes exited early: {dead}"

    def dump(self) -> None:
        for log in sorted(self.logs.glob("*.log")):
            print(f"===== {log.name}\n{log.read_text(errors='replace')[-self.tail:]}")

    @contextlib.contextmanager
    def dump_on_failure(self):
        try:
            yield
        except BaseException:
            self.dump()
            raise

    def stop(self, timeout: float = 20) -> None:
        # Task processes start their own sessions: remember every descendant before signalling.
        descendants = []
        for proc in self.procs.values():
            with contextlib.suppress(psutil.Error):
                descendants += psutil.Process(proc.pid).children(recursive=True)
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # the leader may be gone while its children (task processes) still hold the group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        for child in descendants:  # is_running() checks the start time too: never a recycled pid
            with contextlib.suppress(psutil.Error):
                if child.is_running():
                    child.kill()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is not None and not issubclass(exc_type, GeneratorExit):
                self.dump()
        finally:
            self.stop()
        return False
