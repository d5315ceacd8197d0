"""docker-compose.yaml cannot run here (no Docker engine): check its structure instead."""
import json
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def load():
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


def test_services_of_the_full_stack_are_defined():
    services = load()["services"]
    assert {"postgres", "mysql", "sshhost", "airflow-init", "api-server", "scheduler", "dag-processor", "triggerer"} <= set(services)
    commands = {name: services[name]["command"] for name in ("api-server", "scheduler", "dag-processor", "triggerer")}
    assert commands == {"api-server": ["airflow", "api-server"], "scheduler": ["airflow", "scheduler"],
                        "dag-processor": ["airflow", "dag-processor"], "triggerer": ["airflow", "triggerer"]}


def test_airflow_services_get_connections_through_environment_and_valid_json():
    services = load()["services"]
    for name in ("api-server", "scheduler", "dag-processor", "triggerer", "airflow-init"):
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        registry = json.loads(env["AIRFLOW_CONN_DVC_REGISTRY"])
        assert registry["conn_type"] == "generic" and registry["extra"]["repo_url"].startswith("ssh://")
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
