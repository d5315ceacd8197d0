"""The environment git and DVC run in: SSH options, host-key policy and credentials, none of them in
argv or in a file.

A password (the settings' SSH password, or a token written into an https URL) reaches git through an
askpass program that reads it from a variable set only for the child process, and reaches DVC's SSH
filesystem through ``dvc_cli``'s variables. Host keys are checked unless the settings opt out. An S3
remote's credentials (``s3_remote``) go to ``dvc_cli`` children only, never to git.
Building the environment is pure; the askpass script (which holds no secret) is written on first use.
"""
from __future__ import annotations

import os
import re
import shlex
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from dataset_registry import dvc_cli
from dataset_registry.gitcmd import base_env
from dataset_registry.s3_remote import S3Access

if TYPE_CHECKING:
    from dataset_registry.registry_settings import RegistrySettings

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
ASKPASS_NAME = "askpass-v3.sh"  # v3: user-name prompts get the login, from its own variable
# What an ssh:// DVC remote's host, login and folder may hold for them to reach OpenSSH's argv and a
# remote shell's command line unquoted; anything else goes through DVC's own SSH filesystem.
_PLAIN_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:-]*")
_PLAIN_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9._/+-]*")
# AES-GCM first for the data connection: with AES instructions it moves bulk data about twice as fast
# as OpenSSH's default first choice (chacha20-poly1305); both are in OpenSSH's default list.
_BULK_CIPHERS = "^aes128-gcm@openssh.com,aes256-gcm@openssh.com"


def split_url_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``https://user:token@host/x`` -> (``https://user@host/x``, user, token).

    A token in the URL would otherwise sit in the clone's ``.git/config`` and in every error message;
    it is taken out and handed to git through the askpass program instead, like an SSH password.
    The user part ends at the last ``@`` before the first ``/`` (a password may hold ``@``). Over
    http(s) a user part without a password is taken out too: it is how tokens are usually given
    (``https://<token>@github.com/...``); ssh's ``git@host`` stays, it is only a login name.
    """
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/]*)@", url)
    if not match:
        return url, None, None
    scheme, userinfo, rest = match.group(1), match.group(2), url[match.end():]
    if ":" not in userinfo:
        if scheme.lower() in ("http://", "https://"):
            return f"{scheme}{rest}", unquote(userinfo) or None, None
        return url, None, None
    user, _, password = userinfo.partition(":")
    return f"{scheme}{user}@{rest}" if user else f"{scheme}{rest}", unquote(user) or None, unquote(password) or None


class SubprocessEnv:
    """The environment variables of every git/DVC child process for one registry's settings.

    :param settings: the registry's settings (SSH user/password, key file, known_hosts, host-key check)
    :param askpass: where the askpass script is written, when a password is in use
    """

    def __init__(self, settings: RegistrySettings, askpass: Path):
        self.settings = settings
        self.askpass = Path(askpass)
        # The repository URL as it is written to .git/config and shown in messages: no token in it.
        self.repo_url, url_user, url_password = split_url_credentials(settings.repo_url)
        self.git_user = settings.ssh_user or url_user
        self.git_password = settings.ssh_password or url_password
        # https://<token>@host: the whole user part is the secret, answered through askpass too
        self.url_token_user = url_user if url_password is None and url_user else None
        self.secrets = [s for s in (settings.ssh_password, url_password, self.url_token_user) if s]  # redacted
        if settings.s3 is not None:
            self.secrets += settings.s3.secrets

    @property
    def uses_askpass(self) -> bool:
        """git gets its credentials from the askpass program: a password, or a token given as the user."""
        return bool(self.git_password or self.url_token_user)

    def ssh_command(self) -> list[str]:
        """git's ``ssh`` argv: key, login and host-key policy; prompts only when a password is in use."""
        s = self.settings
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
        ssh += ["-o", "NumberOfPasswordPrompts=1"] if self.git_password else ["-o", "BatchMode=yes"]
        return ssh

    def remote_ssh(self) -> tuple[list[str], str] | None:
        """(OpenSSH argv up to and including the host, folder) of an ssh:// DVC remote, for commands
        run on its host with the same login, key and host-key policy as DVC's SSH filesystem; None
        when DVC's filesystem must do it: another kind of remote, a password login (only DVC gets the
        SSH password), or a URL whose parts are not plain (they would need quoting on the far side).
        """
        s = self.settings
        if not s.remote_url.startswith("ssh://") or s.ssh_password:
            return None
        parts = urlsplit(s.remote_url)
        try:
            port = parts.port
        except ValueError:
            return None
        host, path = parts.hostname or "", parts.path.rstrip("/")
        user = unquote(parts.username) if parts.username else s.ssh_user  # the URL's login wins, as in dvc_cli
        if (parts.password is not None or parts.query or parts.fragment or not _PLAIN_HOST.fullmatch(host)
                or not _PLAIN_PATH.fullmatch(path or "/") or (user and not _PLAIN_USER.fullmatch(user))):
            return None
        # The host keys DVC's SSH filesystem (asyncssh) would trust, and no more: no system-wide
        # known_hosts, no keys learned from the server, no DNS or GSSAPI from /etc/ssh/ssh_config.
        ssh = ["ssh", "-T", "-x", "-a", "-e", "none", "-o", "ConnectTimeout=20", "-o", "ServerAliveInterval=15",
               "-o", "BatchMode=yes", "-o", f"Ciphers={_BULK_CIPHERS}", "-o", "GlobalKnownHostsFile=/dev/null",
               "-o", "UpdateHostKeys=no", "-o", "VerifyHostKeyDNS=no", "-o", "GSSAPIAuthentication=no"]
        if s.key_file:
            ssh += ["-i", s.key_file, "-o", "IdentitiesOnly=yes"]
        if s.check_host_keys:
            ssh += ["-o", "StrictHostKeyChecking=yes"]
            if s.known_hosts:
                ssh += ["-o", f"UserKnownHostsFile={s.known_hosts}"]
        else:
            ssh += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        if user:
            ssh += ["-l", user]
        if port:
            ssh += ["-p", str(port)]
        return ssh + ["--", host], path

    def remote_ssh_variables(self) -> dict[str, str]:
        """The environment of ``remote_ssh`` commands: ``variables()`` without any password or askpass
        (they are for git's host; with BatchMode ssh never prompts anyway)."""
        env = self.variables()
        for name in ("SSH_ASKPASS", "SSH_ASKPASS_REQUIRE", ENV_GIT_USER, ENV_GIT_PASSWORD, dvc_cli.ENV_PASSWORD):
            env.pop(name, None)
        return env

    def variables(self) -> dict[str, str]:
        """The complete environment: ``base_env()`` plus git's SSH command, the askpass variables and
        the values ``dvc_cli`` hands to DVC's SSH filesystem."""
        s = self.settings
        env = base_env()
        if self.uses_askpass:
            env.update(SSH_ASKPASS=str(self.askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=env.get("DISPLAY", ":0"))
            env[ENV_GIT_USER] = self.git_user or ""
            env[ENV_GIT_PASSWORD] = self.git_password or ""
        if s.ssh_password:
            env[dvc_cli.ENV_PASSWORD] = s.ssh_password
        env["GIT_SSH_COMMAND"] = shlex.join(self.ssh_command())
        env["GIT_SSH_VARIANT"] = "ssh"
        if s.remote_url.startswith("ssh://"):  # DVC's SSH options come from this URL, not the tracked config
            env[dvc_cli.ENV_REMOTE_URL] = s.remote_url
        if s.ssh_user:
            env[dvc_cli.ENV_USER] = s.ssh_user
        if s.key_file:
            env[dvc_cli.ENV_KEY_FILE] = s.key_file
        if s.known_hosts:
            env[dvc_cli.ENV_KNOWN_HOSTS] = s.known_hosts
        if not s.check_host_keys:
            env[dvc_cli.ENV_NO_HOST_KEY_CHECK] = "1"
        return env

    def dvc_variables(self) -> dict[str, str]:
        """Variables for ``dvc_cli`` children only (git never sees them): an S3 remote's credentials."""
        if not self.settings.remote_url.startswith("s3://"):
            return {}
        return (self.settings.s3 or S3Access()).child_variables()

    def install_askpass(self) -> None:
        """Write the askpass script when a password is in use and it is not there yet (atomically:
        concurrent first uses never see half a script)."""
        if not self.uses_askpass or self.askpass.exists():
            return
        self.askpass.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.askpass.with_name(f".askpass.{uuid.uuid4().hex}")
        tmp.write_text(ASKPASS_SCRIPT)
        tmp.chmod(0o700)
        os.replace(tmp, self.askpass)
