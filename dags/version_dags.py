"""Airflow DAGs version_<project>: one per YAML in include/projects/ (or $DATASET_PROJECTS_DIR).

Thin on purpose: all logic lives in plugins/dataset_registry. (The words "airflow" and "dag" in
this docstring also keep Airflow's safe-mode file filter from skipping the file.)
"""
from dataset_registry.dag_factory import register_version_dags

register_version_dags(globals())
