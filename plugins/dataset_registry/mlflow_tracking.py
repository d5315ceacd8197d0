"""MLflow tracking of train runs: one MLflow run per Airflow run, found again on every retry (no Airflow here).

Why it looks like this:

* **Idempotent.** A run is created with the tags ``airflow.dag_id`` / ``airflow.run_id`` in the same
  request, so even a create whose answer was lost is found again by a tag search; the caller also
  passes the run id it stored in the model DB. A retry or a re-run of the same Airflow run therefore
  re-opens that run (status RUNNING again) instead of adding one. Metrics are logged with the time
  of logging (the newest value is the run's value; the history shows each attempt); parameters are
  immutable in MLflow, so a re-run whose parameter values changed keeps the first value and adds
  the new one as the tag ``param_rerun.<key>``.
* **Credentials never reach the training code.** MLflow's client only reads credentials from the
  environment (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN``), so they are set only around
  each client call, under a lock, and the previous values restored; the training callable and the
  notebook kernel run outside those calls. No message carries them (URIs are shown without userinfo).
* **Outage vs. mistake.** An unreachable server, a timeout, 429 and 5xx are ``retryable``; 401/403,
  other 4xx, a deleted experiment and a missing client are not. Client-side HTTP retries are few and
  short (``max_retries``, ``timeout``): the task's own retries are the long wait.
* **The dataset input** is an ``mlflow.entities.Dataset`` whose ``source`` is the registry tag (the
  credential-free repository URL, tag and path, as JSON) and whose ``digest`` is the full-file md5,
  not MLflow's sampled digest: the same bytes the model DB and the tag message name.

``mlflow`` is imported only when a tracker is used, never at DAG parse time.
"""
from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

TAG_DAG_ID = "airflow.dag_id"
TAG_RUN_ID = "airflow.run_id"
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
DEFAULT_TIMEOUT = 30
DEFAULT_MAX_RETRIES = 2
MAX_PARAM_VALUE = 6000  # MLflow's limit for a parameter value
MAX_TAG_VALUE = 5000
MAX_KEY = 250
_KEY_CHARS = re.compile(r"[^\w./\- :]")  # what MLflow accepts in a metric/param/tag key
_ENV_LOCK = threading.RLock()


class MlflowTrackingError(RuntimeError):
    """MLflow refused or could not be reached. ``retryable``: an outage (retry the task) or not (fix
    the connection, the server or the experiment)."""

    def __init__(self, message: str, *, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


def redact_uri(uri: str) -> str:
    """The URI without secrets: no password; over http(s) no user part at all (often a token there).
    An ssh login name (``ssh://git@host/...``) stays: it says how to fetch, and is no secret."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparsable URI>"
    if "@" not in parts.netloc:
        return uri
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    keep = user and parts.scheme.lower() not in ("http", "https")
    return urlunsplit(parts._replace(netloc=f"{user}@{hostport}" if keep else hostport))


def build_tracking_uri(host: str | None, scheme: str | None = None, port: int | None = None) -> str:
    """The tracking URI from a connection's host, schema (the scheme) and port fields.

    ``host`` is either a full URI (``http://mlflow:5000``, ``https://example.com/mlflow``) or a bare
    host name; for a bare name ``scheme`` (default ``http``) and ``port`` complete it. A port given in
    both the URI and the port field must agree; user names and passwords belong in the connection's
    login/password, never in the URI. Only http and https are supported. Raises ValueError.
    """
    host = (host or "").strip()
    if not host:
        raise ValueError("the connection's host must be the MLflow tracking URI, e.g. http://mlflow:5000")
    if "://" not in host:
        host = f"{(scheme or 'http').strip().lower()}://{host}"
    try:
        parts = urlsplit(host)
        uri_port = parts.port
    except ValueError as exc:
        raise ValueError(f"{redact_uri(host)!r} is not a valid URI: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"tracking URI {redact_uri(host)!r}: the scheme must be http or https")
    if scheme and scheme.strip().lower() not in ("", parts.scheme):
        raise ValueError(f"tracking URI {redact_uri(host)!r}: the connection's schema {scheme!r} contradicts the URI's "
                         "scheme; leave the schema empty or make them agree")
    if "@" in parts.netloc:
        raise ValueError(f"tracking URI {redact_uri(host)!r}: put the user name and password in the connection's "
                         "login and password, not in the URI")
    if not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"tracking URI {host!r}: expected scheme://host[:port][/path]")
    if port:
        if uri_port is not None and uri_port != int(port):
            raise ValueError(f"tracking URI {host!r}: port {uri_port} in the URI but {port} in the port field")
        if uri_port is None:
            netloc = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            parts = parts._replace(netloc=f"{netloc}:{int(port)}")
    return urlunsplit(parts).rstrip("/")


@dataclass(frozen=True)
class TrackingSettings:
    """Where the tracking server is and how to authenticate; ``password``/``token`` are never shown."""

    uri: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    timeout: int = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    server_cert_path: str | None = None

    def environ(self) -> dict[str, str | None]:
        """What MLflow's client reads during a call (None: unset, so nothing ambient is used)."""
        return {
            "MLFLOW_TRACKING_USERNAME": self.username or None,
            "MLFLOW_TRACKING_PASSWORD": self.password or None,
            "MLFLOW_TRACKING_TOKEN": self.token or None,
            "MLFLOW_TRACKING_SERVER_CERT_PATH": self.server_cert_path or None,
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(self.timeout),
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.max_retries),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        }

    def secrets(self) -> list[str]:
        return [s for s in (self.password, self.token) if s]


def _set_environ(values: dict[str, str | None]) -> None:
    """Set each variable; None removes it."""
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextmanager
def client_environment(settings: TrackingSettings) -> Iterator[None]:
    """Set the settings' variables for the duration of one client call; restore what was there."""
    with _ENV_LOCK:
        wanted = settings.environ()
        saved = {name: os.environ.get(name) for name in wanted}
        try:
            _set_environ(wanted)
            yield
        finally:
            _set_environ(saved)


def clean_key(key: object) -> str:
    """A metric/param/tag key MLflow accepts: other characters become ``_``, at most 250 chars."""
    return _KEY_CHARS.sub("_", str(key))[:MAX_KEY] or "_"


def flatten(mapping: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (nested dicts only; lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in (mapping or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def numeric_metrics(evaluations: dict) -> dict[str, float]:
    """The evaluations MLflow can hold as metrics: finite-or-infinite numbers (not booleans, not NaN,
    not integers beyond a float), nested keys joined by ``.``."""
    out = {}
    for key, value in flatten(evaluations).items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        try:
            number = float(value)
        except OverflowError:
            continue
        if not math.isnan(number):
            out[clean_key(key)] = number
    return out


def param_values(parameters: dict) -> dict[str, str]:
    """Parameters as MLflow strings (JSON for lists/None/bools), nested keys joined by ``.``."""
    out = {}
    for key, value in flatten(parameters).items():
        text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
        out[clean_key(key)] = text[:MAX_PARAM_VALUE]
    return out


def dataset_source(repo_url: str, tag: str, path: str) -> str:
    """The dataset input's ``source``: where the bytes are, as a person would fetch them (JSON)."""
    return json.dumps({"repo_url": redact_uri(repo_url), "tag": tag, "path": path}, sort_keys=True)


def _quoted(value: str) -> str | None:
    """A string literal for MLflow's search filter, or None when the value holds both quote kinds."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


class MlflowTracker:
    """The tracking calls a train run makes, each translated into MlflowTrackingError on failure.

    :param settings: tracking URI, credentials and client timeouts.
    """

    def __init__(self, settings: TrackingSettings):
        self.settings = settings
        self._client = None

    @property
    def where(self) -> str:
        return f"MLflow tracking server {redact_uri(self.settings.uri)}"

    def check_client(self) -> None:
        """Fail now (not retryable) when the MLflow client is not installed on this worker."""
        try:
            import mlflow.entities  # noqa: F401
            from mlflow import MlflowClient  # noqa: F401
        except ImportError as exc:
            raise MlflowTrackingError(
                f"the MLflow client is not installed on this worker ({exc}); install mlflow-skinny "
                "(pip install 'airflow-provider-dataset-registry[mlflow]')", retryable=False) from None

    @property
    def client(self):
        if self._client is None:
            self.check_client()
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.settings.uri)
        return self._client

    def _redact(self, text: str) -> str:
        for secret in self.settings.secrets():
            text = text.replace(secret, "***")
        return text

    def _call(self, what: str, fn: Callable, *args, missing_ok: tuple[str, ...] = (), **kwargs):
        """``fn(*args, **kwargs)`` with the credentials set; errors become MlflowTrackingError, except
        MLflow error codes in ``missing_ok``, which return None."""
        from mlflow.exceptions import MlflowException

        try:
            with client_environment(self.settings):
                return fn(*args, **kwargs)
        except MlflowException as exc:
            if exc.error_code in missing_ok:
                return None
            status = exc.get_http_status_code()
            reason = self._redact(str(exc).replace("\n", " "))[:1500]
            if status in (401, 403):
                raise MlflowTrackingError(
                    f"{self.where} refused {what} ({status}): check the connection's login/password or token: "
                    f"{reason}", retryable=False) from None
            retryable = status >= 500 or status == 429
            raise MlflowTrackingError(f"{self.where}: {what} failed: {reason}", retryable=retryable) from None
        except MlflowTrackingError:
            raise
        except Exception as exc:  # noqa: BLE001 - requests/urllib3/OS errors: the server or the network
            reason = self._redact(f"{type(exc).__name__}: {exc}".replace("\n", " "))[:1500]
            raise MlflowTrackingError(f"{self.where}: {what} failed: {reason}", retryable=True) from None

    # ------------------------------------------------------------------ experiment and run
    def experiment_id(self, name: str) -> str:
        """The id of the experiment ``name``, created when missing (a concurrent create is fine)."""
        client = self.client
        found = self._call(f"looking up experiment {name!r}", client.get_experiment_by_name, name)
        if found is None:
            created = self._call(f"creating experiment {name!r}", client.create_experiment, name,
                                 missing_ok=("RESOURCE_ALREADY_EXISTS",))
            if created is not None:
                return created
            found = self._call(f"looking up experiment {name!r}", client.get_experiment_by_name, name)
            if found is None:
                raise MlflowTrackingError(f"{self.where}: experiment {name!r} vanished while being created",
                                          retryable=True)
        if found.lifecycle_stage != "active":
            raise MlflowTrackingError(
                f"{self.where}: experiment {name!r} (id {found.experiment_id}) is deleted; restore it "
                "(mlflow experiments restore) or set another mlflow_experiment", retryable=False)
        return found.experiment_id

    def find_run(self, experiment_id: str, dag_id: str, run_id: str, known_run_id: str | None = None):
        """The active MLflow run of this Airflow run: ``known_run_id`` if it still exists and carries
        the tags, else the oldest run tagged with the dag/run ids, else None."""
        client = self.client
        if known_run_id:
            run = self._call(f"reading run {known_run_id}", client.get_run, known_run_id,
                             missing_ok=("RESOURCE_DOES_NOT_EXIST",))
            if (run is not None and run.info.lifecycle_stage == "active"
                    and str(run.info.experiment_id) == str(experiment_id)
                    and run.data.tags.get(TAG_DAG_ID) == dag_id and run.data.tags.get(TAG_RUN_ID) == run_id):
                return run
        dag_lit, run_lit = _quoted(dag_id), _quoted(run_id)
        if dag_lit is None:
            return None
        query = f"tags.`{TAG_DAG_ID}` = {dag_lit}" + (f" and tags.`{TAG_RUN_ID}` = {run_lit}" if run_lit else "")
        found, token = [], None
        while True:
            page = self._call("searching runs", client.search_runs, [experiment_id], filter_string=query,
                              max_results=1000, order_by=["attributes.start_time ASC"], page_token=token)
            found.extend(r for r in page if r.data.tags.get(TAG_RUN_ID) == run_id)
            token = page.token
            if not token:
                return found[0] if found else None

    def open_run(self, *, experiment: str, dag_id: str, run_id: str, run_name: str, tags: dict[str, str],
                 known_run_id: str | None = None) -> str:
        """The MLflow run id of this Airflow run, re-opened (RUNNING) or created with ``tags``."""
        client = self.client
        experiment_id = self.experiment_id(experiment)
        tags = {clean_key(k): str(v)[:MAX_TAG_VALUE] for k, v in tags.items()}
        run = self.find_run(experiment_id, dag_id, run_id, known_run_id)
        if run is None:
            run = self._call("creating the run", client.create_run, experiment_id, run_name=run_name,
                             tags={**tags, TAG_DAG_ID: dag_id, TAG_RUN_ID: run_id})
        else:
            self._call("re-opening the run", client.update_run, run.info.run_id, status="RUNNING")
            self._log_tags(run.info.run_id, tags)
        return run.info.run_id

    def _log_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(clean_key(k), str(v)[:MAX_TAG_VALUE]) for k, v in tags.items()]
        for start in range(0, len(items), 100):
            self._call("logging tags", self.client.log_batch, run_id, tags=items[start:start + 100])

    def log_dataset(self, run_id: str, *, name: str, md5: str, source: str, profile: dict | None = None) -> None:
        """The dataset input: ``digest`` is the full-file md5; logging it again changes nothing."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=name, digest=md5, source_type="dvc_registry", source=source,
                          profile=json.dumps(profile or {}, sort_keys=True, default=str))
        self._call("logging the dataset input", self.client.log_inputs, run_id,
                   datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])])

    def log_results(self, run_id: str, *, parameters: dict, evaluations: dict, artifacts_dir: str | Path | None,
                    tags: dict[str, str] | None = None) -> dict:
        """Parameters, numeric evaluations as metrics, the artifacts folder, extra tags. Returns what
        was logged (``metrics``, ``params``, ``param_conflicts``)."""
        from mlflow.entities import Metric, Param

        client = self.client
        params = param_values(parameters)
        existing = self._call("reading the run", client.get_run, run_id).data.params
        conflicts = {k: v for k, v in params.items() if k in existing and existing[k] != v}
        new_params = [Param(k, v) for k, v in params.items() if k not in existing]
        for start in range(0, len(new_params), 100):
            self._call("logging parameters", client.log_batch, run_id, params=new_params[start:start + 100])
        now = int(time.time() * 1000)
        metrics = numeric_metrics(evaluations)
        items = [Metric(k, v, now, 0) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self._call("logging metrics", client.log_batch, run_id, metrics=items[start:start + 1000])
        extra = dict(tags or {})
        extra.update({f"param_rerun.{k}": v for k, v in conflicts.items()})
        if extra:
            self._log_tags(run_id, extra)
        if artifacts_dir is not None and Path(artifacts_dir).is_dir() and any(Path(artifacts_dir).iterdir()):
            self._call("uploading the artifacts", client.log_artifacts, run_id, str(artifacts_dir))
        return {"metrics": metrics, "params": params, "param_conflicts": sorted(conflicts)}

    def close_run(self, run_id: str, status: str, tags: dict[str, str] | None = None) -> None:
        """End the run as ``FINISHED`` or ``FAILED`` (after optional tags)."""
        if tags:
            self._log_tags(run_id, tags)
        self._call(f"marking the run {status}", self.client.set_terminated, run_id, status)
