"""``python -m dataset_registry.dvc_cli ARGS``: DVC's own CLI with SSH credentials from memory.

DVC's SSH plugin would read a password or key from ``.dvc/config.local`` and, through sshfs, does
not check host keys at all. This entry point injects, from environment variables set only for the
child process, the user, password, key file and known_hosts policy, so no secret touches a file and
host keys are verified unless the connection opts out.
"""
from __future__ import annotations

import os
import sys

ENV_USER = "DATASET_REGISTRY_SSH_USER"
ENV_PASSWORD = "DATASET_REGISTRY_SSH_PASSWORD"
ENV_KEY_FILE = "DATASET_REGISTRY_SSH_KEY_FILE"
ENV_KNOWN_HOSTS = "DATASET_REGISTRY_SSH_KNOWN_HOSTS"
ENV_NO_HOST_KEY_CHECK = "DATASET_REGISTRY_SSH_NO_HOST_KEY_CHECK"
ENV_TIMEOUT = "DATASET_REGISTRY_SSH_TIMEOUT"


def _patch_ssh() -> None:
    try:
        import dvc_ssh
    except ImportError:  # no SSH support installed: local remotes still work
        return
    original = dvc_ssh.SSHFileSystem._prepare_credentials

    def prepare_credentials(self, **config):
        if os.environ.get(ENV_USER) and not (config.get("user") or config.get("username")):
            config["user"] = os.environ[ENV_USER]
        if os.environ.get(ENV_PASSWORD):
            config["password"] = os.environ[ENV_PASSWORD]
        if os.environ.get(ENV_KEY_FILE):
            config["keyfile"] = os.environ[ENV_KEY_FILE]
        config.setdefault("timeout", int(os.environ.get(ENV_TIMEOUT) or 60))
        info = original(self, **config)
        if os.environ.get(ENV_NO_HOST_KEY_CHECK) == "1":
            info["known_hosts"] = None
        elif os.environ.get(ENV_KNOWN_HOSTS):
            info["known_hosts"] = os.environ[ENV_KNOWN_HOSTS]
        else:
            info["known_hosts"] = ()  # asyncssh: the user's ~/.ssh/known_hosts
        info["agent_forwarding"] = False
        if os.environ.get(ENV_PASSWORD) or os.environ.get(ENV_KEY_FILE):
            info["agent_path"] = None  # only the credentials the connection names
        return info

    dvc_ssh.SSHFileSystem._prepare_credentials = prepare_credentials


def verify_remote(remote: str, md5: str, size: int) -> int:
    """``verify-remote NAME MD5 SIZE``: is the object on the remote, complete? (exit 0 / 1)

    ``dvc push`` only warns when the local cache lacks an object, and ``dvc status --cloud`` then
    reports nothing useful, so the publish protocol asks the remote itself. Uploads are atomic
    (dvc-ssh >= 4.2.2 writes a temp file and renames), so presence with the right size means complete.
    """
    from dvc.repo import Repo

    with Repo(".") as repo:
        odb = repo.cloud.get_remote_odb(remote, "verify-remote")
        path = odb.oid_to_path(md5)
        try:
            info = odb.fs.info(path)
        except FileNotFoundError:
            print(f"missing: object {md5} is not on the remote")
            return 1
        if int(info.get("size", -1)) != size:
            print(f"incomplete: object {md5} has {info.get('size')} bytes on the remote, expected {size}")
            return 1
    print(f"ok: object {md5} ({size} bytes) is on the remote")
    return 0


def main(argv: list[str]) -> int:
    _patch_ssh()
    if argv[:1] == ["verify-remote"] and len(argv) == 4:
        return verify_remote(argv[1], argv[2], int(argv[3]))
    from dvc.cli import main as dvc_main

    return dvc_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
