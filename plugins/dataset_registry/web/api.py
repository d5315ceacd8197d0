"""The registry's JSON API (the contract's "Registry API"), under ``/dataset-registry/api``.

Routes only translate: names are checked by ``dataset_registry.names`` before anything reads the
registry (400 naming the rule), the catalog answers, and its errors become statuses: an unknown
project or version is 404 with the catalog's message, a registry that cannot be reached is 503.
Handlers are plain functions (FastAPI runs them in its thread pool): the catalog does blocking git
and database I/O.
"""
from __future__ import annotations

import logging
import threading
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request

from dataset_registry.dvc_store import DVC_REMOTE
from dataset_registry.names import InvalidNameError, validate_project, validate_version

log = logging.getLogger(__name__)
router = APIRouter()

DIFF_WAIT_SECONDS = 60
MAX_CACHED_DIFFS = 64
_DIFF_SLOTS = threading.BoundedSemaphore(1)  # a diff reads two whole files: one at a time per api-server
_DIFF_LOCK = threading.Lock()
_DIFFS: dict[tuple, dict] = {}
MAX_FILTER_CHARS = 250  # model names and model version ids are at most 128 characters in the model DB


def _catalog(request: Request):
    try:
        return request.app.state.sources.catalog()
    except Exception as exc:  # noqa: BLE001 - a broken connection is the operator's to fix: say which
        raise _unavailable(exc) from None


def _unavailable(exc: Exception) -> HTTPException:
    """503 without the details (hosts, users, paths are for the operator): they go to the server log."""
    log.warning("dataset registry API: %s: %s", type(exc).__name__, exc)
    return HTTPException(503, "the registry or the model DB cannot be read right now; the api-server log says why")


def _name(check, value: str) -> str:
    try:
        return check(value)
    except InvalidNameError as exc:
        raise HTTPException(400, str(exc)) from None


def _answer(call, *args, **kwargs) -> Any:
    """Run a catalog call: CatalogNotFound -> 404, a bad name -> 400, two versions that cannot be
    compared as asked (DiffError: a file not sorted by the key, ...) -> 422, anything else -> 503."""
    from dataset_registry.catalog import CatalogNotFound
    from dataset_registry.version_diff import DiffError

    try:
        return call(*args, **kwargs)
    except CatalogNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except InvalidNameError as exc:
        raise HTTPException(400, str(exc)) from None
    except DiffError as exc:
        raise HTTPException(422, str(exc)) from None
    except HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - CatalogError and anything below it: the registry is unreadable
        raise _unavailable(exc) from None


@router.get("/projects")
def list_projects(request: Request) -> list[dict]:
    """``[{project, versions, latest}]``: every project with a version in the registry."""
    return _answer(_catalog(request).projects)


@router.get("/projects/{project}/versions")
def list_versions(request: Request, project: str) -> list[dict]:
    """The versions of ``project``, newest first."""
    project = _name(validate_project, project)
    return _answer(_catalog(request).versions, project)


@router.get("/projects/{project}/versions/{version}")
def show_version(request: Request, project: str, version: str) -> dict:
    """One version: its record, ``columns``, ``profile``, ``experiments`` and ``pull`` commands."""
    project, version = _name(validate_project, project), _name(validate_version, version)
    record = _answer(_catalog(request).version, project, version)
    return {**record, "pull": pull_commands(request, project, version, record)}


@router.get("/projects/{project}/diff")
def diff_versions(request: Request, project: str,
                  base: Annotated[str, Query(description="the older version")],
                  target: Annotated[str, Query(description="the newer version")]) -> dict:
    """Schema, rows and per-column changes from ``base`` to ``target`` (plus key counts with ``key``)."""
    project = _name(validate_project, project)
    base, target = _name(validate_version, base), _name(validate_version, target)
    keys = request.app.state.sources.project_keys().get(project)
    cache_key = (project, base, target, tuple(keys or ()))
    with _DIFF_LOCK:
        if cache_key in _DIFFS:  # versions never change: a diff computed once is the answer for good
            return _DIFFS[cache_key]
    if not _DIFF_SLOTS.acquire(timeout=DIFF_WAIT_SECONDS):
        raise HTTPException(503, "other diffs are being computed; try again in a minute")
    try:
        try:
            result = _answer(_catalog(request).diff, project, base, target, key=keys)
        except HTTPException as exc:
            if exc.status_code != 422 or not keys:
                raise
            # The key diff cannot be done (files not sorted by the key, ...): the schema/profile diff still can.
            result = {**_answer(_catalog(request).diff, project, base, target, key=None), "keys_error": exc.detail}
    finally:
        _DIFF_SLOTS.release()
    with _DIFF_LOCK:
        _DIFFS[cache_key] = result
        while len(_DIFFS) > MAX_CACHED_DIFFS:
            _DIFFS.pop(next(iter(_DIFFS)))
    return result


def _filter(name: str, value: str | None) -> str | None:
    if value is not None and (not value or len(value) > MAX_FILTER_CHARS or any(ord(c) < 32 for c in value)):
        raise HTTPException(400, f"invalid {name} filter {value[:80]!r}: 1 to {MAX_FILTER_CHARS} printable characters")
    return value


@router.get("/experiments")
def list_experiments(request: Request, project: str | None = None, model: str | None = None,
                     model_version_id: str | None = None, training_dataset: str | None = None) -> list[dict]:
    """Experiments of the model DB, newest first, filtered by any of the four."""
    if project is not None:
        project = _name(validate_project, project)
    model, model_version_id = _filter("model", model), _filter("model_version_id", model_version_id)
    if training_dataset is not None:  # a dataset tag: <project>/<version>
        tag_project, sep, tag_version = training_dataset.partition("/")
        if not sep:
            raise HTTPException(400, f"invalid training_dataset {training_dataset[:80]!r}: a tag <project>/<version>")
        _name(validate_project, tag_project)
        _name(validate_version, tag_version)
    return _answer(_catalog(request).experiments, project=project, model=model,
                   model_version_id=model_version_id, training_dataset=training_dataset)


def pull_commands(request: Request, project: str, version: str, record: dict) -> dict:
    """Copy-paste commands that get this version with only git and DVC (the README's "by hand")."""
    sources = request.app.state.sources
    repo_url, remote_url = sources.registry_urls()
    tag = record.get("tag") or f"{project}/{version}"
    path = f"{project}/{record['output']}"
    ssh = remote_url.startswith("ssh://")
    key = " --remote-config keyfile=<your SSH private key>" if ssh else ""
    folder = "registry"
    clone = [f"git clone {repo_url} {folder} && cd {folder}", f"git checkout {tag}"]
    if ssh:
        clone.append(f"dvc remote modify --local {DVC_REMOTE} keyfile <your SSH private key>")
    clone.append("dvc pull")
    return {
        "tag": tag,
        "path": path,
        "clone": clone,
        "get": f"dvc get {repo_url} {path} --rev {tag}{key} -o {version}-{path.rsplit('/', 1)[-1]}",
        "python": (f"dvc.api.read({path!r}, repo={repo_url!r}, rev={tag!r}"
                   + (", remote_config={'keyfile': '<your SSH private key>'}" if ssh else "") + ")"),
    }
