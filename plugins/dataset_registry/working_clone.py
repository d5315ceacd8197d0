"""The worker's working clone of the registry repository, and what its fetched tags say.

Each worker keeps one clone per (repository, branch) in its work folder, guarded by a flock: only
this worker's processes use it, so whatever a killed process left (git ``*.lock`` files, a dirty
tree, a broken ``.git``) is repaired here rather than reported. Remote tags are fetched into a
private ref namespace, so a stale local tag never misleads. Only a repository with no refs at all
is "empty" and gets initialized; a missing branch in a non-empty one is an error naming the
branches that exist (instead of silently starting a new root history away from every tag).
"""
from __future__ import annotations

import fcntl
import json
import logging
import random
import re
import shutil
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from dataset_registry.dvc_store import DVC_REMOTE, parse_dvc_file
from dataset_registry.gitcmd import CommandError, Runner, dropped_connection
from dataset_registry.names import tag_name, validate_project, validate_version
from dataset_registry.registry_errors import RegistryError, VersionNotFoundError

log = logging.getLogger(__name__)

TAG_NAMESPACE = "refs/registry-tags"  # remote tags are fetched here, so stale local tags never mislead
PENDING_NAMESPACE = "refs/registry-pending"  # on the registry: versions whose data is verified, waiting to land
PENDING_LOCAL = "refs/registry-pending-fetched"  # where a worker's clone keeps what it fetched of them
FETCH_ATTEMPTS = 4  # a fetch whose connection the server dropped: tries in all
SAFE_GIT = ("-c", "protocol.ext.allow=never")  # before every git command: no ext:: transports
COMMITTER = ["-c", "user.name=Dataset Registry", "-c", "user.email=dataset-registry@localhost"]
LOCK_TIMEOUT = 3600.0
AHEAD_MAX_AGE = 120.0  # seconds a sync done ahead (``sync_ahead``) stands in for the next sync's fetch


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
    created: str | None = None  # the tag message's lines (None for tags written before they existed)
    window_start: str | None = None
    window_end: str | None = None
    columns: list | None = None
    profile: dict | None = None


# The whole tag message goes to git as one argument (``-m``), and Linux caps one argument at 128 KiB:
# the JSON lines are kept under this many bytes (the profile's strings are already cut to 200
# characters; a wider table's profile is written with min/max cut to 32, else left out).
MAX_JSON_LINE_BYTES = 48 * 1024
SHORT_VALUE_CHARS = 32


def _json_line(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=False)


def _bounded_profile_line(profile: dict) -> str | None:
    """The profile as compact JSON under MAX_JSON_LINE_BYTES, min/max shortened when needed; None if
    even that is too long (the tag message then says so; the Asset event and the model DB keep it)."""
    text = _json_line(profile)
    if len(text.encode()) <= MAX_JSON_LINE_BYTES:
        return text

    def short(value):
        return value[:SHORT_VALUE_CHARS] if isinstance(value, str) else value

    shorter = {c: {**p, "min": short(p.get("min")), "max": short(p.get("max"))} if isinstance(p, dict) else p
               for c, p in profile.items()}
    text = _json_line(shorter)
    return text if len(text.encode()) <= MAX_JSON_LINE_BYTES else None


def tag_message(project: str, version: str, md5: str, rows: int, size: int, created: str, publish_id: str,
                *, window_start: str | None = None, window_end: str | None = None,
                columns: list | None = None, profile: dict | None = None) -> str:
    """The annotated tag's message (a proposal's commit message is the same): ``name: value`` lines.

    Optional lines: ``window-start`` / ``window-end`` (ISO), ``columns`` (a compact JSON list) and
    ``profile`` (a compact JSON object; see ``_bounded_profile_line`` for its size bound). JSON
    lines are read back with ``message_json`` (they may contain spaces), never ``message_field``.
    """
    text = (f"{project}: version {version}\n\nmd5: {md5}\nrows: {rows}\nbytes: {size}\n"
            f"created: {created}\npublish-id: {publish_id}\n")
    if window_start:
        text += f"window-start: {window_start}\n"
    if window_end:
        text += f"window-end: {window_end}\n"
    if columns is not None:
        line = _json_line(list(columns))
        if len(line.encode()) <= MAX_JSON_LINE_BYTES:
            text += f"columns: {line}\n"
    if profile is not None:
        line = _bounded_profile_line(profile)
        text += f"profile: {line}\n" if line is not None else "profile-omitted: too large for a tag message\n"
    return text


def _message_body(message: str) -> str:
    """The ``name: value`` lines: everything after the title line (``<project>: version <v>``), so a
    project named ``profile`` or ``md5`` cannot shadow a field."""
    return message.split("\n\n", 1)[1] if "\n\n" in message else message


def message_field(message: str, name: str) -> str | None:
    """A ``name: value`` line of a tag message written by ``tag_message`` (one word values)."""
    match = re.search(rf"^{re.escape(name)}: (\S+)$", _message_body(message), re.M)
    return match.group(1) if match else None


def message_line(message: str, name: str) -> str | None:
    """The whole rest of a ``name: ...`` line (values that may contain spaces)."""
    match = re.search(rf"^{re.escape(name)}: (.*)$", _message_body(message), re.M)
    return match.group(1) if match else None


def message_json(message: str, name: str):
    """A JSON ``name: ...`` line of a tag message, parsed; None when absent or not valid JSON."""
    line = message_line(message, name)
    if line is None:
        return None
    try:
        return json.loads(line)
    except ValueError:
        return None


def message_info(message: str) -> dict:
    """The optional fields of ``VersionInfo`` that a tag message carries."""
    columns, profile = message_json(message, "columns"), message_json(message, "profile")
    return {"created": message_field(message, "created"), "window_start": message_field(message, "window-start"),
            "window_end": message_field(message, "window-end"),
            "columns": columns if isinstance(columns, list) else None,
            "profile": profile if isinstance(profile, dict) else None}


def remote_tag_ref(tag: str) -> str:
    """Where the working clone keeps the registry's tag ``tag``."""
    return f"{TAG_NAMESPACE}/{tag}"


class WorkingClone:
    """One worker's clone of the registry repository: locked, repaired, synced, initialized when empty.

    :param clone_dir: the clone's folder (created on first use)
    :param lock_path: the flock file serializing this worker's processes on the clone
    :param repo_url: the registry repository, without credentials (it is written to ``.git/config``)
    :param branch: the registry branch
    :param remote_url: the DVC remote an empty registry is initialized with
    :param runner: runs git and DVC in ``clone_dir``
    """

    def __init__(self, clone_dir: Path, lock_path: Path, repo_url: str, branch: str, remote_url: str,
                 runner: Runner):
        self.clone_dir = Path(clone_dir)
        self.lock_path = Path(lock_path)
        self.repo_url = repo_url
        self.branch = branch
        self.remote_url = remote_url
        self.runner = runner
        self._ahead: threading.Thread | None = None
        self.fetched_at: float | None = None  # time.monotonic() of the last successful fetch
        self._ahead_done: float | None = None  # time.monotonic() when a sync ahead found the branch

    def git(self, *args: str, check: bool = True, what: str | None = None, input_text: str | None = None,
            env: dict[str, str] | None = None) -> str:
        """A git command in the clone; its stripped stdout."""
        return self.runner.git(*SAFE_GIT, *args, check=check, what=what, input_text=input_text, env=env)

    def git_process(self, *args: str, check: bool = False, input_text: str | None = None) -> subprocess.CompletedProcess:
        """A git command in the clone, for its exit status or its output exactly as printed."""
        return self.runner.run(["git", *SAFE_GIT, *args], check=check, input_text=input_text)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One publisher/puller per working clone on this worker (flock dies with the process). A sync
        started ahead by this object is waited for first (it needs the same lock)."""
        self.wait_ahead()
        with self._flock():
            yield

    def sync_ahead(self) -> None:
        """Start a sync in a background thread, under the lock if it is free, so that the registry's
        round trip overlaps the caller's own work (a version run's export). The publish's sync
        (``reuse_ahead``) within ``AHEAD_MAX_AGE`` seconds uses what it fetched instead of fetching
        again, and only resets and cleans the clone; a registry that moved meanwhile is still seen
        before anything is tagged, because every landing push is a compare-and-swap on what it read.
        A failure here is only logged: the publish then fetches itself and reports it."""
        if self._ahead is not None:
            return
        self._ahead_done = None
        self._ahead = threading.Thread(target=self._sync_in_background, name="registry-sync-ahead", daemon=True)
        self._ahead.start()

    def wait_ahead(self) -> None:
        """Wait for a sync started by ``sync_ahead`` (no-op without one)."""
        thread, self._ahead = self._ahead, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _sync_in_background(self) -> None:
        try:
            with self._flock(timeout=0):  # busy: another task is syncing it now; the publish syncs itself
                if self.sync():
                    self._ahead_done = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - the next sync fetches again and reports it
            log.info("syncing the working clone ahead failed (%s); it is synced again before publishing",
                     str(exc)[-300:])

    @contextmanager
    def _flock(self, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as handle:
            deadline = time.monotonic() + timeout
            waited = False
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise RegistryError(f"timed out waiting for the working clone lock {self.lock_path}") from None
                    if not waited:
                        log.info("waiting for another process using the working clone %s", self.clone_dir)
                        waited = True
                    time.sleep(0.2)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def sync(self, reuse_ahead: bool = False) -> bool:
        """Bring the working clone to the registry's current state. Returns whether the branch exists
        (False only for an empty repository: one with no refs at all).

        A clone left dirty or locked by a killed run is repaired here; one that still fails to fetch
        or check out after that is re-created from scratch once. With ``reuse_ahead`` (the publish),
        what a ``sync_ahead`` that found the branch fetched is used, once, instead of fetching again.
        """
        done = self._ahead_done if reuse_ahead else None
        if reuse_ahead:
            self._ahead_done = None
        if done is not None and time.monotonic() - done <= AHEAD_MAX_AGE:
            try:
                if self._sync_once(fetch=False):
                    log.info("working clone synced %.1f s ago, in the background: not fetched again",
                             time.monotonic() - done)
                    return True
            except CommandError as exc:
                log.info("working clone changed since it was synced ahead (%s): syncing it again", str(exc)[-200:])
        try:
            return self._sync_once()
        except CommandError as exc:  # fetch errors (network, auth) are RegistryErrors and pass through
            log.warning("working clone %s is damaged (%s): re-creating it", self.clone_dir, exc)
            self._fresh_clone()
            try:
                return self._sync_once()
            except CommandError as again:
                raise RegistryError(str(again)) from None

    def fetch(self, *refspecs: str) -> None:
        """The branches, every tag (into the private namespace), every pending proposal (``landing``)
        and ``refspecs``; pruned, so what the registry deleted disappears here too. Globs, so a branch
        that does not exist yet (an empty registry) is not an error. A connection the server dropped (a burst of publishers against
        sshd's MaxStartups) is tried again, ``FETCH_ATTEMPTS`` times in all, after a random pause."""
        for attempt in range(1, FETCH_ATTEMPTS + 1):
            try:
                self.git("fetch", "-q", "--prune", "--force", "--no-write-fetch-head", "origin",
                         "+refs/heads/*:refs/remotes/origin/*", f"+refs/tags/*:{TAG_NAMESPACE}/*",
                         f"+{PENDING_NAMESPACE}/*:{PENDING_LOCAL}/*", *refspecs,
                         what=f"git fetch from the registry repository {self.repo_url}")
                self.fetched_at = time.monotonic()
                return
            except CommandError as exc:
                if attempt == FETCH_ATTEMPTS or not dropped_connection(f"{exc} {exc.output}"):
                    raise RegistryError(str(exc)) from None
                delay = random.uniform(0.5, 2.0 * attempt)
                log.info("the registry dropped the fetch's connection (attempt %d of %d); trying again in %.1f s",
                         attempt, FETCH_ATTEMPTS, delay)
                time.sleep(delay)

    def prepare(self) -> None:
        """Ready to publish on: synced, an empty registry initialized, and a DVC repository."""
        if not self.sync(reuse_ahead=True):
            self._initialize_registry()
        if not (self.clone_dir / ".dvc").is_dir():
            raise RegistryError(
                f"registry repository {self.repo_url} (branch {self.branch}) has commits "
                "but no .dvc folder: it is not a DVC repository; point repo_url at a dataset registry"
            )

    def fetched_within(self, seconds: float) -> bool:
        """Whether this clone's view of the registry was fetched (by this object) at most ``seconds`` ago."""
        return self.fetched_at is not None and time.monotonic() - self.fetched_at <= seconds

    def origin_tip(self) -> str:
        """The registry branch's commit as last fetched ("" before it exists)."""
        return self.git("rev-parse", "-q", "--verify", f"refs/remotes/origin/{self.branch}", check=False)

    def _fresh_clone(self) -> None:
        if self.clone_dir.exists():
            shutil.rmtree(self.clone_dir)
        self.clone_dir.mkdir(parents=True)
        self.git("init", "-q", f"--initial-branch={self.branch}")
        self.git("config", "remote.origin.url", self.repo_url)

    def _clone_is_healthy(self) -> bool:
        if not (self.clone_dir / ".git").is_dir():
            return False
        try:
            url = self.git("config", "--get", "remote.origin.url")
            self.git("rev-parse", "--git-dir")
        except CommandError:
            return False
        return url == self.repo_url

    def _clear_stale_locks(self) -> None:
        """Remove every git lock file in the clone (index, HEAD, config, packed-refs, any ref under
        refs/, including the private tag namespace). Only this worker's processes use the clone and
        we hold its flock, so a lock can only be left by a killed process."""
        git_dir = self.clone_dir / ".git"
        candidates = [*git_dir.glob("*.lock"), *(git_dir / "refs").rglob("*.lock")]
        for stale in candidates:
            log.warning("removing stale git lock %s left by an interrupted run", stale)
            stale.unlink(missing_ok=True)

    def _sync_once(self, fetch: bool = True) -> bool:
        if not self._clone_is_healthy():
            if not fetch:
                return False  # (sync then does the whole thing)
            log.info("creating working clone of the registry in %s", self.clone_dir)
            self._fresh_clone()
        self._clear_stale_locks()
        if fetch:
            self.fetch()
        branch = self.branch
        exists = bool(self.git("rev-parse", "-q", "--verify", f"refs/remotes/origin/{branch}^{{commit}}", check=False))
        if exists:
            self.git("checkout", "-q", "-f", "-B", branch, f"refs/remotes/origin/{branch}")
            self.git("clean", "-q", "-f", "-d")
            return True
        if not fetch:
            return False  # decided on a fresh fetch only (sync then does the whole thing)
        error = self.missing_branch_error()
        if error is not None:
            raise error
        return False

    def missing_branch_error(self) -> RegistryError | None:
        """After a fetch that found no branch: the error when the registry is not empty (other
        branches or tags), None when it has no refs at all (a new registry, to be initialized)."""
        branch = self.branch
        branches = self.git("for-each-ref", "--format=%(refname:lstrip=3)", "refs/remotes/origin/").split()
        tags = self.git("for-each-ref", "--count=1", "--format=%(refname)", f"{TAG_NAMESPACE}/")
        if branches or tags:
            return RegistryError(
                f"the registry repository {self.repo_url} has no branch {branch!r} but is not empty "
                f"(branches: {', '.join(sorted(branches)[:20]) or 'none'}; tags: {'yes' if tags else 'none'}). "
                "Only a repository without any refs is initialized; set the registry's branch to an existing "
                "branch, or restore the branch on the registry (tags keep their commits)."
            )
        return None

    def _initialize_registry(self) -> None:
        """First publish into an empty repository: DVC set up, one commit (not pushed on its own)."""
        log.info("registry repository %s is empty: initializing it for DVC", self.repo_url)
        self._fresh_clone()
        self.runner.dvc("init", "-q", what="dvc init")
        (self.clone_dir / ".dvc" / "config").write_text(
            "[core]\n"
            f"    remote = {DVC_REMOTE}\n"
            f"['remote \"{DVC_REMOTE}\"']\n"
            f"    url = {self.remote_url}\n"
        )
        (self.clone_dir / "README.md").write_text(
            "# Dataset registry\n\nOne folder per project (`<project>/<file>.dvc`), one tag per version "
            "(`<project>/<version>`).\nTo get a version: `git checkout <project>/<version> && dvc pull`.\n"
        )
        self.git("add", "-A")
        self.git(*COMMITTER, "commit", "-q", "-m", "Initialize dataset registry")


class RegistryVersions:
    """What the working clone's fetched tags say: one version's metadata, or every version, newest first.

    :param clone: the working clone (fetched by whoever holds its lock)
    """

    def __init__(self, clone: WorkingClone):
        self.clone = clone

    def tag_info(self, project: str, output: str, version: str) -> VersionInfo | None:
        """The version's metadata from its tag, or None when the registry has no such tag."""
        tag = tag_name(project, version)
        ref = remote_tag_ref(tag)
        commit = self.clone.git("rev-parse", "-q", "--verify", f"{ref}^{{commit}}", check=False)
        if not commit:
            return None
        dvc_path = f"{project}/{output}.dvc"
        try:
            text = self.clone.git("show", f"{commit}:{dvc_path}")
        except CommandError:
            raise RegistryError(f"tag {tag} exists but has no {dvc_path}: was the project's output file renamed?") from None
        md5, size = parse_dvc_file(text)
        message = self.clone.git("for-each-ref", "--format=%(contents)", ref)
        rows = message_field(message, "rows")
        return VersionInfo(project, version, tag, md5, size, int(rows) if rows and rows.isdigit() else None, commit,
                           publish_id=message_field(message, "publish-id"), **message_info(message))

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
        out = self.clone.git("for-each-ref", "--format=%(refname)%00%(*objectname)%00%(objectname)"
                             "%00%(creatordate:unix)%00%(contents)%01", prefix)
        branch = self.clone.git("rev-list", "--first-parent", f"refs/remotes/origin/{self.clone.branch}", check=False)
        position = {sha: i for i, sha in enumerate(reversed(branch.split()))}  # oldest commit = 0
        keyed = []
        for record in out.split("\x01"):
            fields = record.strip("\n").split("\x00")
            if len(fields) != 5 or not fields[0].startswith(prefix):
                continue
            ref, peeled, direct, date, message = fields
            commit = peeled or direct
            created = message_field(message, "created") or ""
            keyed.append(((position.get(commit, -1), created, int(date or 0), ref[len(prefix):]), ref[len(prefix):]))
        return [name for _, name in sorted(keyed, reverse=True)]

    def resolve(self, project: str, output: str, version: str | None) -> VersionInfo:
        """The version's metadata; ``version=None`` means the newest. Unknown -> lists what exists."""
        available = self.list_versions(project)
        if version is None:
            if not available:
                raise VersionNotFoundError(f"project {project} has no published version in the registry yet")
            version = available[0]
        info = self.tag_info(project, output, validate_version(version))
        if info is None:
            newest = ", ".join(available[:10]) or "none"
            raise VersionNotFoundError(f"version {version!r} of project {project} does not exist (tag {project}/{version}); "
                                       f"newest available: {newest}")
        return info
