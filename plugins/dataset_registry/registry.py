"""The dataset registry: one git repository (DVC files, one tag per version) + one DVC remote.

The publish protocol (what makes a tag trustworthy):
1. Under a per-worker file lock, the working clone is reused: stale git locks cleared (only our
   processes use the clone, and we hold the flock), fetch, hard reset, re-created if broken.
   Only a repository with no refs at all is new; a missing branch in a non-empty one is an error.
2. The export (hashed while it was written) replaces whatever the DVC cache holds under that md5:
   the fresh bytes always win over a possibly corrupt cached copy.
3. If the tag already exists on the registry remote, compare md5s: different bytes ->
   VersionConflictError naming both md5s; same bytes -> make sure the remote holds them (step 4),
   then done without a commit (this is how a lost remote object is restored).
4. ``ensure-remote``: the object's CONTENT on the DVC remote is hashed (``md5sum`` on the SSH host,
   else read back); missing or wrong -> the fresh bytes are uploaded to a temp name and renamed over
   it, then hashed again. Nothing is committed before the remote content is proven.
5. Commit ``<project>/<output>.dvc`` on the fetched tip with plumbing (private index, no checkout;
   no commit when it is unchanged), annotated tag carrying a unique publish id, then ONE
   ``git push --atomic`` of branch + tag. If the branch moved, only the branch and the project's
   tags are fetched, the commit is rebuilt on the new tip and pushed again, with full-jitter
   exponential back-off, until ``publish_timeout``; if the tag appeared meanwhile, step 3 decides,
   and only the run whose publish id is in the tag reports ``created``.
Tags are never deleted, moved or force-pushed on the remote.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import random
import re
import shlex
import shutil
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from dataset_registry import dvc_cli
from dataset_registry.disk import disk_problem
from dataset_registry.gitcmd import CommandError, Runner, base_env, redact
from dataset_registry.names import InvalidNameError, tag_name, validate_output, validate_project, validate_version

log = logging.getLogger(__name__)

DVC_REMOTE = "storage"
TAG_NAMESPACE = "refs/registry-tags"  # remote tags are fetched here, so stale local tags never mislead
PENDING_NAMESPACE = "refs/registry-pending"  # on the registry: versions whose data is verified, waiting to land
PENDING_LOCAL = "refs/registry-pending-fetched"  # where a worker's clone keeps what it fetched of them
MAX_BATCH = 200  # proposals landed by one push at most
DEFAULT_PUBLISH_TIMEOUT = 900.0  # seconds a push may keep losing races to other publishers
BACKOFF_BASE = 0.05  # full-jitter exponential back-off: uniform(0, min(cap, base * 2**attempt))
BACKOFF_CAP = 5.0
LOCK_TIMEOUT = 3600.0
STALE_STAGING_SECONDS = 86400  # exports left by killed runs are reaped after a day
COMMITTER = ["-c", "user.name=Dataset Registry", "-c", "user.email=dataset-registry@localhost"]
# Answers git's/ssh's prompts from variables set only for the child process: the login for a
# "Username for 'https://…'" prompt, the password for everything else. No secret is in the file.
ENV_GIT_USER = "DATASET_REGISTRY_GIT_USER"
ENV_GIT_PASSWORD = "DATASET_REGISTRY_GIT_PASSWORD"
ASKPASS_SCRIPT = f"""#!/bin/sh
case "$1" in
  [Uu]sername*) exec printf '%s\\n' "${ENV_GIT_USER}" ;;
  *) exec printf '%s\\n' "${ENV_GIT_PASSWORD}" ;;
esac
"""


def split_url_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``https://user:token@host/x`` -> (``https://user@host/x``, user, token).

    A token in the URL would otherwise sit in the clone's ``.git/config`` and in every error message;
    it is taken out and handed to git through the askpass program instead, like a connection password.
    """
    from urllib.parse import unquote

    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/@]*)@", url)
    if not match or ":" not in match.group(2):
        return url, None, None
    user, _, password = match.group(2).partition(":")
    return f"{match.group(1)}{user}@{url[match.end():]}", unquote(user) or None, unquote(password) or None
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
    publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT

    def __post_init__(self):
        for name in ("repo_url", "remote_url"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise RegistryError(f"dvc_registry connection: extra.{name} is required")
            if value.startswith("-") or any(c in value for c in "\0\n\r\"'"):
                raise RegistryError(f"dvc_registry connection: extra.{name} {split_url_credentials(value)[0]!r} "
                                    "is not a valid URL or path")
        if not (self.repo_url.startswith(("ssh://", "file://", "https://", "http://", "/")) or _SCP_LIKE.match(self.repo_url)):
            raise RegistryError(
                f"dvc_registry connection: extra.repo_url {split_url_credentials(self.repo_url)[0]!r} must be an "
                "absolute path, "
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
        if isinstance(self.publish_timeout, bool) or not isinstance(self.publish_timeout, (int, float)) \
                or not 1 <= self.publish_timeout <= 86400:
            raise RegistryError(f"dvc_registry connection: extra.publish_timeout {self.publish_timeout!r} must be a "
                                "number of seconds from 1 to 86400")
        work_dir = str(self.work_dir)
        if not os.path.isabs(work_dir) or "\0" in work_dir or "\n" in work_dir:
            raise RegistryError(
                f"dvc_registry connection: work_dir {work_dir[:200]!r} must be an absolute path (the worker's "
                "folder for working clones and the DVC cache); set extra.work_dir or DATASET_WORK_DIR to one"
            )


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
    publish_id: str | None = None  # from the tag message: which run created the tag


def dvc_file_text(output: str, md5: str, size: int) -> str:
    """The .dvc file exactly as ``dvc add`` (DVC 3) writes it for one file."""
    return f"outs:\n- md5: {md5}\n  size: {size}\n  hash: md5\n  path: {output}\n"


def gitignore_with(text: str, output: str) -> str:
    """The project's .gitignore (its current ``text``) with the data file ignored, as ``dvc add`` leaves it."""
    line = f"/{output}"
    if line in text.splitlines():
        return text
    return text + ("" if not text or text.endswith("\n") else "\n") + line + "\n"


def local_disk_error(exc: OSError, path: Path, doing: str) -> RegistryError | OSError:
    message = disk_problem(exc, path, doing)
    return RegistryError(message) if message else exc


def _last_line(proc) -> str:
    lines = ((proc.stdout or "") + (proc.stderr or "")).strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def _message_field(message: str, name: str) -> str | None:
    """A ``name: value`` line of a tag message written by ``publish``."""
    match = re.search(rf"^{re.escape(name)}: (\S+)$", message, re.M)
    return match.group(1) if match else None


MD5_HEX = re.compile(r"[0-9a-f]{32}")


def parse_dvc_file(text: str) -> tuple[str, int]:
    """(md5, size) of the single output in a .dvc file."""
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise RegistryError(f"unreadable .dvc file: {exc}") from None
    outs = data.get("outs") if isinstance(data, dict) else None
    if not isinstance(outs, list) or len(outs) != 1 or not isinstance(outs[0], dict):
        raise RegistryError("unexpected .dvc file: expected exactly one output with an md5")
    md5, size = outs[0].get("md5"), outs[0].get("size", -1)
    # Anyone who can push to the registry writes these values; they become file paths in the cache.
    if not isinstance(md5, str) or not MD5_HEX.fullmatch(md5):
        raise RegistryError(f"unexpected .dvc file: md5 {str(md5)[:80]!r} is not 32 lowercase hex digits")
    if isinstance(size, bool) or not isinstance(size, int) or size < -1:
        raise RegistryError(f"unexpected .dvc file: size {str(size)[:80]!r} is not a whole number of bytes")
    return md5, size


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
        # The repository URL as it is written to .git/config and shown in messages: no token in it.
        self.repo_url, url_user, url_password = split_url_credentials(settings.repo_url)
        self._git_user = settings.ssh_user or url_user
        self._git_password = settings.ssh_password or url_password
        self.runner = Runner(self.clone_dir, self._env(), secrets=[settings.ssh_password or "", url_password or ""])

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
        if self._git_password:
            askpass = self.work_dir / "askpass-v3.sh"  # v3: user-name prompts get the login, from its own variable
            if not askpass.exists():
                tmp = askpass.with_name(f".askpass.{uuid.uuid4().hex}")
                tmp.write_text(ASKPASS_SCRIPT)
                tmp.chmod(0o700)
                os.replace(tmp, askpass)
            env.update(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=env.get("DISPLAY", ":0"))
            env[ENV_GIT_USER] = self._git_user or ""
            env[ENV_GIT_PASSWORD] = self._git_password
        if s.ssh_password:
            env[dvc_cli.ENV_PASSWORD] = s.ssh_password
        ssh += ["-o", "NumberOfPasswordPrompts=1"] if self._git_password else ["-o", "BatchMode=yes"]
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

    def _git(self, *args: str, check: bool = True, what: str | None = None, input_text: str | None = None,
             env: dict[str, str] | None = None) -> str:
        return self.runner.git("-c", "protocol.ext.allow=never", *args, check=check, what=what,
                               input_text=input_text, env=env)

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
        self._git("config", "remote.origin.url", self.repo_url)

    def _clone_is_healthy(self) -> bool:
        if not (self.clone_dir / ".git").is_dir():
            return False
        try:
            url = self._git("config", "--get", "remote.origin.url")
            self._git("rev-parse", "--git-dir")
        except CommandError:
            return False
        return url == self.repo_url

    def _clear_stale_locks(self) -> None:
        """Remove every git lock file in the clone (index, HEAD, config, packed-refs, any ref under
        refs/, including the private tag namespace). Only this worker's tasks use the clone and we
        hold its flock, so a lock can only be left by a killed process."""
        git_dir = self.clone_dir / ".git"
        candidates = [*git_dir.glob("*.lock"), *(git_dir / "refs").rglob("*.lock")]
        for stale in candidates:
            log.warning("removing stale git lock %s left by an interrupted run", stale)
            stale.unlink(missing_ok=True)

    def sync(self) -> bool:
        """Bring the working clone to the registry's current state. Returns whether the branch exists
        (False only for an empty repository: one with no refs at all).

        A clone left dirty or locked by a killed run is repaired here; one that still fails to fetch
        or check out after that is re-created from scratch once.
        """
        try:
            return self._sync_once()
        except CommandError as exc:  # fetch errors (network, auth) are RegistryErrors and pass through
            log.warning("working clone %s is damaged (%s): re-creating it", self.clone_dir, exc)
            self._fresh_clone()
            try:
                return self._sync_once()
            except CommandError as again:
                raise RegistryError(str(again)) from None

    def _sync_once(self) -> bool:
        if not self._clone_is_healthy():
            log.info("creating working clone of the registry in %s", self.clone_dir)
            self._fresh_clone()
        self._clear_stale_locks()
        self.fetch()
        branch = self.settings.branch
        exists = bool(self._git("rev-parse", "-q", "--verify", f"refs/remotes/origin/{branch}^{{commit}}", check=False))
        if exists:
            self._git("checkout", "-q", "-f", "-B", branch, f"refs/remotes/origin/{branch}")
            self._git("clean", "-q", "-f", "-d")
            return True
        branches = self._git("for-each-ref", "--format=%(refname:lstrip=3)", "refs/remotes/origin/").split()
        tags = self._git("for-each-ref", "--count=1", "--format=%(refname)", f"{TAG_NAMESPACE}/")
        if branches or tags:
            raise RegistryError(
                f"the registry repository {self.repo_url} has no branch {branch!r} but is not empty "
                f"(branches: {', '.join(sorted(branches)[:20]) or 'none'}; tags: {'yes' if tags else 'none'}). "
                "Only a repository without any refs is initialized; set extra.branch to an existing branch, "
                "or restore the branch on the registry (tags keep their commits)."
            )
        return False

    def fetch(self) -> None:
        try:
            self._git(
                "fetch", "-q", "--prune", "--force", "--no-write-fetch-head", "origin",
                "+refs/heads/*:refs/remotes/origin/*", f"+refs/tags/*:{TAG_NAMESPACE}/*",
                what=f"git fetch from the registry repository {self.repo_url}",
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
        log.info("registry repository %s is empty: initializing it for DVC", self.repo_url)
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
                f"registry repository {self.repo_url} (branch {self.settings.branch}) has commits "
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
        rows = _message_field(message, "rows")
        return VersionInfo(project, version, tag, md5, size, int(rows) if rows and rows.isdigit() else None, commit,
                           publish_id=_message_field(message, "publish-id"))

    def list_versions(self, project: str) -> list[str]:
        """Versions of a project on the registry remote, newest first.

        "Newest" is the order in which versions landed: first by the position of the tagged commit
        on the branch (a later commit is newer; the branch is the one serialization point all
        workers agree on), then, for versions on the same commit (unchanged data), by the
        microsecond ``created`` time in the tag message, then the tag's own date, then the name.
        Tags whose commit is not on the branch (made by hand) come after, by date.
        """
        validate_project(project)
        prefix = f"{TAG_NAMESPACE}/{project}/"
        out = self._git("for-each-ref", "--format=%(refname)%00%(*objectname)%00%(objectname)%00%(creatordate:unix)"
                        "%00%(contents)%01", prefix)
        branch = self._git("rev-list", "--first-parent", f"refs/remotes/origin/{self.settings.branch}", check=False)
        position = {sha: i for i, sha in enumerate(reversed(branch.split()))}  # oldest commit = 0
        keyed = []
        for record in out.split("\x01"):
            fields = record.strip("\n").split("\x00")
            if len(fields) != 5 or not fields[0].startswith(prefix):
                continue
            ref, peeled, direct, date, message = fields
            commit = peeled or direct
            created = _message_field(message, "created") or ""
            keyed.append(((position.get(commit, -1), created, int(date or 0), ref[len(prefix):]), ref[len(prefix):]))
        return [name for _, name in sorted(keyed, reverse=True)]

    # ---------------------------------------------------------------- pulling
    def resolve_version(self, project: str, output: str, version: str | None) -> VersionInfo:
        """The tag's metadata; ``version=None`` means the newest. Unknown -> lists what exists."""
        with self.locked():
            if not self.sync():
                raise VersionNotFoundError(f"the registry {self.repo_url} is empty: nothing published yet")
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
        if not MD5_HEX.fullmatch(md5):  # never let a value from the registry become an arbitrary path
            raise RegistryError(f"refusing md5 {md5[:80]!r}: not 32 lowercase hex digits")
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
                raise VersionNotFoundError(f"the registry {self.repo_url} is empty: nothing published yet")
            info = self._resolve(project, output, version)
            obj = self._cache_object(info.md5)
            downloaded = False
            if not obj.is_file():
                self._write_local_dvc_config()
                log.info("fetching %s (%s) from the DVC remote %s", info.tag, info.md5, self.settings.remote_url)
                check = self._dvc_tool("fetch-object", DVC_REMOTE, info.md5, str(obj))
                if check.returncode != 0 or not obj.is_file():
                    raise RegistryError(f"cannot get {info.tag} (md5 {info.md5}) from the DVC remote "
                                        f"{self.settings.remote_url}: {_last_line(check)}")
                downloaded = True
            else:
                log.info("%s (%s) found in the local DVC cache: no download", info.tag, info.md5)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
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
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise local_disk_error(exc, dest, f"copying {info.tag} to") from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return info, dest, downloaded

    # ---------------------------------------------------------------- publishing
    def staging_file(self, project: str, output: str) -> Path:
        """A fresh path on the clone's filesystem, so placing the export is a rename, not a copy.
        Exports that killed runs left behind (older than a day) are removed first."""
        validate_project(project)
        validate_output(output)
        self._reap_stale_staging()
        return self.staging_dir / f"{project}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{output}"

    def _reap_stale_staging(self) -> None:
        cutoff = time.time() - STALE_STAGING_SECONDS
        for stale in self.staging_dir.iterdir():
            try:
                if stale.is_file() and stale.stat().st_mtime < cutoff:
                    stale.unlink()
                    log.info("removed stale staging file %s (left by a killed run)", stale)
            except FileNotFoundError:
                pass  # another task reaped it first

    def _dvc_tool(self, *args: str):
        """Our ``dvc_cli`` sub-commands (object-level work on the DVC remote); output redacted."""
        proc = self.runner.run([sys.executable, "-m", "dataset_registry.dvc_cli", *args], check=False)
        proc.stdout = redact(proc.stdout or "", self.runner.secrets)
        proc.stderr = redact(proc.stderr or "", self.runner.secrets)
        return proc

    def publish(self, project: str, output: str, version: str, data_file: Path, md5: str, rows: int,
                timeout: float | None = None) -> PublishResult:
        """Publish ``data_file`` (whose md5 the caller computed while writing it) as ``<project>/<version>``.

        ``timeout``: how long the push may keep losing races to other publishers (default: the
        connection's ``publish_timeout``); data upload and verification are not counted.
        """
        validate_project(project)
        validate_output(output)
        validate_version(version)
        tag = tag_name(project, version)
        data_file = Path(data_file)
        size = data_file.stat().st_size
        rel = f"{project}/{output}"
        with self.locked():
            self._prepare()
            existing = self._tag_info(project, output, version)
            if existing is not None and existing.md5 != md5:
                raise self._conflict(existing, md5)
            self._add_to_cache(data_file, md5)
            self._push_data(rel, md5, size)
            if existing is not None:
                log.info("tag %s already exists with the same content (md5 %s), verified on the remote: "
                         "nothing to do", tag, md5)
                return PublishResult(project, version, tag, md5, rows, size, existing.commit, created=False)
            return self._commit_and_push(project, output, version, tag, md5, rows, size, timeout)

    def _add_to_cache(self, data_file: Path, md5: str) -> None:
        """What ``dvc add`` does, without hashing the file a second time: the export computed the md5
        while writing. The fresh file always REPLACES whatever the cache holds under that name (a
        cached copy may have been damaged since; the fresh bytes are the ones we hashed). Renamed
        into the content-addressed cache (same filesystem: staging sits next to the cache),
        read-only like DVC's own."""
        obj = self._cache_object(md5)
        try:
            obj.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(data_file, obj)
            except OSError as exc:  # another filesystem: copy beside the object, then rename
                if exc.errno != errno.EXDEV:
                    raise
                tmp = obj.with_name(f".{obj.name}.{uuid.uuid4().hex}.tmp")
                try:
                    shutil.copyfile(data_file, tmp)
                    os.replace(tmp, obj)
                finally:
                    tmp.unlink(missing_ok=True)
                data_file.unlink(missing_ok=True)
            obj.chmod(0o444)
        except OSError as exc:
            raise local_disk_error(exc, obj, "placing the export in the DVC cache at") from None
        log.info("cached %s as DVC object %s", data_file.name, md5)

    @staticmethod
    def _conflict(info: VersionInfo, md5: str) -> VersionConflictError:
        return VersionConflictError(
            f"tag {info.tag} already exists with different content: the registry has md5 {info.md5}, "
            f"this run produced md5 {md5}. Tags are immutable: publish under a new version name "
            "(trigger param 'version'), or check why the same window gave different data."
        )

    def _push_data(self, rel: str, md5: str, size: int) -> None:
        """Make the DVC remote hold exactly the cached bytes: its content is hashed, and uploaded from
        the cache (the fresh export) when missing or wrong. Nothing is committed before this holds."""
        remote = self.settings.remote_url
        obj = self._cache_object(md5)
        log.info("ensuring %s (md5 %s, %d bytes) is on the DVC remote %s", rel, md5, size, remote)
        check = self._dvc_tool("ensure-remote", DVC_REMOTE, md5, str(size), str(obj))
        for line in (check.stdout or "").splitlines()[:-1]:
            log.info("DVC remote: %s", line)
        if check.returncode != 0:
            raise RegistryError(
                f"the DVC remote {remote} does not hold {rel} (md5 {md5}): {_last_line(check)}. "
                "Nothing was committed or tagged; fix the remote and rerun the task."
            )
        log.info("verified on the DVC remote: %s", _last_line(check))

    def _commit_and_push(self, project, output, version, tag, md5, rows, size, timeout) -> PublishResult:
        """Land the version on the branch, with its tag, in one atomic push; any publisher may land it.

        Why a proposal: with dozens of projects publishing at the same tick, every publisher racing to
        move the branch with its own commit makes N publishers need about N rounds each (the
        previous protocol: 5 of 32 gave up after 20 attempts). So each publisher first pushes a
        *proposal* (a tiny root commit holding its ``.dvc`` file, its message = the tag message) to
        its own ref ``refs/registry-pending/<project>/<version>``: distinct refs never conflict.
        Then it fetches the branch, the tags and every pending proposal, builds one commit per
        proposal on the tip, and pushes branch + all their tags + the deletion of the landed
        proposals in ONE ``git push --atomic``. Whoever wins a round lands everybody's ready
        versions; a loser usually finds its own tag already there on the next fetch. Lost rounds
        are retried with full-jitter back-off until ``timeout`` (a deadline, not an attempt count).
        Data was verified on the remote before the proposal exists, so nothing unverified is ever
        tagged; branch and tags land together; tags are created once and never moved.
        """
        branch = self.settings.branch
        timeout = self.settings.publish_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        publish_id = uuid.uuid4().hex
        created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        message = (f"{project}: version {version}\n\nmd5: {md5}\nrows: {rows}\nbytes: {size}\n"
                   f"created: {created}\npublish-id: {publish_id}\n")
        self._propose(project, output, tag, md5, size, message)
        attempt = 0
        while True:
            attempt += 1
            self._fetch_for_landing()  # raises when the registry is unreachable
            existing = self._tag_info(project, output, version)
            if existing is not None:
                if existing.md5 != md5:
                    raise self._conflict(existing, md5)
                mine = existing.publish_id == publish_id
                log.info("%s is published at commit %s (%s, after %d round(s))", tag, existing.commit[:12],
                         "landed by this run" if attempt > 1 and mine else "by this run" if mine else
                         "by another run with the same content", attempt - 1)
                return PublishResult(project, version, tag, md5, rows, size, existing.commit, created=mine)
            if time.monotonic() >= deadline:
                raise RegistryError(
                    f"could not publish {tag} within publish_timeout={timeout:.0f} s: {attempt - 1} rounds lost the "
                    "race to other publishers. Its proposal stays on the registry and the next publisher lands it, or "
                    "rerun; raise publish_timeout (project YAML key or the connection's extra) if this recurs")
            if not self._git("rev-parse", "-q", "--verify", f"{PENDING_LOCAL}/{tag}", check=False):
                if attempt > 3:
                    raise RegistryError(f"could not publish {tag}: its proposal cannot be pushed to the registry "
                                        f"{self.repo_url} (is refs/registry-pending/ writable?); nothing was tagged")
                self._propose(project, output, tag, md5, size, message)  # lost, or never arrived: propose again
                continue
            base = self._origin_tip() or self._git("rev-parse", "HEAD")  # HEAD: a fresh registry's init commit
            tip, landing, done = self._landing_plan(base)
            tags = list(landing)
            refspecs = ([f"{tip}:refs/heads/{branch}"] if tip != base or not self._origin_tip() else [])
            refspecs += [f"refs/tags/{t}:refs/tags/{t}" for t in tags] + [f":{PENDING_NAMESPACE}/{t}" for t in done]
            pushed = self.runner.run(["git", "-c", "protocol.ext.allow=never", "push", "--porcelain", "--atomic",
                                      "origin", *refspecs], check=False)
            if pushed.returncode == 0:
                log.info("landed %d version(s) at commit %s: %s", len(tags), tip[:12], ", ".join(tags[:20]))
                self._after_push(branch, tip, tags)
                if tag not in landing:
                    continue  # the next fetch finds our tag (landed meanwhile by someone else)
                landed = landing[tag]
                if landed["md5"] != md5:  # another run's proposal for this version won
                    raise self._conflict(VersionInfo(project, version, tag, landed["md5"], size, None, landed["commit"]), md5)
                mine = _message_field(landed["message"], "publish-id") == publish_id
                return PublishResult(project, version, tag, md5, rows, size, landed["commit"], created=mine)
            if not self._registry_changed(base, done):
                detail = redact((pushed.stderr or "") + (pushed.stdout or ""), self.runner.secrets).strip()
                raise RegistryError(f"git push to the registry repository {self.repo_url} failed "
                                    f"(exit {pushed.returncode}): {detail[-1500:]}")
            delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(attempt, 10)))
            delay = min(delay, max(0.0, deadline - time.monotonic()))
            log.info("another publisher landed first (round %d); fetching again in %.2f s", attempt, delay)
            time.sleep(delay)

    def _propose(self, project, output, tag, md5, size, message) -> None:
        """Push this version's proposal to its own pending ref (no other publisher writes that ref)."""
        dvc_blob = self._git("hash-object", "-w", "--stdin", input_text=dvc_file_text(output, md5, size))
        inner = self._git("mktree", input_text=f"100644 blob {dvc_blob}\t{output}.dvc\n")
        tree = self._git("mktree", input_text=f"040000 tree {inner}\t{project}\n")
        proposal = self._git(*COMMITTER, "commit-tree", tree, "-m", message)
        pushed = self.runner.run(["git", "-c", "protocol.ext.allow=never", "push", "--porcelain", "origin",
                                  f"{proposal}:{PENDING_NAMESPACE}/{tag}"], check=False)
        if pushed.returncode != 0:  # taken by another run of this version (the tag check decides), or unreachable
            log.info("proposal ref for %s exists already or could not be pushed; the landing round decides", tag)

    def _landing_plan(self, base: str) -> tuple[str, dict[str, dict], list[str]]:
        """(new tip, {tag: proposal} to create, pending refs to delete) for every valid pending proposal.

        Proposals come from the registry, so anyone with push access could craft one: each is
        checked (names, exactly one ``<project>/<output>.dvc``, a valid md5) and an invalid one is
        dropped (its ref deleted) with a warning, never landed.
        """
        records = self._git("for-each-ref", "--format=%(refname) %(objectname)", f"{PENDING_LOCAL}/")
        proposals, done = [], []
        for line in records.splitlines()[:MAX_BATCH]:
            ref, sha = line.split(" ", 1)
            tag = ref[len(PENDING_LOCAL) + 1:]
            try:
                proposal = self._read_proposal(tag, sha)
            except (RegistryError, InvalidNameError, CommandError) as exc:
                log.warning("dropping invalid proposal %s: %s", tag, exc)
                done.append(tag)
                continue
            if self._git("rev-parse", "-q", "--verify", self._remote_tag_ref(tag), check=False):
                done.append(tag)  # landed already (its owner compares md5s)
                continue
            proposals.append(proposal)
        tip, landing = base, {}
        for p in sorted(proposals, key=lambda p: (p["created"], p["tag"])):
            tip = self._commit_on(tip, p["project"], p["output"], p["version"], p["rows"], p["md5"], p["blob"])
            self._git(*COMMITTER, "tag", "-f", "-a", "-m", p["message"], p["tag"], tip)
            landing[p["tag"]] = {**p, "commit": tip}
            done.append(p["tag"])
        return tip, landing, done

    def _read_proposal(self, tag: str, sha: str) -> dict:
        project, _, version = tag.partition("/")
        validate_project(project)
        validate_version(version)
        paths = self._git("ls-tree", "-r", "--name-only", sha).splitlines()
        if len(paths) != 1 or not paths[0].startswith(f"{project}/") or not paths[0].endswith(".dvc"):
            raise RegistryError(f"expected exactly one file {project}/<output>.dvc, found {paths[:5]}")
        output = validate_output(paths[0][len(project) + 1:-len(".dvc")])
        blob = self._git("rev-parse", f"{sha}:{paths[0]}")
        md5, _ = parse_dvc_file(self._git("cat-file", "blob", blob))
        message = self.runner.run(["git", "log", "-1", "--format=%B", sha]).stdout
        if _message_field(message, "md5") != md5:
            raise RegistryError("the proposal's message and .dvc file name different md5s")
        rows = _message_field(message, "rows") or "?"
        return {"tag": tag, "project": project, "version": version, "output": output, "blob": blob, "md5": md5,
                "rows": rows, "message": message, "created": _message_field(message, "created") or ""}

    def _registry_changed(self, base: str, done: list[str]) -> bool:
        """After a failed push: did someone else move the branch or land/drop proposals (a lost race),
        or is the failure ours to report (rejected, unreachable)?"""
        self._fetch_for_landing()
        if (self._origin_tip() or "") != (base if self._origin_tip() else ""):
            return True
        landed = [t for t in done if not self._git("rev-parse", "-q", "--verify", f"{PENDING_LOCAL}/{t}", check=False)]
        return bool(landed)

    def _commit_on(self, base: str, project, output, version, rows, md5, dvc_blob: str) -> str:
        """A commit on ``base`` whose tree is base's with ``<project>/<output>.dvc`` and the project's
        ``.gitignore`` set; ``base`` itself when nothing changes (same data as the branch head)."""
        index = self.clone_dir / ".git" / f"publish-index-{os.getpid()}-{threading.get_ident()}"
        env = {"GIT_INDEX_FILE": str(index)}
        try:
            ignore_path = f"{project}/.gitignore"
            shown = self.runner.run(["git", "cat-file", "-p", f"{base}:{ignore_path}"], check=False)
            current = shown.stdout if shown.returncode == 0 else ""  # raw: keep the trailing newline
            ignore_blob = self._git("hash-object", "-w", "--stdin", input_text=gitignore_with(current, output))
            self._git("read-tree", base, env=env)
            self._git("update-index", "--add", "--cacheinfo", f"100644,{dvc_blob},{project}/{output}.dvc", env=env)
            self._git("update-index", "--add", "--cacheinfo", f"100644,{ignore_blob},{ignore_path}", env=env)
            tree = self._git("write-tree", env=env)
        finally:
            index.unlink(missing_ok=True)
        if tree == self._git("rev-parse", f"{base}^{{tree}}"):
            return base
        return self._git(*COMMITTER, "commit-tree", tree, "-p", base, "-m",
                         f"{project}: version {version} ({rows} rows, md5 {md5})")

    def _fetch_for_landing(self) -> None:
        """The branches, every tag and every pending proposal (pruned: landed proposals disappear).
        Globs, so a branch that does not exist yet (an empty registry) is not an error."""
        try:
            self._git("fetch", "-q", "--prune", "--force", "--no-write-fetch-head", "origin",
                      "+refs/heads/*:refs/remotes/origin/*", f"+refs/tags/*:{TAG_NAMESPACE}/*",
                      f"+{PENDING_NAMESPACE}/*:{PENDING_LOCAL}/*",
                      what=f"git fetch from the registry repository {self.repo_url}")
        except CommandError as exc:
            raise RegistryError(str(exc)) from None

    def _after_push(self, branch: str, commit: str, tags: list[str]) -> None:
        """Bookkeeping only: the push landed, so a failure here must not turn it into a failed publish
        (the next fetch writes the same refs anyway)."""
        updates = [(f"refs/remotes/origin/{branch}", commit)] + [(self._remote_tag_ref(t), f"refs/tags/{t}") for t in tags]
        for ref, value in updates:
            if self.runner.run(["git", "update-ref", ref, value], check=False).returncode:
                log.warning("could not record %s in the working clone; the next fetch will", ref)

    def _origin_tip(self) -> str:
        return self._git("rev-parse", "-q", "--verify", f"refs/remotes/origin/{self.settings.branch}", check=False)
