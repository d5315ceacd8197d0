"""Loading and checking the per-project YAML files.

One YAML per ML project in ``include/projects/`` (or ``$DATASET_PROJECTS_DIR``). A YAML is input,
not code, and one file must never hide the other projects, so the loader is defensive: the size is
capped before reading, anchors/aliases (the "billion laughs" bomb) and duplicate keys are refused,
every value is type- and range-checked, cron and dates are parsed here rather than at DAG build time,
and callables must be project code under the include root (see ``user_code``). Every problem of a
file is reported at once, each line naming the file, the key and the rule, so a typo never silently
turns into a default and fixing a file takes one round.
"""
from __future__ import annotations

import difflib
import os
import re
import stat
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from dataset_registry.connection_ids import MODEL_DB_CONN_ID, MYSQL_CONN_ID, REGISTRY_CONN_ID
from dataset_registry.names import InvalidNameError, validate_output, validate_project, validate_version
from dataset_registry.user_code import (
    UserCodeError, looks_like_path, resolve_notebook_file, resolve_user_callable_file,
)

DEFAULT_PROJECTS_DIR = Path(__file__).resolve().parents[2] / "include" / "projects"
DEFAULT_VERSION_TEMPLATE = "v{{ data_interval_end | ts_nodash }}"
REQUIRED_KEYS = ("project", "schedule", "query", "output")
# The one definition of every optional key's default.
OPTIONAL_KEYS: dict[str, Any] = {
    "description": "",
    "preprocess": None,  # "module:function", DataFrame chunk -> DataFrame chunk (or Arrow batch -> Arrow)
    "preprocess_api": "pandas",  # what the preprocess takes and returns: pandas DataFrames or Arrow batches
    "version_template": DEFAULT_VERSION_TEMPLATE,
    "start_date": "2024-01-01",
    "catchup": False,
    "retries": 2,
    "retry_delay_seconds": 30,
    "query_timeout": None,  # seconds; server-side statement timeout
    "publish_timeout": None,  # seconds a push may keep losing races to other publishers (null: the connection's)
    "tags": (),
    "owner": "data",
    "mysql_conn_id": MYSQL_CONN_ID,
    "registry_conn_id": REGISTRY_CONN_ID,
    "model_db_conn_id": MODEL_DB_CONN_ID,
    "train": None,  # "module:function", or a notebook path relative to the include root, for train_<project>
    "model_name": None,  # model name in the model DB (default <project>_model)
    "key": None,  # columns that identify a row (row-level diffs, the `unique` check's default)
    "checks": None,  # quality gates before publishing (see dataset_registry.checks)
    "mlflow_conn_id": None,  # an http connection whose host is an MLflow tracking URI (None: no MLflow)
    "mlflow_experiment": None,  # MLflow experiment name (None: the project name)
    "notebook_cell_timeout": 3600,  # seconds a notebook cell may run (train: a .ipynb)
}
PREPROCESS_APIS = ("pandas", "arrow")
YAML_SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 64 * 1024  # a YAML is parsed by pure-Python PyYAML in the DAG processor: keep it cheap
MAX_KEYS = 64  # checked before any per-key work
MAX_PROBLEMS = 50  # reported per file; the rest are counted
MAX_DESCRIPTION_CHARS = 2000
MAX_TAGS = 20
MAX_TAG_CHARS = 50
MAX_TEMPLATE_CHARS = 500
OWNER_RULE = r"^[A-Za-z0-9][A-Za-z0-9 ._@,-]{0,63}$"
TAG_RULE = r"^[^\x00-\x1f\x7f]{1,%d}$" % MAX_TAG_CHARS
MAX_EXPERIMENT_CHARS = 500
_EXPERIMENT_RULE = r"[^\x00-\x1f\x7f]{1,%d}" % MAX_EXPERIMENT_CHARS
_CONN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PRESETS = {"@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly", "@annually", "@midnight"}
_FIRST_START, _LAST_START = datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(2200, 1, 1, tzinfo=timezone.utc)


class ProjectConfigError(ValueError):
    """A project YAML that cannot be used: every problem found, each naming the key and the rule.

    ``problems`` are lines without the file; ``str()`` gives all of them, one per line, each as
    ``<file>: <problem>``.
    """

    def __init__(self, problems: str | list[str], source_file: Path | str | None = None):
        problems = [problems] if isinstance(problems, str) else list(problems)
        if len(problems) > MAX_PROBLEMS:
            problems = problems[:MAX_PROBLEMS] + [f"... and {len(problems) - MAX_PROBLEMS} more problems"]
        self.problems = problems
        self.source_file = Path(source_file) if source_file is not None else None
        super().__init__(str(self))

    def __str__(self) -> str:
        prefix = f"{self.source_file}: " if self.source_file is not None else ""
        return "\n".join(prefix + problem for problem in self.problems)

    def summary(self) -> str:
        """One short line for the DAG list: how many problems, where to read them all, and the first."""
        where = self.source_file.name if self.source_file is not None else "the projects folder"
        count, first = len(self.problems), self.problems[0] if self.problems else ""
        if count == 1 and len(first) <= 200:
            return f"1 problem in {where}: {first}"
        text = f"{count} problem{'s' if count != 1 else ''} in {where}: see DAG docs / task log"
        return f"{text}. First: {first}" if len(first) <= 150 else text


@dataclass(frozen=True)
class ProjectConfig:
    project: str
    schedule: str | None
    query: str  # inline SQL text, or "" when query_path is set
    query_path: Path | None
    output: str
    source_file: Path
    description: str = OPTIONAL_KEYS["description"]
    preprocess: str | None = OPTIONAL_KEYS["preprocess"]
    preprocess_api: str = OPTIONAL_KEYS["preprocess_api"]
    version_template: str = OPTIONAL_KEYS["version_template"]
    start_date: str = OPTIONAL_KEYS["start_date"]
    catchup: bool = OPTIONAL_KEYS["catchup"]
    retries: int = OPTIONAL_KEYS["retries"]
    retry_delay_seconds: int = OPTIONAL_KEYS["retry_delay_seconds"]
    query_timeout: int | None = OPTIONAL_KEYS["query_timeout"]
    publish_timeout: int | None = OPTIONAL_KEYS["publish_timeout"]
    tags: list[str] = field(default_factory=lambda: list(OPTIONAL_KEYS["tags"]))
    owner: str = OPTIONAL_KEYS["owner"]
    mysql_conn_id: str = OPTIONAL_KEYS["mysql_conn_id"]
    registry_conn_id: str = OPTIONAL_KEYS["registry_conn_id"]
    model_db_conn_id: str = OPTIONAL_KEYS["model_db_conn_id"]
    train: str | None = OPTIONAL_KEYS["train"]
    model_name: str | None = OPTIONAL_KEYS["model_name"]
    key: list[str] | None = None
    checks: dict | None = None  # as written in the YAML, validated (checks.validate_checks normalizes it)
    mlflow_conn_id: str | None = OPTIONAL_KEYS["mlflow_conn_id"]
    mlflow_experiment: str | None = OPTIONAL_KEYS["mlflow_experiment"]
    notebook_cell_timeout: int = OPTIONAL_KEYS["notebook_cell_timeout"]

    @property
    def train_is_notebook(self) -> bool:
        return bool(self.train) and looks_like_path(self.train)

    @property
    def include_root(self) -> Path:
        """Where this project's SQL and callables live: the projects folder's parent."""
        return include_root_of(self.source_file)

    @property
    def query_template_ref(self) -> str:
        """What the operator's ``query`` field gets: the inline SQL, or the .sql path relative to the
        include root (the DAG's ``template_searchpath``), which Airflow resolves like any ``.sql`` field."""
        if self.query_path is None:
            return self.query
        return self.query_path.relative_to(self.include_root.resolve()).as_posix()


def projects_dir() -> Path:
    return Path(os.environ.get("DATASET_PROJECTS_DIR") or DEFAULT_PROJECTS_DIR)


def include_root_of(path: Path) -> Path:
    """The include root of a project file: the parent of its (resolved) projects folder."""
    return Path(path).parent.resolve().parent


def parse_start_date(value: object) -> datetime:
    """A YAML ``start_date`` (ISO text, or the date/datetime YAML made of it) as an aware datetime (UTC
    if no offset). Raises ValueError with the reason."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    elif isinstance(value, str) and len(value) <= 40:
        parsed = datetime.fromisoformat(value.strip())
    else:
        raise ValueError(f"expected an ISO date, got {type(value).__name__}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _safe_loader():
    """A SafeLoader that refuses anchors, aliases and duplicate keys (built lazily: yaml is imported
    only when a project is loaded)."""
    import yaml

    class StrictSafeLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise yaml.composer.ComposerError(
                    None, None, "YAML anchors and aliases (&name, *name) are not allowed: write the values out",
                    event.start_mark)
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    if (key_node.tag, key_node.value) in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key_node.value!r}: keep one", key_node.start_mark)
                    seen.add((key_node.tag, key_node.value))
            return super().construct_mapping(node, deep=deep)

    return StrictSafeLoader


def _read_yaml(path: Path) -> Any:
    """The parsed YAML, or ProjectConfigError for a file that is not a small regular UTF-8 YAML."""
    import yaml

    try:
        # O_NONBLOCK: a FIFO named *.yaml must not block the DAG processor.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ProjectConfigError("not a regular file; a project is one YAML file", path)
            if info.st_size > MAX_FILE_BYTES:
                raise ProjectConfigError(
                    f"file is {info.st_size} bytes, over the limit of {MAX_FILE_BYTES // 1024} KiB "
                    f"({MAX_FILE_BYTES} bytes); keep long SQL in a .sql file", path)
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ProjectConfigError(f"cannot read the file: {exc}", path) from exc
    if len(raw) > MAX_FILE_BYTES:
        raise ProjectConfigError(f"file grew over the limit of {MAX_FILE_BYTES // 1024} KiB while being read", path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProjectConfigError(f"not UTF-8 text: {exc}", path) from exc
    try:
        return yaml.load(text, Loader=_safe_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ProjectConfigError(f"not readable as YAML: {exc}".replace("\n", " "), path) from exc
    except RecursionError:
        raise ProjectConfigError("not readable as YAML: nested too deeply", path) from None
    except Exception as exc:  # noqa: BLE001 - e.g. ValueError for 2024-13-45 or a 5000-digit number
        text = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]
        raise ProjectConfigError(f"not readable as YAML: a value cannot be converted ({text})", path) from exc


def _check_schedule(schedule: object, problem) -> str | None:
    if schedule is None:
        return None
    if not isinstance(schedule, str) or not schedule.strip() or len(schedule) > 100:
        problem("schedule", "must be a cron expression, an Airflow preset such as @daily, or null")
        return None
    schedule = schedule.strip()
    if schedule.startswith("@"):
        if schedule not in _PRESETS:
            problem("schedule", f"preset {_describe(schedule)} has no time window; use one of {sorted(_PRESETS)} "
                                "or a cron expression")
        return schedule
    if len(schedule.split()) not in (5, 6):
        problem("schedule", f"{_describe(schedule)} is not a cron expression (5 fields, e.g. '0 2 * * *')")
        return schedule
    from croniter import croniter  # shipped with Airflow; what its cron timetables use

    if not croniter.is_valid(schedule):
        problem("schedule", f"{_describe(schedule)} is not a valid cron expression: a field is out of range or "
                            "malformed (minute 0-59, hour 0-23, day 1-31, month 1-12, weekday 0-6)")
        return schedule
    try:
        croniter(schedule, datetime(2024, 1, 1, tzinfo=timezone.utc)).get_next(datetime)
    except Exception:  # noqa: BLE001 - croniter raises CroniterBadDateError and friends
        problem("schedule", f"{_describe(schedule)} never fires (e.g. 31 February); fix the day and month fields")
    return schedule


def _check_callable(key: str, spec: object, root: Path, example: str, problem) -> str | None:
    if spec is None:
        return None
    try:
        resolve_user_callable_file(spec, root)
    except UserCodeError as exc:
        problem(key, f"{exc} (example: '{example}')" if "is not 'module:function'" in str(exc) else str(exc))
    return spec if isinstance(spec, str) else None


def load_project(path: Path) -> ProjectConfig:
    """Read and check one project YAML. Raises ProjectConfigError listing every problem found."""
    path = Path(path)
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ProjectConfigError(
            f"expected a mapping of keys ({', '.join(REQUIRED_KEYS)}), got {type(data).__name__}", path)

    if len(data) > MAX_KEYS:
        raise ProjectConfigError(f"the file has {len(data)} top-level keys, over the limit of {MAX_KEYS} (allowed: "
                                 f"{', '.join(list(REQUIRED_KEYS) + sorted(OPTIONAL_KEYS))})", path)
    problems: list[str] = []

    def problem(key: str, msg: str) -> None:
        label = key if re.fullmatch(r"[A-Za-z0-9_.-]{1,60}", key) else repr(key)[1:-1][:60]
        problems.append(f"key '{label}': {msg}")

    allowed = list(REQUIRED_KEYS) + sorted(OPTIONAL_KEYS)
    for key in sorted({str(k) for k in data} - set(allowed)):
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        problem(key, f"unknown key; {hint}(allowed: {', '.join(allowed)})")
    for key in REQUIRED_KEYS:
        if key not in data:
            problem(key, "required key is missing")
    values: dict[str, Any] = {**OPTIONAL_KEYS, **{str(k): v for k, v in data.items()}}
    root = include_root_of(path)

    if "project" in data:
        try:
            validate_project(values["project"])
            if path.stem != values["project"]:
                problem("project", f"must equal the file name stem {path.stem!r} (one file per project)")
        except InvalidNameError as exc:
            problem("project", str(exc))
    if "output" in data:
        try:
            validate_output(values["output"])
        except InvalidNameError as exc:
            problem("output", str(exc))
    schedule = _check_schedule(values["schedule"], problem) if "schedule" in data else None

    query, query_path = values.get("query", ""), None
    if "query" in data:
        if not isinstance(query, str) or not query.strip():
            problem("query", "must be SQL text or the path of a .sql file")
        elif query.strip().endswith(".sql") and "\n" not in query.strip():
            rel = Path(query.strip())
            query_path = (path.parent / rel).resolve()
            if rel.is_absolute() or not query_path.is_relative_to(root):
                problem("query", f"a .sql path must be relative to the YAML file and stay inside {root}")
            elif not query_path.is_file():
                problem("query", f"SQL file {query_path} does not exist")
            query = ""

    preprocess = _check_callable("preprocess", values["preprocess"], root, "preprocess.demo:clean", problem)
    preprocess_api = values["preprocess_api"]
    if preprocess_api not in PREPROCESS_APIS:
        problem("preprocess_api", f"{_describe(preprocess_api)} is not one of {', '.join(PREPROCESS_APIS)}: 'pandas' "
                                  "(a DataFrame per chunk, the default) or 'arrow' (a pyarrow.RecordBatch per batch)")
    train = values["train"]
    if looks_like_path(train):
        try:
            resolve_notebook_file(train, root)
        except UserCodeError as exc:
            problem("train", str(exc))
    else:
        train = _check_callable("train", train, root, "training.baseline:train' or 'training/baseline.ipynb", problem)

    template = values["version_template"]
    if not isinstance(template, str) or not template.strip() or len(template) > MAX_TEMPLATE_CHARS:
        problem("version_template", f"must be a Jinja template of 1-{MAX_TEMPLATE_CHARS} characters such as "
                                    "'v{{ data_interval_end | ds_nodash }}'")
    elif "{{" not in template:
        try:
            validate_version(template)
        except InvalidNameError as exc:
            problem("version_template", str(exc))
    if not isinstance(values["catchup"], bool):
        problem("catchup", "must be true or false")
    if not _is_int(values["retries"]) or not 0 <= values["retries"] <= 20:
        problem("retries", "must be a whole number from 0 to 20")
    delay = values["retry_delay_seconds"]
    if not _is_int(delay) or not 1 <= delay <= 86400:
        problem("retry_delay_seconds", "must be a whole number of seconds from 1 to 86400")
    timeout = values["query_timeout"]
    if timeout is not None and (not _is_int(timeout) or not 1 <= timeout <= 7 * 86400):
        problem("query_timeout", "must be a whole number of seconds from 1 to 604800, or null")
    publish_timeout = values["publish_timeout"]
    if publish_timeout is not None and (not _is_int(publish_timeout) or not 1 <= publish_timeout <= 86400):
        problem("publish_timeout", "must be a whole number of seconds from 1 to 86400, or null (the connection's, "
                                   "default 900)")
    tags = values["tags"]
    if (not isinstance(tags, (list, tuple)) or len(tags) > MAX_TAGS
            or not all(isinstance(t, str) and re.fullmatch(TAG_RULE, t) for t in tags)):
        problem("tags", f"must be a list of at most {MAX_TAGS} strings of 1-{MAX_TAG_CHARS} characters each")
    owner = values["owner"]
    if not isinstance(owner, str) or not re.fullmatch(OWNER_RULE, owner):
        problem("owner", f"invalid owner {_describe(owner)}: it must match {OWNER_RULE} "
                         "(a short name: letters, digits, space . _ @ , -)")
    for key in ("mysql_conn_id", "registry_conn_id", "model_db_conn_id", "mlflow_conn_id"):
        if key == "mlflow_conn_id" and values[key] is None:
            continue  # optional: no MLflow tracking
        if not isinstance(values[key], str) or not _CONN_ID.match(values[key]):
            problem(key, "must be an Airflow connection id (1-250 of letters, digits, _ . -)"
                         + (", or null for no MLflow tracking" if key == "mlflow_conn_id" else ""))
    experiment = values["mlflow_experiment"]
    if experiment is not None and (not isinstance(experiment, str) or not experiment.strip()
                                   or not re.fullmatch(_EXPERIMENT_RULE, experiment)):
        problem("mlflow_experiment", f"must be an MLflow experiment name of 1-{MAX_EXPERIMENT_CHARS} printable "
                                     "characters (no control characters), or null for the project name")
    cell_timeout = values["notebook_cell_timeout"]
    if not _is_int(cell_timeout) or not 1 <= cell_timeout <= 7 * 86400:
        problem("notebook_cell_timeout", "must be a whole number of seconds from 1 to 604800")
    start_date = values["start_date"]
    try:
        start = parse_start_date(start_date)
        if not _FIRST_START <= start < _LAST_START:
            problem("start_date", f"{start.date()} is out of range: use a date from 1970-01-01 to 2199-12-31")
    except ValueError as exc:
        problem("start_date", f"{_describe(start_date)} is not an ISO date or datetime such as 2024-01-01 "
                              f"or 2024-01-01T06:00:00+00:00 ({exc})")
    model_name = values["model_name"]
    if model_name is not None and (not isinstance(model_name, str) or not _MODEL_NAME.fullmatch(model_name)):
        problem("model_name", "must be 1-128 of A-Z a-z 0-9 . _ - starting with a letter or digit")
    description = values["description"]
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS:
        problem("description", f"must be text of at most {MAX_DESCRIPTION_CHARS} characters")

    from dataset_registry.checks import validate_checks, validate_key

    key, key_problems = validate_key(values["key"])
    for text in key_problems:
        problem("key", text)
    _, check_problems = validate_checks(values["checks"], key)
    for sub, text in check_problems:
        problem(f"checks.{sub}" if sub else "checks", text)

    if problems:
        raise ProjectConfigError(problems, path)
    return ProjectConfig(
        project=values["project"], schedule=schedule, query=query, query_path=query_path,
        output=values["output"], source_file=path, description=description, preprocess=preprocess,
        preprocess_api=preprocess_api,
        version_template=template, start_date=str(start_date), catchup=values["catchup"],
        retries=values["retries"], retry_delay_seconds=delay, query_timeout=timeout,
        publish_timeout=publish_timeout, tags=list(tags),
        owner=owner, mysql_conn_id=values["mysql_conn_id"], registry_conn_id=values["registry_conn_id"],
        model_db_conn_id=values["model_db_conn_id"], train=train, model_name=model_name,
        key=key, checks=values["checks"], mlflow_conn_id=values["mlflow_conn_id"],
        mlflow_experiment=experiment, notebook_cell_timeout=cell_timeout,
    )


def _project_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in YAML_SUFFIXES and not p.name.startswith("."))


def load_projects(directory: Path | None = None) -> tuple[list[ProjectConfig], list[ProjectConfigError]]:
    """All valid projects in the folder, plus one error per invalid file.

    One bad file never hides the others: any exception while loading a file becomes that file's
    error. Two files of one project (``a.yaml`` and ``a.yml``) are both errors, naming each other.
    """
    directory = Path(directory or projects_dir())
    configs: list[ProjectConfig] = []
    errors: list[ProjectConfigError] = []
    if not directory.is_dir():
        return configs, [ProjectConfigError("projects folder does not exist (set DATASET_PROJECTS_DIR)", directory)]
    try:
        files = _project_files(directory)
    except OSError as exc:
        return configs, [ProjectConfigError(f"cannot list the projects folder (set DATASET_PROJECTS_DIR): {exc}",
                                            directory)]
    by_stem: dict[str, list[Path]] = {}
    for path in files:
        by_stem.setdefault(path.stem, []).append(path)
    for path in files:
        twins = [p.name for p in by_stem[path.stem] if p != path]
        duplicate = (f"key 'project': {path.stem!r} is also declared by {', '.join(twins)} in the same folder; "
                     "keep exactly one file per project") if twins else None
        try:
            cfg = load_project(path)
        except ProjectConfigError as exc:
            errors.append(ProjectConfigError(exc.problems + ([duplicate] if duplicate else []), path))
            continue
        except Exception as exc:  # noqa: BLE001 - one hostile file must never hide the others
            text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
            errors.append(ProjectConfigError(
                [f"unexpected error while loading the file: {text[:2000]}"] + ([duplicate] if duplicate else []), path))
            continue
        if duplicate:
            errors.append(ProjectConfigError([duplicate], path))
        else:
            configs.append(cfg)
    return configs, errors
