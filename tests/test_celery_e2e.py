"""The DAGs on a real distributed engine: Airflow's CeleryExecutor (official celery provider).

Redis (Debian's redis-server on a free loopback port, no persistence) is the broker; PostgreSQL holds
the metadata DB, the Celery result backend and the model DB (a ``model_db`` postgres connection:
the embedded SQLite fallback is refused on Celery). api-server, scheduler, dag-processor, triggerer
and two Celery workers (``w1@<host>``, ``w2@<host>``, two slots each) run as real processes; each
worker has its own working clone and DVC cache (``DATASET_WORK_DIR``) and its own run data dir
(``DATASET_DATA_DIR``), as on separate machines. Only the registry (git + DVC remote over the test
sshd), MariaDB and PostgreSQL are shared.

Eight projects ``p1``..``p8`` (each its own MariaDB table) are triggered at once through the REST
API; every ``version_<p>`` must succeed, every ``train_<p>`` must run because of its Asset event and
succeed, both workers must have run tasks, trains must have run on another worker than their
publish (pulled from the registry), and the model DB must hold exactly one experiment per train
run. A cluster policy (tests/celery_site/airflow_local_settings.py) pins p1's publish to w1 and its
train to w2 so that last case happens on every run; all other tasks go to whichever worker is free.
Every process is stopped at the end, even on failure, and their log tails are printed on failure.
"""
import json
import os
import re
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from airflow_stack import AIRFLOW, Api, Processes, airflow_env, migrate, wait_for
from conftest import MYSQL_PASSWORD, MYSQL_USER, free_port

pytestmark = pytest.mark.slow

PROJECTS = [f"p{i}" for i in range(1, 9)]
WORKERS = ("w1", "w2")
WINDOW = {"start": "2024-05-01T00:00:00Z", "end": "2024-05-02T00:00:00Z"}
VERSION = "v20240502T000000"  # the default version template: the window end
SITE = Path(__file__).resolve().parent / "celery_site"


def rows_of(project: str) -> int:
    """How many rows of a project's table fall in WINDOW (they differ, so outputs differ)."""
    return 2 + int(project[1:])


@pytest.fixture
def projects_env(tmp_path, mysql_db, registry):
    """Eight projects, each over its own table; the include folder holds their train callable."""
    db, connect = mysql_db
    conn = connect()
    cur = conn.cursor()
    for project in PROJECTS:
        cur.execute(f"CREATE TABLE events_{project} (id INT PRIMARY KEY, amount DECIMAL(8,2) NOT NULL, at DATETIME NOT NULL)")
        rows = [(i, f"{i * 1.25:.2f}", f"2024-05-01 {i:02d}:00:00") for i in range(1, rows_of(project) + 1)]
        rows.append((99, "1.00", "2024-05-03 00:00:00"))  # outside the window
        cur.executemany(f"INSERT INTO events_{project} VALUES (%s,%s,%s)", rows)
    conn.close()
    include = tmp_path / "include"
    (include / "projects").mkdir(parents=True)
    (include / "celerytrain.py").write_text(
        "import csv\n"
        "def fit(path, *, tag, **_):\n"
        "    with open(path, newline='') as f:\n"
        "        amounts = [float(row['amount']) for row in csv.DictReader(f)]\n"
        "    return {'parameters': {'kind': 'mean'},\n"
        "            'evaluations': {'rows': len(amounts), 'mean_amount': sum(amounts) / len(amounts), 'tag': tag}}\n"
    )
    for project in PROJECTS:
        (include / "projects" / f"{project}.yaml").write_text(
            f"project: {project}\nschedule: null\noutput: events.csv\nretries: 0\ntrain: celerytrain:fit\n"
            f"query: |\n  SELECT id, amount, at FROM {db}.events_{project}\n"
            "  WHERE at >= '{{ data_interval_start }}' AND at < '{{ data_interval_end }}'\n  ORDER BY id\n"
        )
    return {
        **os.environ,
        "DATASET_PROJECTS_DIR": str(include / "projects"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SITE), os.environ.get("PYTHONPATH")])),
        "AIRFLOW_CONN_MYSQL_RAW": json.dumps({"conn_type": "mysql", "host": "127.0.0.1", "port": 3306,
                                              "login": MYSQL_USER, "password": MYSQL_PASSWORD}),
        "AIRFLOW_CONN_DVC_REGISTRY": registry.conn_json(),
    }


@pytest.fixture
def model_db_url(pg_database):
    """A second fresh database next to the metadata DB, for the model DB."""
    import psycopg2
    from sqlalchemy.engine import make_url

    meta = make_url(pg_database)
    url = meta.set(database=f"{meta.database}_models")
    admin = psycopg2.connect(host=url.host, port=url.port, user=url.username, password=url.password, dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {url.database}")
    try:
        yield url
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {url.database} WITH (FORCE)")
        admin.close()


def start_redis(procs: Processes, root: Path) -> int:
    import redis

    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(server):
        pytest.fail("redis-server is not installed: run `make setup`")
    port = free_port()
    root.mkdir()
    procs.start("redis", [server, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                          "--dir", root, "--databases", "1"], os.environ, cwd=root)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    wait_for("redis-server", client.ping, 20, 0.1, errors=(redis.exceptions.RedisError, OSError))
    client.close()
    return port


@pytest.fixture
def celery_stack(tmp_path, projects_env, pg_database, model_db_url):
    api_port = free_port()
    with Processes(tmp_path / "logs") as procs:
        redis_port = start_redis(procs, tmp_path / "redis")
        env = airflow_env(
            projects_env, tmp_path / "airflow-home", pg_database, api_port, "CeleryExecutor",
            AIRFLOW__CORE__PARALLELISM="8",
            AIRFLOW__CELERY__BROKER_URL=f"redis://127.0.0.1:{redis_port}/0",
            AIRFLOW__CELERY__RESULT_BACKEND="db+" + pg_database.replace("postgresql+psycopg2://", "postgresql://"),
            AIRFLOW__CELERY__SYNC_PARALLELISM="1",
            AIRFLOW_CONN_MODEL_DB=json.dumps({
                "conn_type": "postgres", "host": model_db_url.host, "port": model_db_url.port,
                "login": model_db_url.username, "password": model_db_url.password, "schema": model_db_url.database,
            }),
        )
        migrate(env)
        procs.start_airflow(env)
        hostnames = {}
        for worker in WORKERS:
            hostnames[worker] = f"{worker}@{socket.gethostname()}"  # = the Celery node name ({worker}@%h)
            worker_env = {
                **env,
                "DATASET_WORK_DIR": str(tmp_path / worker / "work"),  # its own clone and DVC cache
                "DATASET_DATA_DIR": str(tmp_path / worker / "runs"),
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "airflow_local_settings.worker_hostname",
                "DSV_WORKER_HOSTNAME": hostnames[worker],
            }
            # Logs land in the shared AIRFLOW_HOME, so no log server (it would need a port per worker).
            procs.start(worker, [AIRFLOW, "celery", "worker", "--celery-hostname", f"{worker}@%h",
                                 "--concurrency", "2", "--queues", f"default,{worker}", "--skip-serve-logs",
                                 "--without-gossip", "--without-mingle"], worker_env)
        api = Api(api_port).login()
        for worker in WORKERS:
            ready = re.compile(rf"\b{worker}@\S+ ready\.")
            wait_for(f"celery worker {worker}", lambda w=worker, r=ready: procs.assert_running() or r.search(procs.log(w)), 120)
        yield api, env, procs, hostnames, model_db_url


def query(url, sql: str) -> list[tuple]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as db:
            return [tuple(row) for row in db.execute(sa.text(sql))]
    finally:
        engine.dispose()


def wait_all(api: Api, procs: Processes, dag_ids, what: str, timeout: float) -> dict:
    """Wait until every DAG in ``dag_ids`` has a finished run; fail fast on a failed run or a dead process."""
    def finished():
        procs.assert_running()
        done = {}
        for dag_id in dag_ids:
            runs = [r for r in api.dag_runs(dag_id) if r["state"] in ("success", "failed")]
            assert all(r["state"] == "success" for r in runs), f"{dag_id} failed: {runs}"
            if runs:
                done[dag_id] = runs
        return done if len(done) == len(dag_ids) else None

    return api.wait(what, finished, timeout, 2)


def test_eight_projects_on_two_celery_workers(celery_stack, registry):
    api, env, procs, hostnames, model_db_url = celery_stack
    with procs.dump_on_failure():
        version_dags = [f"version_{p}" for p in PROJECTS]
        train_dags = [f"train_{p}" for p in PROJECTS]
        api.unpause_when_parsed(version_dags + train_dags)
        with ThreadPoolExecutor(len(PROJECTS)) as pool:  # all eight at once
            run_ids = dict(zip(version_dags, pool.map(lambda d: api.trigger(d, WINDOW), version_dags)))

        versions = wait_all(api, procs, version_dags, "every version_<p> to succeed", 300)
        assert {d: [r["dag_run_id"] for r in runs] for d, runs in versions.items()} == {d: [r] for d, r in run_ids.items()}
        assert registry.tags() == sorted(f"{p}/{VERSION}" for p in PROJECTS)

        trains = wait_all(api, procs, train_dags, "every train_<p> to run", 240)
        where = {}  # (dag_id, task_id) -> hostname of the worker that ran it
        for project in PROJECTS:
            [train] = api.dag_runs(f"train_{project}")  # one event, one run
            assert train["state"] == "success" and train["run_type"] == "asset_triggered", train
            events = api.upstream_events(f"train_{project}", train["dag_run_id"])
            assert [(e["uri"], e["extra"]["tag"]) for e in events] == [(f"dvc://registry/{project}", f"{project}/{VERSION}")]
            for dag_id, run_id in ((f"version_{project}", run_ids[f"version_{project}"]),
                                   (f"train_{project}", train["dag_run_id"])):
                for ti in api.task_instances(dag_id, run_id):
                    assert ti["state"] == "success", ti
                    where[(dag_id, ti["task_id"])] = ti["hostname"]

        assert set(where.values()) == set(hostnames.values()), where  # both workers ran tasks
        moved = [p for p in PROJECTS if where[(f"train_{p}", "train_model")] != where[(f"version_{p}", "publish_version")]]
        assert "p1" in moved, where  # pinned by the cluster policy: published on w1, trained on w2
        assert where[("version_p1", "publish_version")] == hostnames["w1"]
        assert where[("train_p1", "train_model")] == hostnames["w2"]
        print(f"tasks per worker: { {h: list(where.values()).count(h) for h in hostnames.values()} }; "
              f"trains on another worker than their publish: {moved}")

        # p1's train pulled the version from the registry: w2 never had it locally.
        p1_run = trains["train_p1"][0]["dag_run_id"]
        log = json.dumps(api.call("GET", f"/api/v2/dags/train_p1/dagRuns/{p1_run}/taskInstances/train_model/logs/1"))
        assert f"training on p1/{VERSION} (from asset event)" in log and "downloaded" in log, log[-3000:]

        experiments = query(model_db_url,
                            "SELECT p.project_name, e.training_dataset, e.status, e.airflow_dag_id, e.airflow_run_id, "
                            "e.evaluations FROM experiments e JOIN models m USING (model_id) JOIN projects p USING (project_id)")
        dataset_versions = query(model_db_url, "SELECT tag, rows FROM dataset_versions")
        expected = sorted((p, f"{p}/{VERSION}", "succeeded", f"train_{p}", trains[f"train_{p}"][0]["dag_run_id"])
                          for p in PROJECTS)
        assert sorted(tuple(row[:5]) for row in experiments) == expected  # exactly one per train run
        assert {row[0]: row[5]["rows"] for row in experiments} == {p: rows_of(p) for p in PROJECTS}
        assert sorted(dataset_versions) == sorted((f"{p}/{VERSION}", rows_of(p)) for p in PROJECTS)

        # Task states also went through the Celery result backend (the metadata DB): 3 tasks a project.
        # A worker stores SUCCESS just after the task instance reported success to the API: poll.
        def celery_states():
            states = dict(query(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
                                "SELECT status, count(*) FROM celery_taskmeta GROUP BY status"))
            assert set(states) <= {"STARTED", "SUCCESS"}, states
            return states == {"SUCCESS": 3 * len(PROJECTS)}
        wait_for("every Celery result to be SUCCESS", celery_states, 30, 0.5)
