"""What one registry is: its git repository, its DVC remote, how to reach them, and the worker's folder.

Every value is checked here, before any git, DVC or SSH command sees it; a message names the setting
as the registry calls it (``repo_url``, ``branch``, ...), the value (never a credential) and the
rule. Whoever reads the settings from somewhere (the hook, from a connection) adds where they came from.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from dataset_registry.registry_errors import RegistryError
from dataset_registry.s3_remote import S3Access, parse_s3_url
from dataset_registry.ssh_env import split_url_credentials

DEFAULT_PUBLISH_TIMEOUT = 900.0  # seconds a push may keep losing races to other publishers
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^\s]+$")
_SSH_URL = re.compile(r"^ssh://(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9.\-\[\]:]+(?::\d+)?/[^\s\"']*$")


def _shown(url: str) -> str:
    """A URL as a message may show it: without a password or token."""
    return repr(split_url_credentials(url)[0])


@dataclass(frozen=True)
class RegistrySettings:
    """One registry, as one worker reaches it.

    :param repo_url: the registry repository: absolute path, ``ssh://``, ``file://``, ``https://`` or
        ``user@host:path`` (a token in an https URL is used through askpass, never stored)
    :param remote_url: the DVC remote: ``ssh://[user@]host[:port]/path``, ``s3://bucket/prefix`` or an
        absolute local path
    :param work_dir: the worker's absolute folder for working clones, the DVC cache and staging files
    :param branch: the registry branch versions land on
    :param ssh_user: SSH login for the repository and the remote
    :param ssh_password: SSH password (handed to git and DVC through the environment only)
    :param key_file: absolute path of the SSH private key
    :param known_hosts: absolute path of the known_hosts file (default: the user's)
    :param check_host_keys: verify SSH host keys (the default); False accepts any host key
    :param publish_timeout: seconds a publish may keep losing push races before it gives up (1 to 86400)
    :param s3: credentials, endpoint and region of an ``s3://`` remote (``s3_remote.S3Access``); None:
        whatever botocore finds on the worker (``AWS_*`` variables, ``~/.aws``, an instance role)
    """

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
    s3: S3Access | None = None

    def __post_init__(self):
        for name in ("repo_url", "remote_url"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise RegistryError(f"registry setting {name} is empty: it is required")
            if value.startswith("-") or any(c in value for c in "\0\n\r\"'"):
                raise RegistryError(f"registry setting {name} {_shown(value)} is not a valid URL or path")
        if not (self.repo_url.startswith(("ssh://", "file://", "https://", "http://", "/")) or _SCP_LIKE.match(self.repo_url)):
            raise RegistryError(f"registry setting repo_url {_shown(self.repo_url)} must be an absolute path, "
                                "ssh://, file://, https:// or user@host:path")
        if self.remote_url.startswith("s3://"):
            try:
                parse_s3_url(self.remote_url)
            except RegistryError as exc:
                raise RegistryError(f"registry setting remote_url: {exc}") from None
        elif not (self.remote_url.startswith("/") or _SSH_URL.match(self.remote_url)):
            raise RegistryError(f"registry setting remote_url {_shown(self.remote_url)} must be "
                                "ssh://[user@]host[:port]/path, s3://bucket/prefix or an absolute local path")
        if self.s3 is not None:
            if not isinstance(self.s3, S3Access):
                raise RegistryError("registry setting s3 must be an S3Access")
            if not self.remote_url.startswith("s3://"):
                raise RegistryError(f"registry setting s3 (S3 credentials, endpoint, region) is only for an s3:// "
                                    f"remote_url, and {_shown(self.remote_url)} is not one")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,99}", self.branch) or ".." in self.branch:
            raise RegistryError(f"registry setting branch {self.branch!r} is not a valid branch name")
        for name in ("key_file", "known_hosts"):
            value = getattr(self, name)
            if value is not None and (not os.path.isabs(value) or "\0" in value):
                raise RegistryError(f"registry setting {name} must be an absolute path")
        if isinstance(self.publish_timeout, bool) or not isinstance(self.publish_timeout, (int, float)) \
                or not 1 <= self.publish_timeout <= 86400:
            raise RegistryError(f"registry setting publish_timeout {self.publish_timeout!r} must be a number of "
                                "seconds from 1 to 86400")
        work_dir = str(self.work_dir)
        if not os.path.isabs(work_dir) or "\0" in work_dir or "\n" in work_dir:
            raise RegistryError(f"registry setting work_dir {work_dir[:200]!r} must be an absolute path (the "
                                "worker's folder for working clones and the DVC cache)")
