"""Real parts for the tests: MariaDB on loopback, an sshd on a loopback port with generated keys,
bare git registries and DVC remotes served over that sshd."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))
sys.path.insert(0, str(REPO / "include"))

# Exports connect as the SELECT-only account; tables are created and seeded by the admin account
# (both made by scripts/bootstrap.sh).
MYSQL_USER = os.environ.get("DEMO_MYSQL_USER", "dataset_demo")
MYSQL_PASSWORD = os.environ.get("DEMO_MYSQL_PASSWORD", "dataset_demo")
MYSQL_ADMIN_USER = os.environ.get("DEMO_MYSQL_ADMIN_USER", "dataset_admin")
MYSQL_ADMIN_PASSWORD = os.environ.get("DEMO_MYSQL_ADMIN_PASSWORD", "dataset_admin")


@pytest.fixture(autouse=True)
def _forget_shell_less_hosts():
    """SshObjects remembers, per process, a host that did not run its script in time (dvc_store._NO_SHELL):
    a test whose burst of logins made the session sshd slow must not take the fast path from the next."""
    yield
    import dataset_registry.dvc_store as dvc_store

    dvc_store._NO_SHELL.clear()


def report_line(request, line: str) -> None:
    """Show ``line`` on the terminal even while pytest captures output (timings, artifact paths)."""
    import logging

    logging.getLogger(request.node.nodeid).warning(line)
    capture = request.config.pluginmanager.getplugin("capturemanager")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if capture is not None and reporter is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, cwd=None, env=None, check=True, timeout=300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


# ------------------------------------------------------------------ MySQL
@pytest.fixture(scope="session")
def mysql_params() -> dict:
    """The SELECT-only export account (SELECT on dsv_test_*, demo_raw, dsv_bench)."""
    return {"host": "127.0.0.1", "port": 3306, "user": MYSQL_USER, "passwd": MYSQL_PASSWORD}


@pytest.fixture(scope="session")
def mysql_admin_params() -> dict:
    """The admin account: creates databases, tables and rows. Exports use ``mysql_params``, except
    tests that show the export refuses writes even when its account could write."""
    return {"host": "127.0.0.1", "port": 3306, "user": MYSQL_ADMIN_USER, "passwd": MYSQL_ADMIN_PASSWORD}


@pytest.fixture
def mysql_db(mysql_admin_params):
    """A fresh database; yields (name, connection factory). Connections are the admin account's."""
    import MySQLdb

    name = f"dsv_test_{uuid.uuid4().hex[:10]}"
    admin = MySQLdb.connect(**mysql_admin_params, charset="utf8mb4", autocommit=True)
    admin.cursor().execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")

    def connect():
        return MySQLdb.connect(**mysql_admin_params, db=name, charset="utf8mb4", autocommit=True)

    yield name, connect
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
    admin.close()


# ------------------------------------------------------------------ sshd
@dataclass
class SshServer:
    port: int
    user: str
    key_file: Path
    known_hosts: Path
    root: Path
    proc: subprocess.Popen | None = None
    config: Path | None = None

    def url(self, path: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "sshd.log", "ab"),
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start: " + (self.root / "sshd.log").read_text()[-2000:])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def make_sshd(root: Path, extra_config: str = "") -> SshServer:
    """Generate host and client keys under ``root`` and start sshd on a free loopback port."""
    import getpass

    if not os.path.exists("/usr/sbin/sshd"):
        pytest.fail("openssh-server is not installed: run `make setup`")
    root.mkdir(parents=True, exist_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", root / "host_key"])
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", root / "client_key"])
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    os.chmod(root / "authorized_keys", 0o600)
    port = free_port()
    host_pub = (root / "host_key.pub").read_text().split()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPidFile {root / 'sshd.pid'}\n"
        "UsePAM no\nStrictModes no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nMaxStartups 100:30:200\n"
        "MaxSessions 50\nLogLevel ERROR\n" + (extra_config or "PasswordAuthentication no\n")
    )
    os.makedirs("/run/sshd", exist_ok=True)
    server = SshServer(port, getpass.getuser(), root / "client_key", root / "known_hosts", root, config=config)
    server.start()
    return server


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    server = make_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


# ------------------------------------------------------------------ registry
@dataclass
class Registry:
    bare: Path
    store: Path
    repo_url: str
    remote_url: str
    work_dir: Path
    conn_extra: dict

    def conn_json(self, **overrides) -> str:
        extra = {**self.conn_extra, **overrides}
        return json.dumps({"conn_type": "generic", "extra": extra})

    def settings(self, work_dir: Path | None = None, **overrides):
        from dataset_registry.registry import RegistrySettings

        extra = {**self.conn_extra, **overrides}
        return RegistrySettings(
            repo_url=extra["repo_url"], remote_url=extra["remote_url"],
            work_dir=Path(work_dir or self.work_dir), key_file=extra.get("key_file"),
            known_hosts=extra.get("known_hosts"),
        )

    def git(self, *args) -> str:
        return run(["git", "-C", self.bare, *args]).stdout.strip()

    def tags(self) -> list[str]:
        return [t for t in self.git("tag", "--list").splitlines() if t]

    def commit_count(self) -> int:
        out = run(["git", "-C", self.bare, "rev-list", "--count", "main"], check=False)
        return int(out.stdout.strip()) if out.returncode == 0 else 0


def make_registry(tmp_path: Path, sshd: SshServer) -> Registry:
    bare = tmp_path / "registry.git"
    run(["git", "init", "-q", "--bare", "--initial-branch=main", bare])
    store = tmp_path / "dvc-store"
    store.mkdir()
    extra = {
        "repo_url": sshd.url(bare),
        "remote_url": sshd.url(store),
        "key_file": str(sshd.key_file),
        "known_hosts": str(sshd.known_hosts),
    }
    return Registry(bare, store, extra["repo_url"], extra["remote_url"], tmp_path / "worker", extra)


@pytest.fixture
def registry(tmp_path, sshd) -> Registry:
    return make_registry(tmp_path, sshd)


def plain_pull(registry: Registry, sshd: SshServer, tag: str, dest: Path, relpath: str) -> bytes:
    """What a person with only git and dvc does: clone, checkout the tag, dvc pull."""
    env = {**os.environ, "GIT_SSH_COMMAND": f"ssh -i {sshd.key_file} -o UserKnownHostsFile={sshd.known_hosts} -o IdentitiesOnly=yes"}
    env.pop("PYTHONPATH", None)
    run(["git", "clone", "-q", registry.repo_url, dest], env=env)
    run(["git", "-c", "advice.detachedHead=false", "checkout", "-q", tag], cwd=dest, env=env)
    dvc = [str(Path(sys.executable).parent / "dvc")]
    run([*dvc, "remote", "modify", "--local", "storage", "keyfile", str(sshd.key_file)], cwd=dest, env=env)
    run([*dvc, "pull", "-q"], cwd=dest, env=env)
    return (dest / relpath).read_bytes()


# ------------------------------------------------------------------ PostgreSQL
PG_USER = os.environ.get("TEST_PG_USER", "dataset_test")
PG_PASSWORD = os.environ.get("TEST_PG_PASSWORD", "dataset_test")


@pytest.fixture
def pg_database():
    """A fresh PostgreSQL database; yields its SQLAlchemy URL."""
    import psycopg2

    name = f"dsv_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user=PG_USER, password=PG_PASSWORD, dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    yield f"postgresql+psycopg2://{PG_USER}:{PG_PASSWORD}@127.0.0.1:5432/{name}"
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


# ------------------------------------------------------------------ a test project
@pytest.fixture
def shop(tmp_path, mysql_db, registry):
    """A `shop` project over a fresh database, with its own projects folder and connections."""
    db, connect = mysql_db
    conn = connect()
    cur = conn.cursor()
    cur.execute("CREATE TABLE orders (id INT PRIMARY KEY, item VARCHAR(50) NULL, price DECIMAL(8,2), at DATETIME NOT NULL)")
    cur.executemany("INSERT INTO orders VALUES (%s,%s,%s,%s)", [
        (1, "tea", "3.50", "2024-05-01 10:00:00"), (2, "", "0.00", "2024-05-01 11:00:00"),
        (3, None, "9.99", "2024-05-01 23:00:00"), (4, 'mug "xl"', "12.00", "2024-05-02 09:00:00"),
    ])
    conn.close()
    projects = tmp_path / "projects"
    projects.mkdir()
    (tmp_path / "shoptrain.py").write_text(
        "import os, pandas as pd\n"
        "def fit(path, *, artifacts_dir, tag, **_):\n"
        "    if os.environ.get('SHOP_TRAIN_FAIL'):\n"
        "        raise RuntimeError('diverged')\n"
        "    frame = pd.read_csv(path)\n"
        "    return {'parameters': {'kind': 'mean'}, 'evaluations': {'rows': int(len(frame)), 'mean_price': float(frame.price.mean())},\n"
        "            'artifact_file_paths': {'note': artifacts_dir + '/none'}}\n"
    )
    (projects / "shop.yaml").write_text(
        "project: shop\nschedule: '0 0 * * *'\noutput: orders.csv\nretries: 0\ntrain: shoptrain:fit\n"
        f"query: |\n  SELECT id, item, price, at FROM {db}.orders\n"
        "  WHERE at >= '{{ data_interval_start }}' AND at < '{{ data_interval_end }}'\n  ORDER BY id\n"
    )
    env = {
        **os.environ,
        "DATASET_PROJECTS_DIR": str(projects),
        "DATASET_WORK_DIR": str(tmp_path / "worker"),
        "DATASET_DATA_DIR": str(tmp_path / "runs"),
        "MODEL_DB_PATH": str(tmp_path / "model_db.sqlite"),
        "AIRFLOW_CONN_MYSQL_RAW": json.dumps({"conn_type": "mysql", "host": "127.0.0.1", "port": 3306,
                                              "login": MYSQL_USER, "password": MYSQL_PASSWORD}),
        "AIRFLOW_CONN_DVC_REGISTRY": registry.conn_json(),
    }
    return env


