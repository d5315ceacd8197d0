"""Airflow DAGs train_<project>: scheduled on each project's Asset (dvc://registry/<project>).

Thin on purpose: all logic lives in plugins/dataset_registry. (The words "airflow" and "dag" in
this docstring also keep Airflow's safe-mode file filter from skipping the file.)
"""
from dataset_registry.dag_factory import register_train_dags

register_train_dags(globals())
