"""The publish and pull protocol, step by step as the README tells it: what makes a tag trustworthy.

Publish, under the working clone's flock:
1. the clone is reused: stale git locks cleared, fetch (or the one ``sync_ahead`` made during the
   export, under its own hold of the lock), hard reset, re-created if broken; only a repository with
   no refs at all is new (initialized), a missing branch in a non-empty one is an error;
2. the export (hashed while it was written) replaces whatever the DVC cache holds under that md5;
3. if the tag exists: different md5 -> VersionConflictError naming both md5s; same md5 -> step 4,
   then done without a commit (this is how a lost remote object is restored);
4. the object's CONTENT on the DVC remote is hashed (over SSH: ``md5sum`` on the host, by one OpenSSH
   command that also uploads to a temporary name, hashes that and renames it, when the host has a shell;
   on S3: an ETag equal to the md5 counts, else it is read back); missing or wrong -> uploaded from the
   cache and hashed again. Nothing is proposed before the remote content is proven;
5. propose, then land in batches (``landing``): the first round on what step 1 fetched (the clone's
   fetches include the proposals) plus our proposal, later rounds after a fetch. Rounds lost to other
   publishers or to an old view, and connections the registry's server dropped (sshd's MaxStartups
   under a burst of publishers), are retried with full-jitter exponential back-off until
   ``publish_timeout`` (a deadline, not an attempt count); a proposal that vanished is proposed again.
   Only the run whose publish id is in the tag reports ``created``.
Pull: resolve the tag (the newest by default) -> the object into the worker's DVC cache (downloaded
and hashed, unless already there) -> a copy to the destination, hashed on the way.
Tags are never deleted, moved or force-pushed on the remote.
"""
from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from dataset_registry.dvc_store import DvcStore
from dataset_registry.landing import Landing
from dataset_registry.names import tag_name, validate_output, validate_project, validate_version
from dataset_registry.registry_errors import (
    PublishDeadlineError, RegistryError, VersionConflictError, VersionNotFoundError,
)
from dataset_registry.registry_settings import RegistrySettings
from dataset_registry.working_clone import (
    AHEAD_MAX_AGE, RegistryVersions, VersionInfo, WorkingClone, message_field, tag_message,
)

log = logging.getLogger(__name__)

BACKOFF_BASE = 0.05  # full-jitter exponential back-off: uniform(0, min(cap, base * 2**attempt))
BACKOFF_CAP = 5.0
PROPOSE_ATTEMPTS = 3  # rounds that may find no proposal of ours before the pending refs count as unwritable


@dataclass(frozen=True)
class PublishResult:
    project: str
    version: str
    tag: str
    md5: str
    rows: int
    bytes: int
    commit: str
    created: bool  # False when the tag already existed with the same content

    def as_dict(self) -> dict:
        return asdict(self)


def conflict(info: VersionInfo, md5: str) -> VersionConflictError:
    """The tag exists with other bytes than this run's."""
    return VersionConflictError(
        f"tag {info.tag} already exists with different content: the registry has md5 {info.md5}, "
        f"this run produced md5 {md5}. Tags are immutable: publish under a new version name, "
        "or check why the same window gave different data."
    )


class PublishProtocol:
    """``publish`` and ``pull`` of one registry, over its parts.

    :param settings: the registry's settings (``publish_timeout`` is the default deadline)
    :param clone: the worker's working clone
    :param versions: what the clone's fetched tags say
    :param store: the worker's DVC cache and the DVC remote
    :param landing: proposals and landing rounds
    """

    def __init__(self, settings: RegistrySettings, clone: WorkingClone, versions: RegistryVersions,
                 store: DvcStore, landing: Landing):
        self.settings = settings
        self.clone = clone
        self.versions = versions
        self.store = store
        self.landing = landing

    # ---------------------------------------------------------------- publishing
    def publish(self, project: str, output: str, version: str, data_file: Path, md5: str, rows: int,
                timeout: float | None = None, *, window_start: str | None = None, window_end: str | None = None,
                columns: list | None = None, profile: dict | None = None) -> PublishResult:
        """Publish ``data_file`` (whose md5 the caller computed while writing it) as ``<project>/<version>``.

        :param timeout: how long the push may keep losing races to other publishers (default: the
            settings' ``publish_timeout``); data upload and verification are not counted.
        :param window_start: the window's start (ISO), written to the tag message; likewise
            ``window_end``, ``columns`` (the CSV's column names) and ``profile`` (``column_profile``).
        """
        meta = {k: v for k, v in (("window_start", window_start), ("window_end", window_end),
                                  ("columns", columns), ("profile", profile)) if v is not None}
        validate_project(project)
        validate_output(output)
        validate_version(version)
        tag = tag_name(project, version)
        data_file = Path(data_file)
        size = data_file.stat().st_size
        with self.clone.locked():
            self._prepare()  # 1
            existing = self.versions.tag_info(project, output, version)
            if existing is not None and existing.md5 != md5:  # 3, before anything is cached or uploaded
                raise conflict(existing, md5)
            self.store.add(data_file, md5)  # 2
            self._push_data(f"{project}/{output}", md5, size)  # 4
            if existing is not None:  # 3: same bytes, now proven on the remote
                log.info("tag %s already exists with the same content (md5 %s), verified on the remote: "
                         "nothing to do", tag, md5)
                return PublishResult(project, version, tag, md5, rows, size, existing.commit, created=False)
            extra = {"meta": meta} if meta else {}  # subclasses with the older signature keep working
            return self._commit_and_push(project, output, version, tag, md5, rows, size, timeout, **extra)  # 5

    def _prepare(self) -> None:
        """Step 1, and the clone's DVC pointed at this worker's cache and the remote."""
        self.clone.prepare()
        self.store.configure()

    def _push_data(self, rel: str, md5: str, size: int) -> None:
        """Step 4 (a method of its own so that fault-injection tests can wrap it)."""
        self.store.ensure_remote(rel, md5, size)

    def _commit_and_push(self, project, output, version, tag, md5, rows, size, timeout,
                         meta: dict | None = None) -> PublishResult:
        """Land the version on the branch, with its tag, in one atomic push; any publisher may land it.

        Data was verified on the remote before the proposal exists, so nothing unverified is ever
        tagged; branch and tags land together; tags are created once and never moved.
        """
        timeout = self.settings.publish_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        publish_id = uuid.uuid4().hex
        created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        message = tag_message(project, version, md5, rows, size, created, publish_id, **(meta or {}))
        proposed = self.landing.propose(project, output, tag, md5, size, message)
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1 or proposed is None or not self.clone.fetched_within(AHEAD_MAX_AGE):
                self.landing.fetch()  # raises when the registry is unreachable
            # else: the first round lands on what step 1 fetched (tip, tags, proposals) plus our
            # proposal: a quiet registry costs no second fetch; a moved one loses the round
            existing = self.versions.tag_info(project, output, version)
            if existing is not None:
                if existing.md5 != md5:
                    raise conflict(existing, md5)
                mine = existing.publish_id == publish_id
                log.info("%s is published at commit %s (%s, after %d round(s))", tag, existing.commit[:12],
                         "landed by this run" if attempt > 1 and mine else "by this run" if mine else
                         "by another run with the same content", attempt - 1)
                return PublishResult(project, version, tag, md5, rows, size, existing.commit, created=mine)
            if time.monotonic() >= deadline:
                raise PublishDeadlineError(
                    f"could not publish {tag} within publish_timeout={timeout:.0f} s: {attempt - 1} rounds lost the "
                    "race to other publishers. Its proposal stays on the registry and the next publisher lands it, or "
                    "publish again; raise publish_timeout if this recurs")
            if not self.landing.is_pending(tag):
                if attempt > PROPOSE_ATTEMPTS:
                    raise RegistryError(f"could not publish {tag}: its proposal cannot be pushed to the registry "
                                        f"{self.clone.repo_url} (is refs/registry-pending/ writable?); nothing was tagged")
                self.landing.propose(project, output, tag, md5, size, message)  # lost, or never arrived: propose again
                continue
            landed = self.landing.land()
            if landed is None:
                delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(attempt, 10)))
                delay = min(delay, max(0.0, deadline - time.monotonic()))
                log.info("another publisher landed first (round %d); fetching again in %.2f s", attempt, delay)
                time.sleep(delay)
                continue
            if tag not in landed:
                continue  # the next fetch finds our tag (landed meanwhile by someone else)
            mine = landed[tag]
            if mine["md5"] != md5:  # another run's proposal for this version won
                raise conflict(VersionInfo(project, version, tag, mine["md5"], size, None, mine["commit"]), md5)
            created_here = message_field(mine["message"], "publish-id") == publish_id
            return PublishResult(project, version, tag, md5, rows, size, mine["commit"], created=created_here)

    def previous_version(self, project: str, output: str, exclude: str | None = None) -> VersionInfo | None:
        """The project's newest version on the registry other than ``exclude`` (read only: a fetch), or
        None when it has none. For checks that compare with the previous version (``max_rows_change``)."""
        validate_project(project)
        with self.clone.locked():
            if not self.clone.sync():
                return None
            for version in self.versions.list_versions(project):
                if version == exclude:
                    continue
                try:
                    return self.versions.tag_info(project, output, version)
                except RegistryError:  # a tag of another output file (renamed): rows from its message
                    continue
        return None

    # ---------------------------------------------------------------- pulling
    def resolve_version(self, project: str, output: str, version: str | None) -> VersionInfo:
        """The tag's metadata; ``version=None`` means the newest. Unknown -> lists what exists."""
        with self.clone.locked():
            return self._resolve_synced(project, output, version)

    def _resolve_synced(self, project: str, output: str, version: str | None) -> VersionInfo:
        if not self.clone.sync():
            raise VersionNotFoundError(f"the registry {self.clone.repo_url} is empty: nothing published yet")
        return self.versions.resolve(project, output, version)

    def pull(self, project: str, output: str, version: str | None, dest: Path) -> tuple[VersionInfo, Path, bool]:
        """Copy the version's file to ``dest`` (a file path), verified against the .dvc md5.

        Reuses the worker's DVC cache: a version already in the cache is not downloaded again.
        Returns (info, path, downloaded). On failure no file is left at ``dest``.
        """
        validate_project(project)
        validate_output(output)
        dest = Path(dest)
        with self.clone.locked():
            info = self._resolve_synced(project, output, version)
            downloaded = not self.store.has(info.md5)
            if downloaded:
                self.store.configure()
                self.store.fetch(info.md5, info.tag)
            else:
                log.info("%s (%s) found in the local DVC cache: no download", info.tag, info.md5)
        self.store.copy_out(info.md5, dest, info.tag)
        return info, dest, downloaded
