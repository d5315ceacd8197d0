"""RegistryHook: the ``dvc_registry`` connection -> a RegistryClient (git + DVC)."""
from __future__ import annotations

from pathlib import Path

from airflow.sdk import BaseHook

from dataset_registry.paths import worker_path
from dataset_registry.registry import DEFAULT_PUBLISH_TIMEOUT, RegistryClient, RegistryError, RegistrySettings

_TRUE = {"1", "true", "yes", "on"}


def default_work_dir() -> Path:
    """Where working clones and the DVC cache live: per worker, kept between runs."""
    return worker_path("DATASET_WORK_DIR", "dataset-registry")


def _seconds(value, default: float) -> float:
    if value in (None, ""):
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RegistryError(f"dvc_registry connection: extra.publish_timeout {value!r} is not a number of seconds") from None


class RegistryHook(BaseHook):
    """Reads ``extra.repo_url``, ``extra.remote_url``, ``login``/``password``, ``extra.key_file``,
    ``extra.known_hosts``, ``extra.branch``, ``extra.no_host_key_check``, ``extra.work_dir`` and
    ``extra.publish_timeout`` (seconds, default 900)."""

    conn_name_attr = "registry_conn_id"
    default_conn_name = "dvc_registry"
    conn_type = "generic"
    hook_name = "DVC dataset registry"

    def __init__(self, registry_conn_id: str = default_conn_name, **kwargs):
        super().__init__(**kwargs)
        self.registry_conn_id = registry_conn_id
        self._client: RegistryClient | None = None

    def settings(self) -> RegistrySettings:
        conn = self.get_connection(self.registry_conn_id)
        extra = conn.extra_dejson or {}
        no_check = str(extra.get("no_host_key_check", "false")).lower() in _TRUE
        return RegistrySettings(
            repo_url=str(extra.get("repo_url", "")),
            remote_url=str(extra.get("remote_url", "")),
            work_dir=Path(extra.get("work_dir") or default_work_dir()),
            branch=str(extra.get("branch") or "main"),
            ssh_user=conn.login or None,
            ssh_password=conn.password or None,
            key_file=extra.get("key_file") or None,
            known_hosts=extra.get("known_hosts") or None,
            check_host_keys=not no_check,
            publish_timeout=_seconds(extra.get("publish_timeout"), DEFAULT_PUBLISH_TIMEOUT),
        )

    def get_conn(self) -> RegistryClient:
        if self._client is None:
            self._client = RegistryClient(self.settings())
        return self._client
