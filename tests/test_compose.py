"""docker-compose.yaml cannot run here (no Docker engine): check its structure instead."""
import json
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
AIRFLOW_SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer", "airflow-init")
WORKERS = ("worker-1", "worker-2")


def load():
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


def interpolate(value, variables: dict):
    """What compose does to ``${VAR}`` and ``${VAR:-default}`` in a value, given the variables set."""
    def one(match):
        name, default = match.group(1), match.group(3)
        return variables.get(name) or (default or "")
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", one, value) if isinstance(value, str) else value


def environment(service: dict, **variables) -> dict:
    return {key: interpolate(value, variables) for key, value in service["environment"].items()}


def default_stack(services: dict) -> dict:
    """The services `docker compose up` starts: those without a profile."""
    return {name: service for name, service in services.items() if not service.get("profiles")}


def test_services_of_the_full_stack_are_defined():
    services = default_stack(load()["services"])
    assert set(services) == {"postgres", "mysql", "sshhost", "airflow-init", "api-server", "scheduler", "dag-processor", "triggerer"}
    commands = {name: services[name]["command"] for name in ("api-server", "scheduler", "dag-processor", "triggerer")}
    assert commands == {"api-server": ["airflow", "api-server"], "scheduler": ["airflow", "scheduler"],
                        "dag-processor": ["airflow", "dag-processor"], "triggerer": ["airflow", "triggerer"]}


def test_airflow_services_get_connections_through_environment_and_valid_json():
    services = load()["services"]
    for name in (*AIRFLOW_SERVICES, *WORKERS):
        env = environment(services[name])
        if name in AIRFLOW_SERVICES:
            assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"  # the default stack
        registry = json.loads(env["AIRFLOW_CONN_DVC_REGISTRY"])
        assert registry["conn_type"] == "dvc_registry" and registry["extra"]["repo_url"].startswith("ssh://")
        assert registry["extra"]["known_hosts"]  # host keys are checked in the stack too
        assert json.loads(env["AIRFLOW_CONN_MYSQL_RAW"])["conn_type"] == "mysql"
        assert json.loads(env["AIRFLOW_CONN_MODEL_DB"])["conn_type"] == "postgres"


def test_every_mounted_repo_file_exists():
    services = load()["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
    assert (REPO / "Dockerfile").read_text().count("requirements.txt") >= 2


def test_celery_profile_adds_redis_and_two_workers_without_touching_the_default_stack():
    services = load()["services"]
    profiled = {name for name, service in services.items() if "celery" in (service.get("profiles") or [])}
    assert profiled == {"redis", *WORKERS}
    assert all(services[name]["profiles"] == ["celery"] for name in profiled)
    redis = services["redis"]
    assert redis["image"].split(":")[0] == "redis"  # the official image
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    # a default service may only wait for redis when the profile is on
    for name, service in default_stack(services).items():
        needs = service.get("depends_on") or {}
        assert "redis" not in needs or needs["redis"].get("required") is False, name


def test_celery_workers_share_the_stores_but_not_their_work_dirs():
    services = load()["services"]
    volumes = load()["volumes"]
    hostnames, celery_names, work_volumes = set(), set(), set()
    for name in WORKERS:
        worker = services[name]
        command = worker["command"]
        assert command[:3] == ["airflow", "celery", "worker"]
        celery_names.add(command[command.index("--celery-hostname") + 1])
        hostnames.add(worker["hostname"])
        env = environment(worker)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379/")
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://") and "@postgres:5432/" in env["AIRFLOW__CELERY__RESULT_BACKEND"]
        assert worker["depends_on"]["redis"] == {"condition": "service_healthy"}
        assert worker["depends_on"]["airflow-init"] == {"condition": "service_completed_successfully"}
        # shared by every worker: the registry and DVC remote, the model DB (postgres), the metadata DB
        for key in ("AIRFLOW_CONN_DVC_REGISTRY", "AIRFLOW_CONN_MODEL_DB", "AIRFLOW_CONN_MYSQL_RAW",
                    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
                    "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
            assert env[key] == environment(services["scheduler"])[key], (name, key)
        assert json.loads(env["AIRFLOW_CONN_MODEL_DB"])["conn_type"] == "postgres"  # never a per-worker SQLite
        # per worker: the work dir (working clone + DVC cache) on a volume of its own
        work = [v for v in worker["volumes"] if v.split(":")[1] == "/opt/airflow/work"]
        assert len(work) == 1 and work[0].split(":")[0] in volumes, work
        work_volumes.add(work[0].split(":")[0])
    assert len(hostnames) == len(celery_names) == len(work_volumes) == len(WORKERS)
    assert not work_volumes & {v.split(":")[0] for s in default_stack(services).values() for v in s.get("volumes", [])}


def test_with_the_celery_executor_every_airflow_service_uses_the_broker():
    services = load()["services"]
    for name in (*AIRFLOW_SERVICES, *WORKERS):
        env = environment(services[name], AIRFLOW_EXECUTOR="CeleryExecutor")
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"] == environment(services["worker-1"])["AIRFLOW__CELERY__BROKER_URL"]


def test_mlflow_profile_adds_an_official_mlflow_server_on_loopback_with_a_sqlite_volume():
    compose = load()
    services = compose["services"]
    assert {name for name, service in services.items() if service.get("profiles")} == {"redis", *WORKERS, "mlflow"}
    mlflow = services["mlflow"]
    assert mlflow["profiles"] == ["mlflow"] and mlflow["image"] == "ghcr.io/mlflow/mlflow:v3.17.2"
    command = mlflow["command"]
    assert command[:2] == ["mlflow", "server"]
    option = {command[i]: command[i + 1] for i in range(2, len(command) - 1) if command[i].startswith("--")}
    backend = option["--backend-store-uri"]
    assert backend.startswith("sqlite:////")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in mlflow["volumes"]}
    # the SQLite file and the artifacts live in a named volume, not in the container's layer
    data_mount = next(target for target in mounts if backend[len("sqlite:///"):].startswith(target + "/"))
    assert mounts[data_mount] in compose["volumes"]
    assert option["--artifacts-destination"].startswith(data_mount + "/")
    port = option["--port"]
    # published on the host's loopback only, never on every interface
    assert mlflow["ports"] == [f"127.0.0.1:{port}:{port}"]
    # the Airflow containers reach it by service name: the server must accept that Host header
    assert f"mlflow:{port}" in option["--allowed-hosts"].split(",")
    # the default stack never needs it; the connection that projects opt into points at it
    for name, service in default_stack(services).items():
        assert "mlflow" not in (service.get("depends_on") or {}), name
    for name in (*AIRFLOW_SERVICES, *WORKERS):
        conn = json.loads(environment(services[name])["AIRFLOW_CONN_MLFLOW"])
        assert conn == {"conn_type": "http", "host": f"http://mlflow:{port}"}, name
