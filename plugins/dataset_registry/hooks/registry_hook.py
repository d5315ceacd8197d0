"""DvcRegistryHook: a ``dvc_registry`` connection -> a RegistryClient (git + DVC).

The connection type ``dvc_registry`` has a form (declared in ``get_provider_info``): labelled fields
for the repository and remote URLs, branch, SSH user/password, key and known_hosts files, the
host-key switch, the worker directory, the publish timeout and, for an ``s3://`` remote, the ``aws``
connection holding its credentials (``remote_conn_id``). Connections made as ``generic`` with the
same keys in the JSON extra keep working. An extra key the form does not know is refused, naming
the key (a misspelled ``no_host_key_checks`` must not silently turn into "check host keys").

Both connections are read here and become plain settings (``RegistrySettings`` with an
``s3_remote.S3Access``); the secret and session token are registered with Airflow's log masker and
otherwise only travel to the ``dvc_cli`` child processes' environment.
"""
from __future__ import annotations

import difflib
import re
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

from dataset_registry.connection_ids import REGISTRY_CONN_ID
from dataset_registry.get_provider_info import REGISTRY_CONN_FIELDS
from dataset_registry.paths import worker_path
from dataset_registry.registry import DEFAULT_PUBLISH_TIMEOUT, RegistryClient, RegistryError, RegistrySettings
from dataset_registry.s3_remote import S3Access, access_from_aws_connection
from dataset_registry.ssh_env import split_url_credentials

CONN_TYPE = "dvc_registry"
ACCEPTED_CONN_TYPES = (CONN_TYPE, "generic")
AWS_CONN_TYPE = "aws"  # the Amazon provider's type; that provider need not be installed
_CONN_ID = re.compile(r"[A-Za-z0-9_.-]{1,250}")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class RegistryConnectionError(RegistryError, AirflowFailException):
    """The connection itself is wrong (unknown key, bad value, wrong type): retrying cannot help."""


def _short(value: Any, limit: int = 80) -> str:
    """A value as an error message may quote it: repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _mask(secrets: list[str]) -> None:
    """Register secrets with Airflow's log masker (task logs show *** instead)."""
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - older task SDKs: the redaction in gitcmd still applies
        return
    for secret in secrets:
        mask_secret(secret)


def default_work_dir() -> Path:
    """Where working clones and the DVC cache live: per worker, kept between runs."""
    return worker_path("DATASET_WORK_DIR", "dataset-registry")


class DvcRegistryHook(BaseHook):
    """Interact with the dataset registry: a git repository of DVC files plus one DVC remote.

    :param registry_conn_id: the ``dvc_registry`` (or ``generic``) connection; default ``dvc_registry``.
    """

    conn_name_attr = "registry_conn_id"
    default_conn_name = REGISTRY_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "DVC dataset registry"

    def __init__(self, registry_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.registry_conn_id = registry_conn_id

    def _error(self, message: str) -> RegistryConnectionError:
        return RegistryConnectionError(f"connection {self.registry_conn_id!r}: {message}")

    def _extra(self, conn) -> dict[str, Any]:
        """The extra with the form's keys only (``extra__dvc_registry__<key>`` accepted as ``<key>``)."""
        extra = conn.extra_dejson
        if not isinstance(extra, dict):
            raise self._error("the extra must be a JSON object")
        values: dict[str, Any] = {}
        for key, value in extra.items():
            name = str(key).removeprefix(f"extra__{CONN_TYPE}__")
            if name not in REGISTRY_CONN_FIELDS:
                close = difflib.get_close_matches(name, REGISTRY_CONN_FIELDS, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise self._error(f"unknown extra key {_short(key)}: {hint}the keys are {', '.join(REGISTRY_CONN_FIELDS)}")
            if name in values:
                raise self._error(f"extra.{name} is given twice (as {name!r} and with the form prefix): keep one")
            if value is None or value == "":  # the form sends empty fields as null or ""
                continue
            expected = REGISTRY_CONN_FIELDS[name]["schema"]["type"][0]
            if expected == "string" and not isinstance(value, str):
                raise self._error(f"extra.{name} must be text, got {type(value).__name__}")
            values[name] = value
        return values

    def _flag(self, name: str, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise self._error(f"extra.{name} {_short(value)} is not true or false")

    def _seconds(self, name: str, value: Any) -> float:
        if isinstance(value, bool):
            raise self._error(f"extra.{name} {value!r} is not a number of seconds")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise self._error(f"extra.{name} {_short(value)} is not a number of seconds") from None

    @cached_property
    def settings(self) -> RegistrySettings:
        """The connection as RegistrySettings; every problem is a RegistryConnectionError naming it."""
        conn = self.get_connection(self.registry_conn_id)
        if conn.conn_type not in ACCEPTED_CONN_TYPES:
            raise self._error(f"type {conn.conn_type!r} is not a registry connection: make it "
                              f"{CONN_TYPE!r} (or 'generic' with the JSON extra)")
        extra = self._extra(conn)
        for name in ("repo_url", "remote_url"):
            if not str(extra.get(name, "")).strip():
                raise self._error(f"extra.{name} is required (see the README's connection section)")
        flags = {"check_host_keys": not self._flag("no_host_key_check", extra.get("no_host_key_check", False)),
                 "publish_timeout": self._seconds("publish_timeout", extra.get("publish_timeout", DEFAULT_PUBLISH_TIMEOUT))}
        if extra.get("remote_conn_id"):
            flags["s3"] = self._s3_access(str(extra["remote_conn_id"]), str(extra["remote_url"]))
        try:
            return RegistrySettings(
                repo_url=str(extra["repo_url"]),
                remote_url=str(extra["remote_url"]),
                work_dir=Path(extra.get("work_dir") or default_work_dir()),
                branch=str(extra.get("branch") or "main"),
                ssh_user=conn.login or None,
                ssh_password=conn.password or None,
                key_file=extra.get("key_file"),
                known_hosts=extra.get("known_hosts"),
                **flags,
            )
        except RegistryError as exc:
            hint = "; set extra.work_dir or DATASET_WORK_DIR to one" if "setting work_dir" in str(exc) else ""
            raise self._error(f"{exc}{hint}") from None

    def _s3_access(self, remote_conn_id: str, remote_url: str) -> S3Access:
        """The S3 remote's credentials, endpoint and region from the ``aws`` connection ``remote_conn_id``."""
        if not _CONN_ID.fullmatch(remote_conn_id):
            raise self._error(f"extra.remote_conn_id {_short(remote_conn_id)} is not a connection id (letters, digits, "
                              "'_', '-', '.')")
        if not remote_url.startswith("s3://"):
            shown = split_url_credentials(remote_url)[0]
            raise self._error(f"extra.remote_conn_id {remote_conn_id!r} names S3 credentials, but remote_url "
                              f"{_short(shown)} is not an s3:// URL: remove remote_conn_id, or make the remote "
                              "s3://bucket/prefix")
        where = f"extra.remote_conn_id names connection {remote_conn_id!r}"
        try:
            conn = self.get_connection(remote_conn_id)
        except AirflowNotFoundException:
            raise self._error(f"{where}, which does not exist: create an 'aws' connection with that id") from None
        if conn.conn_type != AWS_CONN_TYPE:
            raise self._error(f"{where} of type {conn.conn_type!r}: it must be an {AWS_CONN_TYPE!r} connection (access "
                              "key id in login, secret in password, endpoint_url/region_name in its extra)")
        try:
            access = access_from_aws_connection(conn.login, conn.password, conn.extra_dejson)
        except RegistryError as exc:
            raise self._error(f"{where}: {exc}") from None
        _mask(access.secrets)
        return access

    @cached_property
    def client(self) -> RegistryClient:
        return RegistryClient(self.settings)

    def get_conn(self) -> RegistryClient:
        """The RegistryClient for this connection (built once per hook; it does no I/O until used)."""
        return self.client
