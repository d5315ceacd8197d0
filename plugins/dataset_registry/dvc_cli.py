"""``python -m dataset_registry.dvc_cli ARGS``: DVC's own CLI with SSH and S3 credentials from memory.

DVC's SSH plugin would read a password or key from ``.dvc/config.local`` and, through sshfs, does
not check host keys at all. This entry point injects, from environment variables set only for the
child process, the user, password, key file and known_hosts policy, so no secret touches a file and
host keys are verified unless the connection opts out; likewise an S3 remote's access key, secret
and session token (``s3_remote.patch_dvc_s3``).
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import sys
import uuid

from dataset_registry import s3_remote

MD5_HEX = re.compile(r"[0-9a-f]{32}")  # also what makes an md5 from the registry safe to use as a path
ENV_USER = "DATASET_REGISTRY_SSH_USER"
ENV_PASSWORD = "DATASET_REGISTRY_SSH_PASSWORD"
ENV_KEY_FILE = "DATASET_REGISTRY_SSH_KEY_FILE"
ENV_KNOWN_HOSTS = "DATASET_REGISTRY_SSH_KNOWN_HOSTS"
ENV_NO_HOST_KEY_CHECK = "DATASET_REGISTRY_SSH_NO_HOST_KEY_CHECK"
ENV_TIMEOUT = "DATASET_REGISTRY_SSH_TIMEOUT"
ENV_REMOTE_URL = "DATASET_REGISTRY_SSH_REMOTE_URL"  # the settings' ssh:// remote (no secret in it)


def _trusted_ssh_config(config: dict) -> dict:
    """The SSH options DVC merged from its config files, cut down to what the registry settings say.

    Anyone who can push writes the registry's tracked ``.dvc/config``, and DVC lets its options win
    over the URL: a ``user``, ``port``, ``keyfile``, ``password`` or ``gss_auth`` put there would make
    the worker log in elsewhere or as someone else. So only the host (from the URL) is kept, and
    port and user are read again from the settings' own URL.
    """
    from urllib.parse import unquote, urlsplit

    trusted = {"host": config["host"]}
    parts = urlsplit(os.environ[ENV_REMOTE_URL])
    if parts.port:
        trusted["port"] = parts.port
    if parts.username:
        trusted["user"] = unquote(parts.username)
    return trusted


def _patch_ssh() -> None:
    try:
        import dvc_ssh
    except ImportError:  # no SSH support installed: local remotes still work
        return
    original = dvc_ssh.SSHFileSystem._prepare_credentials

    def prepare_credentials(self, **config):
        if os.environ.get(ENV_REMOTE_URL):
            config = _trusted_ssh_config(config)
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


class RemoteObjectError(RuntimeError):
    """The object is missing or wrong on the remote, or the remote refused an operation."""


def _reason(exc: BaseException, where: str = "the remote") -> str:
    """The remote's own words (asyncssh, OSError, SFTP), never DVC's generic 'Having any troubles?'."""
    text = str(exc).strip() or type(exc).__name__
    if getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in text:
        text += f" ({where} is out of space: free space there, then rerun)"
    return f"{type(exc).__name__}: {text}"


def _remote_md5(fs, path: str) -> tuple[str, str]:
    """(md5 of the object's bytes on the remote, how it was computed).

    Over SSH the remote host hashes it (``md5sum``, through sshfs) when it offers a shell; otherwise
    (SFTP-only accounts, local paths, S3 objects whose ETag is not their md5) the bytes are read back
    and hashed here. Either way the content is proven, not just the size.
    """
    checksum = None if s3_remote.is_s3(fs) else getattr(getattr(fs, "fs", None), "checksum", None)
    if checksum is not None:
        try:
            value = str(checksum(path)).strip().lower()
            if MD5_HEX.fullmatch(value):  # fsspec's default checksum() is a metadata hash, not an md5
                return value, "md5sum on the remote host"
        except Exception:  # noqa: BLE001 - no shell or no md5sum there: read the bytes back instead
            pass
    digest = hashlib.md5()
    with fs.open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest(), "read back and hashed"


def _state(fs, path: str, md5: str, size: int) -> str:
    """'ok ...', 'missing ...' or 'corrupt ...' for the object at ``path``."""
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return f"missing: object {md5} is not on the remote"
    if info.get("type") not in (None, "file"):
        raise RemoteObjectError(f"the remote path of object {md5} is a {info.get('type')}, not a file: remove it "
                                "by hand (nothing was uploaded)")
    if int(info.get("size", -1)) != size:
        return f"corrupt: object {md5} has {info.get('size')} bytes on the remote, expected {size}"
    if s3_remote.is_s3(fs) and s3_remote.etag_md5(info) == md5:
        # S3 computes a single-part object's ETag as the md5 of the bytes it stored: that is the proof.
        return (f"ok: object {md5} ({size} bytes) is on the remote, content verified (S3 ETag = md5 of a "
                "single-part upload)")
    actual, how = _remote_md5(fs, path)
    if actual != md5:
        return f"corrupt: object {md5} on the remote holds bytes with md5 {actual}"
    return f"ok: object {md5} ({size} bytes) is on the remote, content verified ({how})"


def _protocols(fs) -> tuple:
    protocol = getattr(fs, "protocol", ())
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _upload(fs, local: str, path: str) -> None:
    """Upload to a temporary name beside the object, then rename over it (atomic on SFTP with
    posix-rename and on local paths). The temporary file is removed on every failure. On S3 a PUT is
    atomic already (readers see the old object or the new one, never a part), and a rename would be
    a copy plus a delete: the object is uploaded straight to its name."""
    if s3_remote.is_s3(fs):
        fs.put_file(local, path)
        return
    parent, name = path.rsplit("/", 1)
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        fs.makedirs(parent, exist_ok=True)
        if "local" in _protocols(fs):  # DVC's local put_file keeps a temp file of its own on failure
            with open(local, "rb") as src, fs.open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        else:
            fs.put_file(local, tmp)
        fs.mv(tmp, path)
    except BaseException:
        try:
            fs.rm(tmp)
        except Exception:  # noqa: BLE001 - never there, or the remote is gone: nothing more to do
            pass
        raise


def ensure_remote(remote: str, md5: str, size: int, local: str | None) -> int:
    """``ensure-remote NAME MD5 SIZE [LOCAL_FILE]``: make the remote hold exactly these bytes.

    The object's content on the remote is hashed. When it is missing or wrong and ``LOCAL_FILE`` is
    given (bytes whose md5 this run computed), those bytes are uploaded and hashed again: a corrupt
    remote object is replaced, never trusted. Exit 0 only when the remote content is proven.
    """
    from dvc.repo import Repo

    with Repo(".") as repo:
        odb = repo.cloud.get_remote_odb(remote, "ensure-remote")
        fs, path = odb.fs, odb.oid_to_path(md5)
        try:
            state = _state(fs, path, md5, size)
        except Exception as exc:  # noqa: BLE001 - reported with the remote's reason, exit 1
            print(f"error: cannot read object {md5} on the remote: {_why(odb, exc)}")
            return 1
        if not state.startswith("ok") and local:
            print(f"{state}: uploading it", flush=True)
            try:
                _upload(fs, local, path)
                state = _state(fs, path, md5, size)
            except Exception as exc:  # noqa: BLE001 - reported with the remote's reason, exit 1
                print(f"error: {state}, and uploading it failed: {_why(odb, exc)}")
                return 1
    print(state)
    return 0 if state.startswith("ok") else 1


def _why(odb, exc: BaseException) -> str:
    """The remote's reason for ``exc``; on S3 in words (a HEAD's 403 or 404 carries no error code,
    so the bucket is asked once more, by a listing whose error says which)."""
    if not s3_remote.is_s3(odb.fs):
        return _reason(exc)
    bucket, prefix = _bucket_and_prefix(odb)
    if not s3_remote.is_bare_refusal(exc):  # it says why already (or S3 was not reached at all)
        return s3_remote.explain(exc, bucket)
    return s3_remote.diagnose(odb.fs, bucket, prefix) or s3_remote.explain(exc, bucket)


def _bucket_and_prefix(odb) -> tuple[str, str]:
    """An S3 remote's bucket and the key prefix of its objects (``bucket/prefix/files/md5``)."""
    bucket, _, prefix = str(odb.path).partition("/")
    return bucket, prefix


def fetch_object(remote: str, md5: str, dest: str) -> int:
    """``fetch-object NAME MD5 DEST``: download the object to DEST (written beside it, then renamed),
    hashing while it streams; DEST is only created when the bytes match."""
    from dvc.repo import Repo

    tmp = f"{dest}.{uuid.uuid4().hex}.partial"
    try:
        with Repo(".") as repo:
            odb = repo.cloud.get_remote_odb(remote, "fetch-object")
            fs, path = odb.fs, odb.oid_to_path(md5)
            try:
                fs.info(path)
            except FileNotFoundError:
                reason = s3_remote.diagnose(fs, *_bucket_and_prefix(odb)) if s3_remote.is_s3(fs) else None
                print(f"missing: object {md5} is not on the remote" + (f" ({reason})" if reason else ""))
                return 1
            except Exception as exc:  # noqa: BLE001 - reported with the remote's reason, exit 1
                print(f"error: cannot read object {md5} on the remote: {_why(odb, exc)}")
                return 1
            digest = hashlib.md5()
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with fs.open(path, "rb") as src, open(tmp, "wb") as out:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        print(f"error: cannot write {dest}: {_reason(exc, 'the local disk')}")
                        return 1
            if digest.hexdigest() != md5:
                print(f"corrupt: object {md5} on the remote holds bytes with md5 {digest.hexdigest()}")
                return 1
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
    except Exception as exc:  # noqa: BLE001 - reported with the remote's or the disk's reason, exit 1
        print(f"error: {_reason(exc)}")
        return 1
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"ok: object {md5} fetched and verified")
    return 0


def main(argv: list[str]) -> int:
    _patch_ssh()
    s3_remote.patch_dvc_s3()
    if argv[:1] in (["ensure-remote"], ["fetch-object"]) and (len(argv) < 3 or not MD5_HEX.fullmatch(argv[2])):
        print(f"error: {argv[0]} needs a 32-hex-digit md5, got {argv[2:3]}")
        return 2
    if argv[:1] == ["ensure-remote"] and len(argv) in (4, 5):
        return ensure_remote(argv[1], argv[2], int(argv[3]), argv[4] if len(argv) == 5 else None)
    if argv[:1] == ["fetch-object"] and len(argv) == 4:
        return fetch_object(argv[1], argv[2], argv[3])
    from dvc.cli import main as dvc_main

    return dvc_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
