"""The dataset registry: one git repository (DVC files, one tag per version) + one DVC remote.

``RegistryClient`` is what the rest of the code uses; it only wires the parts for one
``RegistrySettings``, and each part changes for one reason:
- ``registry_settings``: what a registry is, every value checked before any command sees it;
- ``ssh_env``: the environment of git/DVC children (SSH options, host keys, askpass, URL tokens);
- ``s3_remote``: S3 remotes (URL rules, credentials for DVC's S3 filesystem, ETag as proof);
- ``working_clone``: the worker's clone (flock, repair, sync, initialization) and its tags;
- ``dvc_store``: the worker's DVC cache, verified copies out of it, the DVC remote's content;
- ``landing``: proposals, and landing them in batches by one atomic push;
- ``publish_protocol``: publish and pull, step by step as the README tells it.
Nothing here imports Airflow: the hook turns a connection into settings and adds its context to errors.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from dataset_registry.dvc_store import (
    DVC_REMOTE, MD5_HEX, STALE_STAGING_SECONDS, DvcStore, SshObjects, StagingArea, dvc_file_text, gitignore_with,
    local_disk_error, parse_dvc_file,
)
from dataset_registry.gitcmd import Runner
from dataset_registry.landing import MAX_BATCH, PENDING_LOCAL, PENDING_NAMESPACE, Landing
from dataset_registry.publish_protocol import BACKOFF_BASE, BACKOFF_CAP, PublishProtocol, PublishResult
from dataset_registry.registry_errors import (
    PublishDeadlineError, RegistryError, VersionConflictError, VersionNotFoundError,
)
from dataset_registry.registry_settings import DEFAULT_PUBLISH_TIMEOUT, RegistrySettings
from dataset_registry.ssh_env import (
    ASKPASS_NAME, ASKPASS_SCRIPT, ENV_GIT_PASSWORD, ENV_GIT_USER, SubprocessEnv, split_url_credentials,
)
from dataset_registry.working_clone import (
    COMMITTER, LOCK_TIMEOUT, TAG_NAMESPACE, RegistryVersions, VersionInfo, WorkingClone,
)

# The public API, and every name this module defined before it was split (kept importable from here).
__all__ = [
    "RegistryClient", "RegistrySettings", "PublishResult", "VersionInfo",
    "RegistryError", "VersionConflictError", "VersionNotFoundError", "PublishDeadlineError", "DEFAULT_PUBLISH_TIMEOUT",
    "split_url_credentials", "dvc_file_text", "gitignore_with", "parse_dvc_file", "local_disk_error", "MD5_HEX",
    "DVC_REMOTE", "TAG_NAMESPACE", "PENDING_NAMESPACE", "PENDING_LOCAL", "MAX_BATCH", "COMMITTER",
    "BACKOFF_BASE", "BACKOFF_CAP", "LOCK_TIMEOUT", "STALE_STAGING_SECONDS",
    "ENV_GIT_USER", "ENV_GIT_PASSWORD", "ASKPASS_SCRIPT",
]


class RegistryClient(PublishProtocol):
    """Working clone + DVC cache of one registry, kept warm in ``work_dir`` between runs.

    Constructing one touches neither disk nor network: the folders, the askpass script and the
    clone appear on first use.

    :param settings: the registry and how this worker reaches it
    """

    def __init__(self, settings: RegistrySettings):
        key = hashlib.sha256(f"{settings.repo_url}\0{settings.branch}".encode()).hexdigest()[:16]
        self.work_dir = Path(settings.work_dir)
        self.clone_dir = self.work_dir / "clones" / key
        self.lock_path = self.work_dir / "clones" / f"{key}.lock"
        self.cache_dir = self.work_dir / "dvc-cache"
        self.staging = StagingArea(self.work_dir / "staging")
        env = SubprocessEnv(settings, self.work_dir / ASKPASS_NAME)
        self.repo_url = env.repo_url  # without a token: as written to .git/config and shown in messages
        self.runner = Runner(self.clone_dir, env.variables(), secrets=env.secrets,
                             before_first_run=env.install_askpass, dvc_env=env.dvc_variables())
        clone = WorkingClone(self.clone_dir, self.lock_path, self.repo_url, settings.branch, settings.remote_url,
                             self.runner)
        remote_ssh = env.remote_ssh()
        ssh_objects = SshObjects(*remote_ssh, env.remote_ssh_variables(), env.secrets, self.runner.timeout,
                                 state_dir=self.work_dir / "state") if remote_ssh else None
        store = DvcStore(self.cache_dir, settings.remote_url, self.clone_dir, self.runner,
                         remote_options=settings.s3.dvc_remote_options() if settings.s3 is not None else None,
                         ssh_objects=ssh_objects)
        super().__init__(settings, clone, RegistryVersions(clone), store, Landing(clone))

    @property
    def staging_dir(self) -> Path:
        """Where exports are staged (created on first use)."""
        return self.staging.directory

    def staging_file(self, project: str, output: str) -> Path:
        """A fresh path on the clone's filesystem, so placing the export is a rename, not a copy.
        Exports that killed runs left behind (older than a day) are removed first."""
        return self.staging.new_file(project, output)

    def locked(self):
        """One publisher/puller per working clone on this worker (a context manager)."""
        return self.clone.locked()

    def sync_ahead(self) -> None:
        """Fetch the registry in a background thread while the caller exports; the next publish within
        ``AHEAD_MAX_AGE`` s uses it instead of fetching (``WorkingClone.sync_ahead``)."""
        self.clone.sync_ahead()

    def wait_ahead(self) -> None:
        """Wait for a ``sync_ahead`` still running (before the task returns, so no git child outlives it)."""
        self.clone.wait_ahead()

    def sync(self) -> bool:
        """Bring the working clone to the registry's current state; False for an empty registry."""
        return self.clone.sync()

    def fetch(self) -> None:
        """Fetch the registry's branches and tags into the working clone."""
        self.clone.fetch()

    def list_versions(self, project: str) -> list[str]:
        """Versions of a project as last fetched, newest first (see ``RegistryVersions.list_versions``)."""
        return self.versions.list_versions(project)

    def _cache_object(self, md5: str) -> Path:
        return self.store.object_path(md5)

    # For subclasses that replace the landing step (tests/benchmarks/fan_in.py's previous protocol).
    def _git(self, *args: str, **kwargs) -> str:
        return self.clone.git(*args, **kwargs)

    def _origin_tip(self) -> str:
        return self.clone.origin_tip()
