"""Airflow local settings for the processes of tests/test_celery_e2e.py only (on their PYTHONPATH).

* ``task_policy`` (a standard Airflow cluster policy) routes p1's publish to worker w1's queue and
  p1's train to worker w2's queue, so at least one train always pulls on another worker than the one
  that published; every other task stays on the shared ``default`` queue, free for either worker.
* ``worker_hostname`` is the ``[core] hostname_callable`` of the two workers: they run on one
  machine, so the FQDN alone would not tell them apart in the task instances' ``hostname``.
"""
import os
import socket

__all__ = ["task_policy"]

PINNED_QUEUES = {("version_p1", "publish_version"): "w1", ("train_p1", "train_model"): "w2"}


def task_policy(task):
    queue = PINNED_QUEUES.get((task.dag_id, task.task_id))
    if queue:
        task.queue = queue


def worker_hostname():
    return os.environ.get("DSV_WORKER_HOSTNAME") or socket.getfqdn()
