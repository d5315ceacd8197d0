"""Loading and checking the per-project YAML files.

One YAML per ML project in ``include/projects/`` (or ``$DATASET_PROJECTS_DIR``). Errors name the file
and the key, so a typo never silently turns into a default.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataset_registry.names import InvalidNameError, validate_output, validate_project, validate_version

DEFAULT_PROJECTS_DIR = Path(__file__).resolve().parents[2] / "include" / "projects"
DEFAULT_VERSION_TEMPLATE = "v{{ data_interval_end | ts_nodash }}"
REQUIRED_KEYS = ("project", "schedule", "query", "output")
OPTIONAL_KEYS = {
    "description": "",
    "preprocess": None,  # "module:function", DataFrame chunk -> DataFrame chunk
    "version_template": DEFAULT_VERSION_TEMPLATE,
    "start_date": "2024-01-01",
    "catchup": False,
    "retries": 2,
    "retry_delay_seconds": 30,
    "query_timeout": None,  # seconds; server-side statement timeout
    "tags": [],
    "owner": "data",
    "mysql_conn_id": "mysql_raw",
    "registry_conn_id": "dvc_registry",
    "model_db_conn_id": "model_db",
    "train": None,  # "module:function" for train_<project>
    "model_name": None,  # model name in the model DB (default <project>_model)
}
_CALLABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_CONN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")
_PRESETS = {"@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly", "@annually", "@midnight"}


class ProjectConfigError(ValueError):
    """A project YAML that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class ProjectConfig:
    project: str
    schedule: str | None
    query: str  # inline SQL text, or "" when query_path is set
    query_path: Path | None
    output: str
    source_file: Path
    description: str = ""
    preprocess: str | None = None
    version_template: str = DEFAULT_VERSION_TEMPLATE
    start_date: str = "2024-01-01"
    catchup: bool = False
    retries: int = 2
    retry_delay_seconds: int = 30
    query_timeout: int | None = None
    tags: list[str] = field(default_factory=list)
    owner: str = "data"
    mysql_conn_id: str = "mysql_raw"
    registry_conn_id: str = "dvc_registry"
    model_db_conn_id: str = "model_db"
    train: str | None = None
    model_name: str | None = None

    def load_query(self) -> str:
        """The SQL template text (reads the .sql file at run time, not at DAG parse time)."""
        if self.query_path is None:
            return self.query
        try:
            return self.query_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ProjectConfigError(f"{self.source_file}: key 'query': cannot read {self.query_path}: {exc}") from exc


def projects_dir() -> Path:
    return Path(os.environ.get("DATASET_PROJECTS_DIR") or DEFAULT_PROJECTS_DIR)


def load_project(path: Path) -> ProjectConfig:
    import yaml  # light, but keep module import cheap

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ProjectConfigError(f"{path}: not readable as YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ProjectConfigError(f"{path}: expected a mapping of keys ({', '.join(REQUIRED_KEYS)}), got {type(data).__name__}")

    def fail(key: str, msg: str):
        raise ProjectConfigError(f"{path}: key '{key}': {msg}")

    unknown = sorted(set(map(str, data)) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        fail(unknown[0], f"unknown key (allowed: {', '.join(list(REQUIRED_KEYS) + sorted(OPTIONAL_KEYS))})")
    for key in REQUIRED_KEYS:
        if key not in data:
            fail(key, "required key is missing")

    values: dict[str, Any] = {**OPTIONAL_KEYS, **data}
    try:
        validate_project(values["project"])
    except InvalidNameError as exc:
        fail("project", str(exc))
    if path.stem != values["project"]:
        fail("project", f"must equal the file name stem {path.stem!r} (one file per project)")
    try:
        validate_output(values["output"])
    except InvalidNameError as exc:
        fail("output", str(exc))

    schedule = values["schedule"]
    if schedule is not None:
        if not isinstance(schedule, str) or not schedule.strip():
            fail("schedule", "must be a cron expression, an Airflow preset such as @daily, or null")
        schedule = schedule.strip()
        if schedule.startswith("@") and schedule not in _PRESETS:
            fail("schedule", f"preset {schedule!r} has no time window; use one of {sorted(_PRESETS)} or a cron expression")
        if not schedule.startswith("@") and len(schedule.split()) not in (5, 6):
            fail("schedule", f"{schedule!r} is not a cron expression (5 fields, e.g. '0 2 * * *')")

    query = values["query"]
    if not isinstance(query, str) or not query.strip():
        fail("query", "must be SQL text or the path of a .sql file")
    query_path = None
    if query.strip().endswith(".sql") and "\n" not in query.strip():
        rel = Path(query.strip())
        query_path = (path.parent / rel).resolve()
        root = path.parent.resolve().parent  # the include/ tree that holds the projects folder
        if rel.is_absolute() or not query_path.is_relative_to(root):
            fail("query", f"a .sql path must be relative to the YAML file and stay inside {root}")
        if not query_path.is_file():
            fail("query", f"SQL file {query_path} does not exist")
        query = ""

    preprocess = values["preprocess"]
    if preprocess is not None and (not isinstance(preprocess, str) or not _CALLABLE.match(preprocess)):
        fail("preprocess", "must be 'module:function' (e.g. 'preprocess.demo:clean')")
    train = values["train"]
    if train is not None and (not isinstance(train, str) or not _CALLABLE.match(train)):
        fail("train", "must be 'module:function' (e.g. 'training.baseline:train')")
    template = values["version_template"]
    if not isinstance(template, str) or not template.strip():
        fail("version_template", "must be a non-empty Jinja template such as 'v{{ data_interval_end | ds_nodash }}'")
    if "{{" not in template:
        try:
            validate_version(template)
        except InvalidNameError as exc:
            fail("version_template", str(exc))
    if not isinstance(values["catchup"], bool):
        fail("catchup", "must be true or false")
    if not isinstance(values["retries"], int) or isinstance(values["retries"], bool) or not 0 <= values["retries"] <= 20:
        fail("retries", "must be a whole number from 0 to 20")
    delay = values["retry_delay_seconds"]
    if not isinstance(delay, int) or isinstance(delay, bool) or not 1 <= delay <= 86400:
        fail("retry_delay_seconds", "must be a whole number of seconds from 1 to 86400")
    timeout = values["query_timeout"]
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0):
        fail("query_timeout", "must be a positive number of seconds, or null")
    tags = values["tags"]
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        fail("tags", "must be a list of strings")
    for key in ("mysql_conn_id", "registry_conn_id", "model_db_conn_id"):
        if not isinstance(values[key], str) or not _CONN_ID.match(values[key]):
            fail(key, "must be an Airflow connection id (letters, digits, _ . -)")
    start_date = values["start_date"]
    if not isinstance(start_date, str):
        start_date = str(start_date)  # YAML turns 2024-01-01 into a date
    if not re.match(r"^\d{4}-\d{2}-\d{2}", start_date):
        fail("start_date", "must be an ISO date such as 2024-01-01")
    model_name = values["model_name"]
    if model_name is not None and (not isinstance(model_name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", model_name)):
        fail("model_name", "must be 1-128 of A-Z a-z 0-9 . _ - starting with a letter or digit")
    description = values["description"]
    if not isinstance(description, str):
        fail("description", "must be text")

    return ProjectConfig(
        project=values["project"], schedule=schedule, query=query, query_path=query_path,
        output=values["output"], source_file=path, description=description, preprocess=preprocess,
        version_template=template, start_date=start_date, catchup=values["catchup"],
        retries=values["retries"], retry_delay_seconds=delay, query_timeout=timeout, tags=list(tags), owner=str(values["owner"]),
        mysql_conn_id=values["mysql_conn_id"], registry_conn_id=values["registry_conn_id"],
        model_db_conn_id=values["model_db_conn_id"], train=train, model_name=model_name,
    )


def load_projects(directory: Path | None = None) -> tuple[list[ProjectConfig], list[ProjectConfigError]]:
    """All valid projects in the folder, plus the errors of the invalid ones (one bad file does not
    hide the others)."""
    directory = Path(directory or projects_dir())
    configs: list[ProjectConfig] = []
    errors: list[ProjectConfigError] = []
    if not directory.is_dir():
        return configs, [ProjectConfigError(f"{directory}: projects folder does not exist (set DATASET_PROJECTS_DIR)")]
    for path in sorted(directory.glob("*.y*ml")):
        try:
            configs.append(load_project(path))
        except ProjectConfigError as exc:
            errors.append(exc)
    return configs, errors
