"""This repository's plugins folder entry for the dataset registry plugin (see dataset_registry/plugin.py).

The package itself is listed in ``.airflowignore``: Airflow imports every ``.py`` file of the plugins
folder as a top-level module, which would load each module of the package a second time under a
bare name (``registry``, ``names``, ...).
"""
from dataset_registry.plugin import DatasetRegistryPlugin

__all__ = ["DatasetRegistryPlugin"]
