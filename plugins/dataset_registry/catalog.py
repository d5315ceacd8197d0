"""The read side of the registry, shared by the command line and the registry page (plain, no Airflow).

Over a ``RegistryClient`` (its working clone and DVC cache) and, optionally, a ``ModelDB``:
- ``projects()``: every folder of the registry that has version tags, ``[{project, versions, latest}]``;
- ``versions(project)``: newest first (the registry's own order, as ``train_<p>`` picks "newest"),
  ``[{version, tag, md5, rows, bytes, commit, created, window_start, window_end}]``;
- ``version(project, version)``: that record plus ``output``, ``columns``, ``profile`` and
  ``experiments`` (model-DB rows whose ``training_dataset`` is the tag; ``[]`` without a model DB);
- ``diff(project, base, target, key=None)``: ``version_diff``'s contract JSON; with a key (the
  caller passes the project's ``key``), both files are pulled through the local DVC cache into a
  temporary folder and merged as they stream;
- ``experiments(project=, model=, model_version_id=, training_dataset=)``: the model-management
  service's queries;
- ``pull(project, version, dest)``: the file, through the local DVC cache, md5-verified.

The output file of a version is read from the registry itself (the one ``<project>/<output>.dvc`` in
the project's folder at the version's commit): no project YAML is needed. Unknown projects and
versions raise ``CatalogNotFound`` with a message listing what exists; invalid names raise
``names.InvalidNameError`` (a ValueError) before any git call; registry or model-DB failures raise
``CatalogError``; a key diff over files not sorted by the key raises ``version_diff.KeyOrderError``.
The version list is read from the tag messages in one git call; tags are immutable, so a version's
full metadata is read once per process and kept. Calls are thread-safe (one at a time per catalog,
and the working clone's flock between processes). Every value returned is JSON-ready (datetimes as
ISO text).
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import uuid
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Sequence

from dataset_registry.dvc_store import MD5_HEX
from dataset_registry.gitcmd import CommandError
from dataset_registry.names import InvalidNameError, tag_name, validate_output, validate_project, validate_version
from dataset_registry.registry_errors import RegistryError
from dataset_registry.version_diff import diff_versions
from dataset_registry.working_clone import TAG_NAMESPACE, VersionInfo, message_field

try:  # the tag message's optional lines (created, window, columns, profile), read as tag_info reads them
    from dataset_registry.working_clone import message_info as _message_info
except ImportError:  # pragma: no cover - a working_clone without profiles in tag messages
    _message_info = None

log = logging.getLogger(__name__)

VERSION_FIELDS = ("version", "tag", "md5", "rows", "bytes", "commit", "created", "window_start", "window_end")


def _message_fields(message: str) -> dict:
    """The optional ``VersionInfo`` fields that a tag message carries (those this ``VersionInfo`` has)."""
    if _message_info is None:
        return {}
    known = set(VersionInfo.__dataclass_fields__)
    return {k: v for k, v in _message_info(message).items() if k in known}


class CatalogError(RuntimeError):
    """The catalog cannot answer (a registry or model DB problem); the message says which and why."""


class CatalogNotFound(CatalogError, LookupError):
    """No such project or version in the registry; the message lists what exists."""


class DestinationExists(CatalogError, FileExistsError):
    """``pull`` would replace an existing file and was asked not to."""


def jsonable(value: Any) -> Any:
    """Rows from the model DB as JSON-ready values: datetimes as ISO text, Decimal as float."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def _listed(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit]) or "none"
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


class Catalog:
    """What the registry holds, and what the model DB says was trained on it.

    :param client: the registry client (a ``RegistryClient``); the catalog syncs its working clone
    :param model_db: a ``ModelDB`` for experiments, or None
    :param max_age: seconds a sync of the working clone is reused before the next call fetches again
        (0: every call fetches; a long-lived server may pass a few seconds)
    """

    def __init__(self, client, model_db=None, max_age: float = 0.0):
        self.client = client
        self.model_db = model_db
        self.max_age = max_age
        self._synced_at: float | None = None
        self._has_branch = False
        self._infos: dict[tuple[str, str], VersionInfo] = {}  # (tag, tag object) -> metadata; tags never move
        self._outputs: dict[tuple[str, str], str] = {}  # (project, commit) -> output file name
        self._mutex = threading.Lock()

    # ---------------------------------------------------------------- the working clone
    def _git(self, *args: str, check: bool = True) -> str:
        return self.client.clone.git(*args, check=check)

    def _refresh(self) -> bool:
        """Sync the working clone unless a sync younger than ``max_age`` exists; whether it has a branch.
        Call with the clone locked."""
        now = time.monotonic()
        if self._synced_at is None or now - self._synced_at > self.max_age:
            try:
                self._has_branch = self.client.sync()
            except (RegistryError, CommandError) as exc:
                raise CatalogError(f"cannot read the registry {self.client.repo_url}: {exc}") from None
            self._synced_at = time.monotonic()
        return self._has_branch

    def _tag_refs(self, project: str | None = None) -> list[tuple[str, str, str, str, str]]:
        """(project, version, tag object, commit, message) of every fetched tag (of one project)."""
        prefix = f"{TAG_NAMESPACE}/" + (f"{project}/" if project else "")
        out = self._git("for-each-ref", "--format=%(refname)%00%(objectname)%00%(*objectname)%00%(contents)%01", prefix)
        refs = []
        for record in out.split("\x01"):
            fields = record.strip("\n").split("\x00")
            if len(fields) != 4 or not fields[0].startswith(f"{TAG_NAMESPACE}/"):
                continue
            name = fields[0][len(TAG_NAMESPACE) + 1:]
            owner, _, version = name.partition("/")
            try:
                validate_project(owner)
                validate_version(version)
            except InvalidNameError:
                continue  # a tag made by hand that is not <project>/<version>: not a version
            refs.append((owner, version, fields[1], fields[2] or fields[1], fields[3]))
        return refs

    def _output_at(self, project: str, commit: str) -> str:
        """The output file name of a project at a commit: its folder's one ``.dvc`` file."""
        cached = self._outputs.get((project, commit))
        if cached:
            return cached
        listing = self._git("ls-tree", "--name-only", commit, f"{project}/", check=False).splitlines()
        outputs = [name[len(project) + 1:-len(".dvc")] for name in listing if name.endswith(".dvc")]
        if len(outputs) != 1:
            raise CatalogError(f"the registry's folder {project}/ at commit {commit[:12]} holds "
                               f"{len(outputs) or 'no'} .dvc files ({', '.join(outputs) or 'none'}): expected exactly "
                               "one <output>.dvc per project folder")
        output = validate_output(outputs[0])
        self._outputs[(project, commit)] = output
        return output

    def _info(self, project: str, version: str, tag_object: str) -> VersionInfo:
        cached = self._infos.get((tag_name(project, version), tag_object))
        if cached is not None:
            return cached
        commit = self._git("rev-parse", "-q", "--verify", f"{TAG_NAMESPACE}/{project}/{version}^{{commit}}")
        output = self._output_at(project, commit)
        try:
            info = self.client.versions.tag_info(project, output, version)
        except (RegistryError, CommandError) as exc:
            raise CatalogError(f"cannot read version {project}/{version}: {exc}") from None
        if info is None:  # pragma: no cover - the tag was listed a moment ago under the same lock
            raise CatalogNotFound(f"version {version!r} of project {project} does not exist")
        self._infos[(info.tag, tag_object)] = info
        self._outputs[(project, info.commit)] = output
        return info

    @staticmethod
    def _record(info: VersionInfo, message: str) -> dict:
        record = {
            "version": info.version, "tag": info.tag, "md5": info.md5, "rows": info.rows, "bytes": info.bytes,
            "commit": info.commit,
            "created": getattr(info, "created", None) or message_field(message, "created"),
            "window_start": getattr(info, "window_start", None),
            "window_end": getattr(info, "window_end", None),
        }
        return jsonable(record)

    def _project_refs(self, project: str) -> tuple[list[str], dict[str, tuple[str, str, str]]]:
        """(versions newest first, version -> (tag object, commit, message)); CatalogNotFound for an
        unknown project."""
        validate_project(project)
        if not self._refresh():
            raise CatalogNotFound(f"the registry {self.client.repo_url} is empty: nothing is published yet")
        refs = {version: (obj, commit, message) for _, version, obj, commit, message in self._tag_refs(project)}
        if not refs:
            known = sorted({p for p, *_ in self._tag_refs()})
            raise CatalogNotFound(f"project {project!r} has no versions in the registry; projects with versions: "
                                  f"{_listed(known)}")
        ordered = [v for v in self.client.list_versions(project) if v in refs]
        return ordered, refs

    # ---------------------------------------------------------------- reading
    def projects(self) -> list[dict]:
        """``[{project, versions, latest}]`` for every registry folder with version tags, by name."""
        with self._mutex, self.client.locked():
            if not self._refresh():
                return []
            names = sorted({p for p, *_ in self._tag_refs()})
            out = []
            for project in names:
                versions = self.client.list_versions(project)
                out.append({"project": project, "versions": len(versions), "latest": versions[0] if versions else None})
            return out

    def versions(self, project: str) -> list[dict]:
        """The project's versions, newest first: ``[{version, tag, md5, rows, bytes, commit, created,
        window_start, window_end}]``."""
        with self._mutex, self.client.locked():
            ordered, refs = self._project_refs(project)
            return [self._listed_record(project, v, *refs[v]) for v in ordered]

    def _listed_record(self, project: str, version: str, tag_object: str, commit: str, message: str) -> dict:
        """A version's list record from its tag message alone (md5, rows, bytes, created, window: what the
        publisher wrote, so a long list costs one git call); a tag whose message lacks them (made by
        hand) is read in full from its ``.dvc`` file."""
        md5, size = message_field(message, "md5"), message_field(message, "bytes")
        if (self._infos.get((tag_name(project, version), tag_object)) is None and md5 and MD5_HEX.fullmatch(md5)
                and size and size.isdigit() and len(commit) == 40):
            rows = message_field(message, "rows")
            info = VersionInfo(project, version, tag_name(project, version), md5, int(size),
                               int(rows) if rows and rows.isdigit() else None, commit, **_message_fields(message))
            return self._record(info, message)
        return self._record(self._info(project, version, tag_object), message)

    def version(self, project: str, version: str) -> dict:
        """One version: its record plus ``output``, ``columns``, ``profile`` and ``experiments``."""
        validate_version(version)
        with self._mutex, self.client.locked():
            info, record, output = self._lookup(project, version)
        columns = list(getattr(info, "columns", None) or [])
        profile = dict(getattr(info, "profile", None) or {})
        if not profile:
            profile, columns = self._profile_from_model_db(info.tag, columns)
        record.update(output=output, columns=columns, profile=jsonable(profile),
                      experiments=self.experiments(training_dataset=info.tag))
        return record

    def _lookup(self, project: str, version: str | None):
        """(VersionInfo, record, output file) of a version (``None``: the newest); call under the locks."""
        if version is not None:
            validate_version(version)
        ordered, refs = self._project_refs(project)
        if version is None and ordered:
            version = ordered[0]
        if version not in refs:
            raise CatalogNotFound(f"version {version!r} of project {project} does not exist (no tag "
                                  f"{project}/{version}); newest versions: {_listed(ordered)}")
        info = self._info(project, version, refs[version][0])
        return info, self._record(info, refs[version][2]), self._outputs[(project, info.commit)]

    def _profile_from_model_db(self, tag: str, columns: list) -> tuple[dict, list]:
        """A version whose tag carries no profile: the ``dataset_versions`` row may (best effort)."""
        if self.model_db is None:
            return {}, columns
        try:
            row = self.model_db.get_dataset_version(tag) or {}
        except Exception as exc:  # noqa: BLE001 - optional information; the experiments call reports DB errors
            log.debug("no profile of %s from the model DB: %s", tag, exc)
            return {}, columns
        profile, recorded = row.get("profile"), row.get("columns")
        if isinstance(profile, dict) and profile:
            return profile, columns or (list(recorded) if isinstance(recorded, list) else list(profile))
        return {}, columns or (list(recorded) if isinstance(recorded, list) else [])

    def experiments(self, *, project: str | None = None, model: str | None = None,
                    model_version_id: str | None = None, training_dataset: str | None = None) -> list[dict]:
        """Model-DB experiments, newest first, filtered as given (each row with ``model_name`` and
        ``project_name``); ``[]`` without a model DB."""
        if self.model_db is None:
            return []
        try:
            rows = self.model_db.list_experiments(project=project or None, model=model or None,
                                                  model_version_id=model_version_id or None,
                                                  training_dataset=training_dataset or None)
        except Exception as exc:  # SQLAlchemy errors: name the DB, never its URL (it may hold a password)
            raise CatalogError(f"cannot read experiments from the model DB: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:300]}") from None
        return [jsonable(row) for row in rows]

    # ---------------------------------------------------------------- files
    def pull(self, project: str, version: str | None, dest: str | Path,
             overwrite: bool = True) -> tuple[dict, Path, bool]:
        """Copy a version's file (``None``: the newest) to ``dest`` through the local DVC cache,
        md5-verified. ``dest`` is a file path, or an existing folder (the file keeps its registry name).
        Returns (version record, path, downloaded from the remote)."""
        with self._mutex, self.client.locked():
            info, record, output = self._lookup(project, version)
            dest = Path(dest)
            if dest.is_dir():
                dest = dest / output
            if not overwrite and dest.exists():
                raise DestinationExists(f"{dest} already exists: not replaced")
            # The pull protocol's steps (publish_protocol.pull) on the version resolved above, so one
            # call fetches the registry once: the object into the DVC cache unless it is there ...
            store = self.client.store
            downloaded = not store.has(info.md5)
            try:
                if downloaded:
                    store.configure()
                    store.fetch(info.md5, info.tag)
            except (RegistryError, CommandError) as exc:
                raise CatalogError(f"cannot pull {info.tag}: {exc}") from None
        try:  # ... then a copy out of the cache, hashed on the way (no file is left when it fails)
            store.copy_out(info.md5, dest, info.tag)
        except (RegistryError, OSError) as exc:
            raise CatalogError(f"cannot pull {info.tag}: {exc}") from None
        record["output"] = output
        return record, dest, downloaded

    def diff(self, project: str, base: str, target: str, key: Sequence[str] | None = None) -> dict:
        """What changed from ``base`` to ``target``: the contract's diff JSON (``keys`` with a key).

        With a key, both files come through the local DVC cache into a temporary folder beside it
        (removed afterwards) and are merged as they stream.
        """
        key = [k for k in (key or []) if k]
        before = self.version(project, base)
        after = self.version(project, target)
        need_files = bool(key) or not before["columns"] or not after["columns"]
        if not need_files:
            return diff_versions(before, after)
        scratch = Path(self.client.work_dir) / "diff" / uuid.uuid4().hex
        try:
            scratch.mkdir(parents=True, exist_ok=True)
        except OSError:
            scratch = Path(tempfile.mkdtemp(prefix="dataset-diff-"))
        try:
            _, base_file, _ = self.pull(project, base, scratch / f"base-{before['output']}")
            _, target_file, _ = self.pull(project, target, scratch / f"target-{after['output']}")
            return diff_versions(before, after, key=key, base_file=base_file, target_file=target_file,
                                 base_label=f"{before['tag']} ({before['output']})",
                                 target_label=f"{after['tag']} ({after['output']})")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
