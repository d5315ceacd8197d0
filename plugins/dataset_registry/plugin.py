"""The Airflow plugin of the dataset registry: the registry page and its JSON API.

Registered two ways: by the provider's ``get_provider_info`` (``plugins``) when the package is
pip-installed, and by ``plugins/dataset_registry_plugin.py`` in this repository's own plugins folder.

- ``fastapi_apps``: the app of ``dataset_registry.web`` under ``/dataset-registry`` (page at
  ``/dataset-registry/``, JSON under ``/dataset-registry/api``), every route behind Airflow's own
  access check;
- ``external_views``: a "Dataset registry" entry in the UI's Browse menu, and a "Dataset versions"
  tab on every DAG page (it opens the project of a ``version_<p>``/``train_<p>`` DAG).

Every Airflow component loads plugins at start, so this module imports nothing heavy: the FastAPI
app is built the first time something reads ``fastapi_apps`` (the api-server, ``airflow plugins``).
"""
from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/dataset-registry"


class _BuiltOnFirstRead:
    """A class attribute computed on first read, from the class or an instance (Airflow reads
    provider plugins from the class, folder and entry-point plugins from an instance)."""

    def __init__(self, build):
        self.build = build
        self.value = None

    def __get__(self, instance, owner):
        if self.value is None:
            self.value = self.build()
        return self.value


def _fastapi_apps() -> list[dict]:
    from dataset_registry.web.app import create_app

    return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Dataset registry"}]


class DatasetRegistryPlugin(AirflowPlugin):
    name = "dataset_registry"
    fastapi_apps = _BuiltOnFirstRead(_fastapi_apps)
    external_views = [
        {
            "name": "Dataset registry",
            "href": f"{URL_PREFIX}/",
            "url_route": "dataset-registry",
            "destination": "nav",
            "category": "browse",
            "icon": f"{URL_PREFIX}/static/icon.svg",
        },
        {
            "name": "Dataset versions",
            "href": f"{URL_PREFIX}/?dag={{DAG_ID}}",
            "url_route": "dataset-versions",
            "destination": "dag",
            "icon": f"{URL_PREFIX}/static/icon.svg",
        },
    ]
