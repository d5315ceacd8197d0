"""Where the registry page reads from: the package's hooks, never a connection read by hand.

``DvcRegistryHook`` (connection ``dvc_registry``) gives the RegistryClient, ``ModelDbHook``
(``model_db``, or the embedded SQLite default) the model DB, and the project YAMLs
(``DATASET_PROJECTS_DIR``) each project's ``key`` for row-level diffs. Inside the api-server a hook
reads its connection like any Airflow component outside a task: ``AIRFLOW_CONN_*`` variables,
then the metadata DB (secrets backends first when configured).

The connection is read on every request (a changed connection needs no restart); the catalog and
its RegistryClient are kept while it stays the same (the working clone and DVC cache stay warm in
``DATASET_WORK_DIR``).
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from dataset_registry.connection_ids import MODEL_DB_CONN_ID, REGISTRY_CONN_ID

log = logging.getLogger(__name__)
# Seconds one fetch of the registry serves the page's requests (a page view makes two or three).
SYNC_MAX_AGE = 5.0


class RegistrySources:
    """The catalog of one api-server process, built on first use.

    :param registry_conn_id: the registry connection (default ``dvc_registry``).
    :param model_db_conn_id: the model DB connection (default ``model_db``).
    """

    def __init__(self, registry_conn_id: str = REGISTRY_CONN_ID, model_db_conn_id: str = MODEL_DB_CONN_ID):
        self.registry_conn_id = registry_conn_id
        self.model_db_conn_id = model_db_conn_id
        self._lock = threading.Lock()
        self._catalog: Any = None
        self._settings: Any = None

    def registry_urls(self) -> tuple[str, str]:
        """(repository URL, DVC remote URL) as a person may see them: without any password or token."""
        from dataset_registry.hooks.registry_hook import DvcRegistryHook
        from dataset_registry.ssh_env import split_url_credentials

        settings = DvcRegistryHook(registry_conn_id=self.registry_conn_id).settings
        return split_url_credentials(settings.repo_url)[0], split_url_credentials(settings.remote_url)[0]

    def model_db(self):
        """The model DB, or None when it cannot be reached (the page then shows no experiments)."""
        from dataset_registry.hooks.model_db_hook import ModelDbHook

        try:
            return ModelDbHook(model_db_conn_id=self.model_db_conn_id).get_conn()
        except Exception as exc:  # noqa: BLE001 - a missing model DB must not hide the registry
            log.warning("dataset registry page: no model DB (%s): experiments are not shown", exc)
            return None

    def project_keys(self) -> dict[str, list[str]]:
        """Each project's ``key`` (row identity for key diffs) from the project YAMLs that load."""
        from dataset_registry.project_config import load_projects

        try:
            configs, _errors = load_projects()
        except Exception as exc:  # noqa: BLE001 - no projects folder here: diffs without key counts
            log.warning("dataset registry page: project configs not readable (%s): diffs without key counts", exc)
            return {}
        return {c.project: list(getattr(c, "key", None) or []) for c in configs if getattr(c, "key", None)}

    def catalog(self):
        """The catalog over the registry and the model DB: kept while the registry connection stays
        the same (its working clone stays warm), built anew when the connection changed."""
        from dataset_registry.catalog import Catalog
        from dataset_registry.hooks.registry_hook import DvcRegistryHook

        hook = DvcRegistryHook(registry_conn_id=self.registry_conn_id)
        settings = hook.settings  # reads the connection: a RegistryConnectionError names what is wrong
        with self._lock:
            if self._catalog is None or settings != self._settings:
                self._catalog = Catalog(hook.get_conn(), self.model_db(), max_age=SYNC_MAX_AGE)
                self._settings = settings
            return self._catalog
