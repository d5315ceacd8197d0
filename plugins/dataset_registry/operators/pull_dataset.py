"""PullDatasetOperator: one registry version -> a local file, md5-verified, via the warm DVC cache."""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from dataset_registry.connection_ids import REGISTRY_CONN_ID
from dataset_registry.operators.lazy_hooks import REGISTRY_HOOK, inject_hooks, lazy_hook
from dataset_registry.names import InvalidNameError, validate_output, validate_project, validate_version

if TYPE_CHECKING:
    from dataset_registry.hooks.registry_hook import DvcRegistryHook


def run_scoped_dir(root: Path, dag_id: str, run_id: str) -> Path:
    """A directory for one Airflow run, safe whatever characters the run id holds."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)[:150]
    return Path(root) / re.sub(r"[^A-Za-z0-9_.-]", "_", dag_id) / safe


def pull_version(hook: DvcRegistryHook, project: str, output: str, version: str | None, dest_dir: Path) -> dict:
    """Shared by the pull and train operators: returns the version metadata plus the local path."""
    from dataset_registry.registry import VersionNotFoundError

    try:
        validate_project(project)
        validate_output(output)
        if version is not None:
            validate_version(version)
    except InvalidNameError as exc:
        raise AirflowFailException(str(exc)) from None
    client = hook.get_conn()
    try:
        info, path, downloaded = client.pull(project, output, version, Path(dest_dir) / output)
    except VersionNotFoundError as exc:
        raise AirflowFailException(str(exc)) from None
    return {"project": info.project, "version": info.version, "tag": info.tag, "md5": info.md5,
            "bytes": info.bytes, "rows": info.rows, "commit": info.commit, "path": str(path),
            "downloaded": downloaded, "window_start": info.window_start, "window_end": info.window_end,
            "columns": info.columns, "profile": info.profile}


class PullDatasetOperator(BaseOperator):
    """Pull ``<project>/<version>`` (newest when ``version`` is empty) into ``dest_dir``, md5-verified.

    :param project: project name. (templated)
    :param output_file: the CSV file name of the project. (templated)
    :param dest_dir: local folder to write ``output_file`` into. (templated)
    :param version: version to pull; empty: the newest. (templated)
    :param registry_conn_id: the registry connection; default ``dvc_registry``.
    :param registry_hook: an already built DvcRegistryHook to use instead of ``registry_conn_id``.
    """

    template_fields: Sequence[str] = ("project", "output_file", "version", "dest_dir")

    def __init__(self, *, project: str, output_file: str, dest_dir: str, version: str = "",
                 registry_conn_id: str = REGISTRY_CONN_ID, registry_hook: DvcRegistryHook | None = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.project = project
        self.output_file = output_file
        self.version = version
        self.dest_dir = dest_dir
        self.registry_conn_id = registry_conn_id
        inject_hooks(self, registry_hook=registry_hook)

    registry_hook = lazy_hook(REGISTRY_HOOK, "registry_conn_id")

    def execute(self, context) -> dict:
        version = (self.version or "").strip() or None
        result = pull_version(self.registry_hook, self.project, self.output_file, version, Path(self.dest_dir))
        self.log.info("pulled %s (md5 %s) to %s%s", result["tag"], result["md5"], result["path"],
                      "" if result["downloaded"] else " from the local cache")
        return result
