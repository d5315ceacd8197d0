"""The Airflow plugin of the dataset registry.

Registered two ways: by the provider's ``get_provider_info`` (``plugins``) when the package is
pip-installed, and by ``plugins/dataset_registry_plugin.py`` in this repository's own plugins folder.
It is the one place where UI extensions hang (the registry page and its API are added here); it
imports nothing heavy, because every Airflow component loads plugins at start.
"""
from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


class DatasetRegistryPlugin(AirflowPlugin):
    name = "dataset_registry"
