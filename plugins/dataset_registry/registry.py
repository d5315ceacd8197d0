"""The dataset registry: one git repository (DVC files, one tag per version) + one DVC remote.

The publish protocol (what makes a tag trustworthy):
1. Under a per-worker file lock, the working clone is reused: fetch, hard reset, repaired if broken.
2. If the tag already exists on the registry remote, compare md5s: same bytes -> done, nothing
   changes; different bytes -> VersionConflictError naming both md5s.
3. The export (already hashed while writing) is renamed into the DVC cache and its ``.dvc`` file
   written, as ``dvc add`` would, without a second hash; ``dvc push``; then the remote itself must
   show the object with the right size (``dvc push`` only warns when a cache file is missing).
4. Commit ``<project>/<output>.dvc`` (no commit when it is unchanged), annotated tag, then ONE
   ``git push --atomic`` of branch + tag. If the branch moved, the commit is replayed on the new tip
   and pushed again (bounded, with jitter); if the tag appeared meanwhile, step 2 decides.
Tags are never deleted, moved or force-pushed on the remote.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import random
import re
import shlex
import shutil
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from dataset_registry import dvc_cli
from dataset_registry.gitcmd import CommandError, Runner, base_env
from dataset_registry.names import tag_name, validate_output, validate_project, validate_version

log = logging.getLogger(__name__)

DVC_REMOTE = "storage"
TAG_NAMESPACE = "refs/registry-tags"  # remote tags are fetched here, so stale local tags never mislead
PUSH_ATTEMPTS = 20
LOCK_TIMEOUT = 3600.0
COMMITTER = ["-c", "user.name=Dataset Registry", "-c", "user.email=dataset-registry@localhost"]
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^\s]+$")
_SSH_URL = re.compile(r"^ssh://(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9.\-\[\]:]+(?::\d+)?/[^\s\"']*$")


class RegistryError(RuntimeError):
    """Publishing or reading the registry failed; nothing half-published is left visible."""


class VersionConflictError(RegistryError):
    """The tag exists with different content; tags are immutable."""


class VersionNotFoundError(RegistryError):
    """No such tag in the registry."""


@dataclass(frozen=True)
class RegistrySettings:
    repo_url: str
    remote_url: str
    work_dir: Path
    branch: str = "main"
    ssh_user: str | None = None
    ssh_password: str | None = field(default=None, repr=False)
    key_file: str | None = None
    known_hosts: str | None = None
    check_host_keys: bool = True

    def __post_init__(self):
        for name in ("repo_url", "remote_url"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise RegistryError(f"dvc_registry connection: extra.{name} is required")
            if value.startswith("-") or any(c in value for c in "\0\n\r\"'"):
                raise RegistryError(f"dvc_registry connection: extra.{name} {value!r} is not a valid URL or path")
        if not (self.repo_url.startswith(("ssh://", "file://", "https://", "http://", "/")) or _SCP_LIKE.match(self.repo_url)):
            raise RegistryError(
                f"dvc_registry connection: extra.repo_url {self.repo_url!r} must be an absolute path, "
                "ssh://, file://, https:// or user@host:path"
            )
        if not (self.remote_url.startswith("/") or _SSH_URL.match(self.remote_url)):
            raise RegistryError(
                f"dvc_registry connection: extra.remote_url {self.remote_url!r} must be ssh://[user@]host[:port]/path "
                "or an absolute local path"
            )
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,99}", self.branch) or ".." in self.branch:
            raise RegistryError(f"dvc_registry connection: extra.branch {self.branch!r} is not a valid branch name")
        for name in ("key_file", "known_hosts"):
            value = getattr(self, name)
            if value is not None and (not os.path.isabs(value) or "\0" in value):
                raise RegistryError(f"dvc_registry connection: extra.{name} must be an absolute path")


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


@dataclass(frozen=True)
class VersionInfo:
    project: str
    version: str
    tag: str
    md5: str
    bytes: int
    rows: int | None
    commit: str


def dvc_file_text(output: str, md5: str, size: int) -> str:
    """The .dvc file exactly as ``dvc add`` (DVC 3) writes it for one file."""
    return f"outs:\n- md5: {md5}\n  size: {size}\n  hash: md5\n  path: {output}\n"


def gitignore_with(path: Path, output: str) -> str:
    """The project's .gitignore with the data file ignored, as ``dvc add`` leaves it."""
    line = f"/{output}"
    text = path.read_text() if path.exists() else ""
    if line in text.splitlines():
        return text
    return text + ("" if not text or text.endswith("\n") else "\n") + line + "\n"


def parse_dvc_file(text: str) -> tuple[str, int]:
    """(md5, size) of the single output in a .dvc file."""
    import yaml

    data = yaml.safe_load(text) or {}
    outs = data.get("outs") or []
    if len(outs) != 1 or "md5" not in outs[0]:
        raise RegistryError("unexpected .dvc file: expected exactly one output with an md5")
    return str(outs[0]["md5"]), int(outs[0].get("size", -1))


class RegistryClient:
    """Working clone + DVC cache of one registry, kept warm in ``work_dir`` between runs."""

    def __init__(self, settings: RegistrySettings):
        self.settings = settings
        key = hashlib.sha256(f"{settings.repo_url}\0{settings.branch}".encode()).hexdigest()[:16]
        self.work_dir = Path(settings.work_dir)
        self.clone_dir = self.work_dir / "clones" / key
        self.lock_path = self.work_dir / "clones" / f"{key}.lock"
        self.cache_dir = self.work_dir / "dvc-cache"
        self.staging_dir = self.work_dir / "staging"
        for d in (self.clone_dir.parent, self.cache_dir, self.staging_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.runner = Runner(self.clone_dir, self._env(), secrets=[settings.ssh_password or ""])

    # ---------------------------------------------------------------- environment
    def _env(self) -> dict[str, str]:
        s = self.settings
        env = base_env()
        ssh = ["ssh", "-o", "ConnectTimeout=20", "-o", "ServerAliveInterval=15"]
        if s.key_file:
            ssh += ["-i", s.key_file, "-o", "IdentitiesOnly=yes"]
        if s.ssh_user:
            ssh += ["-l", s.ssh_user]
        if s.check_host_keys:
            ssh += ["-o", "StrictHostKeyChecking=yes"]
            if s.known_hosts:
                ssh += ["-o", f"UserKnownHostsFile={s.known_hosts}"]
        else:
            ssh += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        if s.ssh_password:
            askpass = self.work_dir / "askpass.sh"
            if not askpass.exists():
                tmp = askpass.with_name(f".askpass.{uuid.uuid4().hex}")
                tmp.write_text('#!/bin/sh\nexec printf \'%s\\n\' "$DATASET_REGISTRY_SSH_PASSWORD"\n')
                tmp.chmod(0o700)
                os.replace(tmp, askpass)
            env.update(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=env.get("DISPLAY", ":0"))
            env[dvc_cli.ENV_PASSWORD] = s.ssh_password
            ssh += ["-o", "NumberOfPasswordPrompts=1"]
        else:
            ssh += ["-o", "BatchMode=yes"]
        env["GIT_SSH_COMMAND"] = shlex.join(ssh)
        env["GIT_SSH_VARIANT"] = "ssh"
        if s.ssh_user:
            env[dvc_cli.ENV_USER] = s.ssh_user
        if s.key_file:
            env[dvc_cli.ENV_KEY_FILE] = s.key_file
        if s.known_hosts:
            env[dvc_cli.ENV_KNOWN_HOSTS] = s.known_hosts
        if not s.check_host_keys:
            env[dvc_cli.ENV_NO_HOST_KEY_CHECK] = "1"
        return env

    def _git(self, *args: str, check: bool = True, what: str | None = None) -> str:
        return self.runner.git("-c", "protocol.ext.allow=never", *args, check=check, what=what)

    # ---------------------------------------------------------------- clone upkeep
    @contextmanager
    def locked(self) -> Iterator[None]:
        """One publisher/puller per working clone on this worker (flock dies with the process)."""
        with open(self.lock_path, "a+") as handle:
            deadline = time.monotonic() + LOCK_TIMEOUT
            waited = False
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RegistryError(f"timed out waiting for the working clone lock {self.lock_path}") from None
                    if not waited:
                        log.info("waiting for another task using the working clone %s", self.clone_dir)
                        waited = True
                    time.sleep(0.2)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _fresh_clone(self) -> None:
        if self.clone_dir.exists():
            shutil.rmtree(self.clone_dir)
        self.clone_dir.mkdir(parents=True)
        self._git("init", "-q", f"--initial-branch={self.settings.branch}")
        self._git("config", "remote.origin.url", self.settings.repo_url)

    def _clone_is_healthy(self) -> bool:
        if not (self.clone_dir / ".git").is_dir():
            return False
        try:
            url = self._git("config", "--get", "remote.origin.url")
            self._git("rev-parse", "--git-dir")
        except CommandError:
            return False
        return url == self.settings.repo_url

    def sync(self) -> bool:
        """Bring the working clone to the registry's current state. Returns whether the branch exists.

        A clone left dirty or locked by a killed run is repaired here (we hold the flock, so a
        leftover ``index.lock`` cannot belong to a live process of this worker).
        """
        if not self._clone_is_healthy():
            log.info("creating working clone of the registry in %s", self.clone_dir)
            self._fresh_clone()
        for stale in (self.clone_dir / ".git" / "index.lock", self.clone_dir / ".git" / "HEAD.lock"):
            if stale.exists():
                log.warning("removing stale %s left by an interrupted run", stale)
                stale.unlink()
        self.fetch()
        branch = self.settings.branch
        exists = bool(self._git("rev-parse", "-q", "--verify", f"refs/remotes/origin/{branch}^{{commit}}", check=False))
        if exists:
            self._git("checkout", "-q", "-f", "-B", branch, f"refs/remotes/origin/{branch}")
            self._git("clean", "-q", "-f", "-d")
        return exists

    def fetch(self) -> None:
        try:
            self._git(
                "fetch", "-q", "--prune", "--force", "--no-write-fetch-head", "origin",
                "+refs/heads/*:refs/remotes/origin/*", f"+refs/tags/*:{TAG_NAMESPACE}/*",
                what=f"git fetch from the registry repository {self.settings.repo_url}",
            )
        except CommandError as exc:
            raise RegistryError(str(exc)) from None

    def _write_local_dvc_config(self) -> None:
        """Run-time DVC settings, git-ignored: remote URL and a worker-local shared cache. No secrets."""
        text = (
            "[cache]\n"
            f'    dir = "{self.cache_dir}"\n'
            '    type = "reflink,hardlink,copy"\n'
            f"['remote \"{DVC_REMOTE}\"']\n"
            f'    url = "{self.settings.remote_url}"\n'
        )
        path = self.clone_dir / ".dvc" / "config.local"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)

    def _initialize_registry(self) -> None:
        """First publish into an empty repository: DVC set up, one commit (not pushed on its own)."""
        log.info("registry repository %s is empty: initializing it for DVC", self.settings.repo_url)
        self._fresh_clone()
        self.runner.dvc("init", "-q", what="dvc init")
        (self.clone_dir / ".dvc" / "config").write_text(
            "[core]\n"
            f"    remote = {DVC_REMOTE}\n"
            f"['remote \"{DVC_REMOTE}\"']\n"
            f"    url = {self.settings.remote_url}\n"
        )
        (self.clone_dir / "README.md").write_text(
            "# Dataset registry\n\nOne folder per project (`<project>/<file>.dvc`), one tag per version "
            "(`<project>/<version>`).\nTo get a version: `git checkout <project>/<version> && dvc pull`.\n"
        )
        self._git("add", "-A")
        self._git(*COMMITTER, "commit", "-q", "-m", "Initialize dataset registry")

    def _prepare(self) -> None:
        if not self.sync():
            self._initialize_registry()
        if not (self.clone_dir / ".dvc").is_dir():
            raise RegistryError(
                f"registry repository {self.settings.repo_url} (branch {self.settings.branch}) has commits "
                "but no .dvc folder: it is not a DVC repository; point extra.repo_url at a dataset registry"
            )
        self._write_local_dvc_config()

    # ---------------------------------------------------------------- reading
    def _remote_tag_ref(self, tag: str) -> str:
        return f"{TAG_NAMESPACE}/{tag}"

    def _tag_info(self, project: str, output: str, version: str) -> VersionInfo | None:
        tag = tag_name(project, version)
        ref = self._remote_tag_ref(tag)
        commit = self._git("rev-parse", "-q", "--verify", f"{ref}^{{commit}}", check=False)
        if not commit:
            return None
        dvc_path = f"{project}/{output}.dvc"
        try:
            text = self._git("show", f"{commit}:{dvc_path}")
        except CommandError:
            raise RegistryError(f"tag {tag} exists but has no {dvc_path}: was the project's output file renamed?") from None
        md5, size = parse_dvc_file(text)
        message = self._git("for-each-ref", "--format=%(contents)", ref)
        rows = None
        match = re.search(r"^rows: (\d+)$", message, re.M)
        if match:
            rows = int(match.group(1))
        return VersionInfo(project, version, tag, md5, size, rows, commit)

    def list_versions(self, project: str) -> list[str]:
        """Versions of a project on the registry remote, newest first (by tag creation time)."""
        validate_project(project)
        out = self._git("for-each-ref", "--sort=-creatordate", "--format=%(refname)", f"{TAG_NAMESPACE}/{project}/")
        prefix = f"{TAG_NAMESPACE}/{project}/"
        return [line[len(prefix):] for line in out.splitlines() if line.startswith(prefix)]

    # ---------------------------------------------------------------- pulling
    def resolve_version(self, project: str, output: str, version: str | None) -> VersionInfo:
        """The tag's metadata; ``version=None`` means the newest. Unknown -> lists what exists."""
        with self.locked():
            if not self.sync():
                raise VersionNotFoundError(f"the registry {self.settings.repo_url} is empty: nothing published yet")
            return self._resolve(project, output, version)

    def _resolve(self, project: str, output: str, version: str | None) -> VersionInfo:
        available = self.list_versions(project)
        if version is None:
            if not available:
                raise VersionNotFoundError(f"project {project} has no published version in the registry yet")
            version = available[0]
        info = self._tag_info(project, output, validate_version(version))
        if info is None:
            newest = ", ".join(available[:10]) or "none"
            raise VersionNotFoundError(f"version {version!r} of project {project} does not exist (tag {project}/{version}); "
                                       f"newest available: {newest}")
        return info

    def _cache_object(self, md5: str) -> Path:
        return self.cache_dir / "files" / "md5" / md5[:2] / md5[2:]

    def pull(self, project: str, output: str, version: str | None, dest: Path) -> tuple[VersionInfo, Path, bool]:
        """Copy the version's file to ``dest`` (a file path), verified against the .dvc md5.

        Reuses the worker's DVC cache: a version already in the cache is not downloaded again.
        Returns (info, path, downloaded). On failure no file is left at ``dest``.
        """
        validate_project(project)
        validate_output(output)
        dest = Path(dest)
        partial = dest.with_name(dest.name + ".partial")
        with self.locked():
            if not self.sync():
                raise VersionNotFoundError(f"the registry {self.settings.repo_url} is empty: nothing published yet")
            info = self._resolve(project, output, version)
            obj = self._cache_object(info.md5)
            downloaded = False
            if not obj.is_file():
                self._git("checkout", "-q", "-f", "--detach", info.commit)
                self._write_local_dvc_config()
                log.info("fetching %s (%s) from the DVC remote %s", info.tag, info.md5, self.settings.remote_url)
                try:
                    self.runner.dvc("fetch", "-q", "-r", DVC_REMOTE, f"{project}/{output}.dvc",
                                    what=f"dvc fetch from the DVC remote {self.settings.remote_url}")
                except CommandError as exc:
                    raise RegistryError(f"cannot get {info.tag} (md5 {info.md5}): {exc}") from None
                downloaded = True
                if not obj.is_file():
                    raise RegistryError(f"cannot get {info.tag}: object {info.md5} is missing on the DVC remote "
                                        f"{self.settings.remote_url}")
            else:
                log.info("%s (%s) found in the local DVC cache: no download", info.tag, info.md5)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            digest = hashlib.md5()
            with open(obj, "rb") as src, open(partial, "wb") as out:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != info.md5:
                obj.chmod(0o644)
                obj.unlink(missing_ok=True)  # a corrupt cache object: the next pull fetches it again
                raise RegistryError(f"{info.tag}: the data has md5 {digest.hexdigest()}, the .dvc file says {info.md5} "
                                    "(corrupt local cache object removed; rerun to fetch it again)")
            os.replace(partial, dest)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return info, dest, downloaded

    # ---------------------------------------------------------------- publishing
    def staging_file(self, project: str, output: str) -> Path:
        """A fresh path on the clone's filesystem, so placing the export is a rename, not a copy."""
        validate_project(project)
        validate_output(output)
        return self.staging_dir / f"{project}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{output}"

    def publish(self, project: str, output: str, version: str, data_file: Path, md5: str, rows: int) -> PublishResult:
        validate_project(project)
        validate_output(output)
        validate_version(version)
        tag = tag_name(project, version)
        data_file = Path(data_file)
        size = data_file.stat().st_size
        with self.locked():
            self._prepare()
            existing = self._tag_info(project, output, version)
            if existing is not None:
                return self._existing(existing, md5, rows, size)

            rel = f"{project}/{output}"
            self._add_to_cache(data_file, md5)
            dvc_text = dvc_file_text(output, md5, size)
            gitignore = gitignore_with(self.clone_dir / project / ".gitignore", output)
            (self.clone_dir / project).mkdir(exist_ok=True)
            (self.clone_dir / f"{rel}.dvc").write_text(dvc_text)
            self._push_data(rel, md5, size)
            return self._commit_and_push(project, output, version, tag, md5, rows, size, dvc_text, gitignore)

    def _add_to_cache(self, data_file: Path, md5: str) -> None:
        """What ``dvc add`` does, without hashing the file a second time: the export already
        computed the md5 while writing. The file is renamed into the content-addressed cache
        (same filesystem: the staging folder sits next to the cache), read-only like DVC's own."""
        obj = self._cache_object(md5)
        if obj.is_file():
            data_file.unlink(missing_ok=True)  # the same bytes are cached already
            return
        obj.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(data_file, obj)
        except OSError:  # another filesystem: copy beside the object, then rename (never a partial object)
            tmp = obj.with_name(f".{obj.name}.{uuid.uuid4().hex}.tmp")
            shutil.copyfile(data_file, tmp)
            os.replace(tmp, obj)
            data_file.unlink(missing_ok=True)
        obj.chmod(0o444)
        log.info("cached %s as DVC object %s", data_file.name, md5)

    def _existing(self, info: VersionInfo, md5: str, rows: int, size: int) -> PublishResult:
        if info.md5 != md5:
            raise VersionConflictError(
                f"tag {info.tag} already exists with different content: the registry has md5 {info.md5}, "
                f"this run produced md5 {md5}. Tags are immutable: publish under a new version name "
                "(trigger param 'version'), or check why the same window gave different data."
            )
        log.info("tag %s already exists with the same content (md5 %s): nothing to do", info.tag, md5)
        return PublishResult(info.project, info.version, info.tag, md5, rows, size, info.commit, created=False)

    def _push_data(self, rel: str, md5: str, size: int) -> None:
        """Push, then ask the remote itself whether the object is there with the right size."""
        remote = self.settings.remote_url
        log.info("dvc push %s to %s", rel, remote)
        try:
            self.runner.dvc("push", "-q", "-r", DVC_REMOTE, f"{rel}.dvc", what=f"dvc push to the DVC remote {remote}")
        except CommandError as exc:
            raise RegistryError(str(exc)) from None
        check = self.runner.run(
            [sys.executable, "-m", "dataset_registry.dvc_cli", "verify-remote", DVC_REMOTE, md5, str(size)], check=False,
        )
        if check.returncode != 0:
            detail = (check.stdout + check.stderr).strip().splitlines()
            raise RegistryError(
                f"after dvc push, the DVC remote {remote} does not hold {rel} (md5 {md5}): "
                f"{detail[-1] if detail else 'verification failed'}. Was the local DVC cache file removed? "
                "Nothing was committed or tagged; rerun the task."
            )
        log.info("verified on the DVC remote: %s (md5 %s, %d bytes)", rel, md5, size)

    def _commit_and_push(self, project, output, version, tag, md5, rows, size, dvc_text, gitignore) -> PublishResult:
        branch = self.settings.branch
        rel = f"{project}/{output}"
        message = f"{project}: version {version}\n\nmd5: {md5}\nrows: {rows}\nbytes: {size}\n"
        for attempt in range(1, PUSH_ATTEMPTS + 1):
            (self.clone_dir / project).mkdir(exist_ok=True)
            (self.clone_dir / f"{rel}.dvc").write_text(dvc_text)
            (self.clone_dir / project / ".gitignore").write_text(gitignore)
            self._git("add", "--", f"{rel}.dvc", f"{project}/.gitignore")
            if self._staged_changes():
                self._git(*COMMITTER, "commit", "-q", "-m", f"{project}: version {version} ({rows} rows, md5 {md5})")
            commit = self._git("rev-parse", "HEAD")
            base = self._origin_tip()
            self._git(*COMMITTER, "tag", "-f", "-a", "-m", message, tag, commit)
            try:
                self._git(
                    "push", "-q", "--atomic", "origin",
                    f"refs/heads/{branch}:refs/heads/{branch}", f"refs/tags/{tag}:refs/tags/{tag}",
                    what=f"git push to the registry repository {self.settings.repo_url}",
                )
                log.info("published %s at commit %s", tag, commit[:12])
                self._git("update-ref", self._remote_tag_ref(tag), f"refs/tags/{tag}")
                return PublishResult(project, version, tag, md5, rows, size, commit, created=True)
            except CommandError as exc:
                self.fetch()  # learn why: branch moved, tag taken, or remote unreachable (raises)
                existing = self._tag_info(project, output, version)
                if existing is not None:
                    return self._existing(existing, md5, rows, size)
                if self._origin_tip() == base:
                    raise RegistryError(f"could not publish {tag}: {exc}") from None
                if attempt == PUSH_ATTEMPTS:
                    raise RegistryError(f"could not publish {tag} after {attempt} attempts: {exc}") from None
                delay = min(3.0, 0.1 * 2 ** min(attempt, 5)) * random.uniform(0.5, 1.5)
                log.info("branch %s moved (another publish landed); replaying on the new tip in %.1f s", branch, delay)
                time.sleep(delay)
                self._git("checkout", "-q", "-f", "-B", branch, f"refs/remotes/origin/{branch}")
        raise AssertionError("unreachable")

    def _origin_tip(self) -> str:
        return self._git("rev-parse", "-q", "--verify", f"refs/remotes/origin/{self.settings.branch}", check=False)

    def _staged_changes(self) -> bool:
        return self.runner.run(["git", "diff", "--cached", "--quiet"], check=False).returncode == 1
