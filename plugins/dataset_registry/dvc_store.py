"""The worker's DVC cache and the registry's DVC remote: content-addressed objects, proven by their md5.

The cache is a plain DVC 3 cache (``files/md5/ab/cdef…``), so ``dvc`` itself can use it. An md5
from the registry becomes a path only after it is checked to be 32 lowercase hex digits (anyone who
can push to the registry writes those values). Fresh exports replace what the cache holds under
their md5; objects leave the cache only through a copy that is hashed on the way. The remote is
checked and filled by ``dvc_cli``'s object-level commands, which hash the remote's content rather
than trust its size (on S3, an ETag equal to the md5, which S3 computes for a single-part upload
from the bytes it stored, is that hash; any other ETag means reading the object back). On an ssh://
remote whose host has a POSIX shell and ``md5sum`` (the usual SSH host), the same check, upload and
re-check run as one OpenSSH command (``SshObjects``) instead of a Python child that imports DVC.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

from dataset_registry.disk import disk_problem
from dataset_registry.dvc_cli import MD5_HEX
from dataset_registry.gitcmd import Runner, redact
from dataset_registry.names import validate_output, validate_project
from dataset_registry.registry_errors import RegistryError

log = logging.getLogger(__name__)

DVC_REMOTE = "storage"
STALE_STAGING_SECONDS = 86400  # exports left by killed runs are reaped after a day


def dvc_file_text(output: str, md5: str, size: int) -> str:
    """The .dvc file exactly as ``dvc add`` (DVC 3) writes it for one file."""
    return f"outs:\n- md5: {md5}\n  size: {size}\n  hash: md5\n  path: {output}\n"


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


def gitignore_with(text: str, output: str) -> str:
    """The project's .gitignore (its current ``text``) with the data file ignored, as ``dvc add`` leaves it."""
    line = f"/{output}"
    if line in text.splitlines():
        return text
    return text + ("" if not text or text.endswith("\n") else "\n") + line + "\n"


def local_disk_error(exc: OSError, path: Path, doing: str) -> RegistryError | OSError:
    """A RegistryError naming ``path`` for a full or unwritable disk; other OS errors as they are."""
    message = disk_problem(exc, path, doing)
    return RegistryError(message) if message else exc


def _last_line(proc) -> str:
    lines = ((proc.stdout or "") + (proc.stderr or "")).strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


# Run on the SSH host by ``sh -c SCRIPT dsr OBJECT MD5 SIZE TMP``: the object's content is hashed there
# (md5sum); when it is missing or wrong, the fresh bytes are read from stdin into TMP beside it, TMP is
# hashed, and only bytes with the right md5 are renamed over the object (atomic in one folder). A
# client that dies mid-upload leaves a short TMP that fails the hash and is removed. Every answer is
# one "dsr: WORD text" line; anything else on stdout (a chatty login script) is ignored.
REMOTE_SCRIPT = r"""
set -f
obj=$1 want=$2 size=$3 tmp=$4
say() { printf 'dsr: %s\n' "$*"; }
command -v md5sum >/dev/null 2>&1 || { say unsupported no md5sum on the remote host; exit 0; }
say hello
check() {
  if [ -d "$1" ] || { [ -e "$1" ] && [ ! -f "$1" ]; }; then
    what='special file'; [ -d "$1" ] && what=directory
    rm -f -- "$tmp"
    say "error the remote path of object $want is a $what, not a file: remove it by hand (nothing was uploaded)"
    exit 1
  fi
  if [ ! -e "$1" ]; then state="missing: object $want is not on the remote"; return; fi
  have=$(wc -c < "$1" 2>&1) || { rm -f -- "$tmp"; say "error cannot read object $want on the remote:" $have; exit 1; }
  have=$(echo $have)
  if [ "$have" != "$size" ]; then state="corrupt: object $want has $have bytes on the remote, expected $size"; return; fi
  sum=$(md5sum < "$1" 2>&1) || { rm -f -- "$tmp"; say "error cannot read object $want on the remote:" $sum; exit 1; }
  sum=${sum%% *}
  if [ "$sum" != "$want" ]; then state="corrupt: object $want on the remote holds bytes with md5 $sum"; return; fi
  state=ok
}
check "$obj"
if [ "$state" = ok ]; then say "ok ok: object $want ($size bytes) is on the remote, content verified (md5sum on the remote host)"; exit 0; fi
first=$state
trap 'rm -f -- "$tmp"' EXIT
trap 'rm -f -- "$tmp"; exit 1' HUP INT PIPE TERM
say "upload $first"
err=$( { mkdir -p -- "${obj%/*}" && cat > "$tmp"; } 2>&1 ) || { rm -f -- "$tmp"; say "error $first, and uploading it failed:" $err; exit 1; }
check "$tmp"
if [ "$state" != ok ]; then rm -f -- "$tmp"; say "error $first, and the uploaded copy did not verify: ${state#*: }"; exit 1; fi
err=$(mv -f -- "$tmp" "$obj" 2>&1) || { rm -f -- "$tmp"; say "error $first, and uploading it failed:" $err; exit 1; }
# the verified bytes are the renamed inode: check only that they landed as the object (not inside a
# directory that appeared there meanwhile)
if [ ! -f "$obj" ] || [ -e "$tmp" ]; then rm -f -- "$tmp"; say "error $first, and the uploaded copy could not take the object's place"; exit 1; fi
say "ok ok: object $want ($size bytes) is on the remote, content verified (uploaded, md5sum on the remote host)"
"""


HELLO_SECONDS = 45.0  # connect (ConnectTimeout=20) + login scripts; sftp-only hosts never say hello
# A host (ssh argv) that connected but did not run the script goes through DVC for NO_SHELL_SECONDS,
# then is tried again: a sshd that was only slow to answer (a burst of logins) must not cost the
# worker its fast path for good. Remembered in this process and, since Airflow runs every task in a
# process of its own, as a marker file in the worker's folder (``state_dir``).
NO_SHELL_SECONDS = 600.0
_NO_SHELL: dict[tuple[str, ...], float] = {}  # ssh argv -> time.monotonic() when it may be tried again


class SshObjects:
    """An ssh:// DVC remote's objects through the OpenSSH client: check, upload and re-check in ONE
    connection (``REMOTE_SCRIPT``), with the same login, key and host-key policy as DVC's SSH filesystem.

    Why: the check through DVC costs a Python child that imports DVC and opens its own SSH connection,
    and an upload through it a second hash of the object. The proof is the same: the remote's bytes are
    hashed on the remote host, never trusted by name or size.

    :param ssh: OpenSSH argv up to and including the host (``SubprocessEnv.remote_ssh``)
    :param root: the remote's folder on that host
    :param env: the environment of ``ssh`` (no password, no askpass)
    :param secrets: values redacted from every message
    :param timeout: seconds the whole command may take
    :param state_dir: where a host that cannot run the script is remembered across processes
    """

    def __init__(self, ssh: list[str], root: str, env: dict[str, str], secrets=(), timeout: float = 3600,
                 state_dir: Path | None = None):
        self.ssh = list(ssh)
        self.root = root
        self.env = env
        self.secrets = list(secrets)
        self.timeout = timeout
        digest = hashlib.sha256("\0".join(self.ssh).encode()).hexdigest()[:16]
        self.no_shell_marker = Path(state_dir) / f"ssh-no-shell-{digest}" if state_dir is not None else None

    def _shell_less(self) -> bool:
        """Whether this host failed to run the script less than NO_SHELL_SECONDS ago."""
        if _NO_SHELL.get(tuple(self.ssh), 0.0) > time.monotonic():
            return True
        try:
            return self.no_shell_marker is not None and \
                time.time() - self.no_shell_marker.stat().st_mtime < NO_SHELL_SECONDS
        except OSError:
            return False

    def _remember_shell_less(self) -> None:
        _NO_SHELL[tuple(self.ssh)] = time.monotonic() + NO_SHELL_SECONDS
        if self.no_shell_marker is not None:
            try:
                self.no_shell_marker.parent.mkdir(parents=True, exist_ok=True)
                self.no_shell_marker.write_text(f"{shlex.join(self.ssh)}\n")
            except OSError as exc:  # only a cost: the next task waits for the hello again
                log.info("cannot remember the shell-less host in %s: %s", self.no_shell_marker, exc)

    def ensure(self, md5: str, size: int, local: Path) -> tuple[bool, list[str]] | None:
        """(proven, what the remote said, last line = the verdict); None when this host cannot run the
        script or could not be reached (DVC's filesystem then does it, and words any connection error)."""
        if not MD5_HEX.fullmatch(md5):
            raise RegistryError(f"refusing md5 {md5[:80]!r}: not 32 lowercase hex digits")
        if self._shell_less():
            return None
        folder = f"{self.root}/files/md5/{md5[:2]}"
        tmp = f"{folder}/.{md5[2:]}.{uuid.uuid4().hex}.tmp"
        command = shlex.join(["sh", "-c", REMOTE_SCRIPT, "dsr", f"{folder}/{md5[2:]}", md5, str(int(size)), tmp])
        try:
            proc = subprocess.Popen([*self.ssh, command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, env=self.env)
        except OSError as exc:  # no ssh client on this worker
            log.info("cannot run %s (%s): checking the DVC remote through DVC's SSH filesystem", self.ssh[0], exc)
            return None
        timer = threading.Timer(self.timeout, proc.kill)
        timer.daemon = True
        timer.start()
        # An account with `ForceCommand internal-sftp` runs sftp-server instead, which waits for us:
        # without a hello soon, give up on this host (for this process) and let DVC's SFTP do it.
        late: list[bool] = []
        hello_timer = threading.Timer(HELLO_SECONDS, lambda: (late.append(True), proc.kill()))
        hello_timer.daemon = True
        hello_timer.start()
        said, other, verdict, hello, local_error, first = [], [], None, False, None, ""
        try:
            for raw in proc.stdout:
                line = redact(raw.decode("utf-8", "replace").rstrip("\r\n"), self.secrets)
                if not line.startswith("dsr: "):
                    other.append(line)
                    continue
                word, _, text = line[len("dsr: "):].partition(" ")
                if word == "hello":
                    hello = True
                    hello_timer.cancel()
                elif word == "unsupported":
                    late.append(True)  # the host has no md5sum: it will not have one next time either
                elif word == "upload":
                    first = text
                    said.append(f"{text}: uploading it")
                    local_error = self._send(proc, local)
                elif word in ("ok", "error"):
                    verdict = (word == "ok", text)
            if proc.stdin and not proc.stdin.closed:
                self._close(proc)
            proc.wait()
        finally:
            timer.cancel()
            hello_timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        if not hello:
            log.info("the DVC remote's host did not run our check (%s): checking through DVC's SSH filesystem",
                     (other[-1] if other else f"ssh exit {proc.returncode}")[-300:])
            if late:  # no hello in time, or no md5sum there: not for a refused connection
                self._remember_shell_less()
                log.info("this host's objects go through DVC's SSH filesystem for the next %.0f s", NO_SHELL_SECONDS)
            return None
        if local_error is not None:
            return False, [*said, f"error: {first}, and uploading it failed: {local_error}"]
        if verdict is None:
            reason = (other[-1] if other else f"ssh exit {proc.returncode}")[-500:]
            return False, [*said, f"error: the connection to the remote ended before it answered: {reason}"]
        ok, text = verdict
        if not ok and "No space left" in text:
            text += " (the remote is out of space: free space there, then rerun)"
        return ok, [*said, text if ok else f"error: {text}"]

    @staticmethod
    def _send(proc: subprocess.Popen, local: Path) -> str | None:
        """Stream the local object to the remote's stdin; a local problem as words (the remote then
        sees short input, which fails its hash and is removed)."""
        error = None
        try:
            with open(local, "rb") as src:
                out, offset = proc.stdin.fileno(), 0
                while sent := os.sendfile(out, src.fileno(), offset, 1 << 22):
                    offset += sent
        except BrokenPipeError:
            pass  # the far side stopped reading: its answer says why
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc.strerror or exc} ({local})"
        SshObjects._close(proc)
        return error

    @staticmethod
    def _close(proc: subprocess.Popen) -> None:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass


class DvcStore:
    """The local DVC cache of one worker, and the DVC remote as the working clone's DVC sees it.

    :param cache_dir: the worker's DVC cache (created on first use)
    :param remote_url: the DVC remote (``ssh://…``, ``s3://…`` or an absolute path)
    :param repo_dir: the working clone: ``dvc_cli`` runs there, and its git-ignored DVC config points here
    :param runner: runs ``dvc_cli`` (its environment carries the SSH/S3 credentials; output is redacted)
    :param remote_options: more options of the remote for the git-ignored config (an S3 endpoint and
        region; never a secret)
    :param ssh_objects: the remote's objects through OpenSSH (ssh:// remotes whose URL allows it), tried
        before ``dvc_cli``
    """

    def __init__(self, cache_dir: Path, remote_url: str, repo_dir: Path, runner: Runner,
                 remote_options: dict[str, str] | None = None, ssh_objects: SshObjects | None = None):
        self.cache_dir = Path(cache_dir)
        self.remote_url = remote_url
        self.repo_dir = Path(repo_dir)
        self.runner = runner
        self.remote_options = dict(remote_options or {})
        self.ssh_objects = ssh_objects

    def object_path(self, md5: str) -> Path:
        """Where the cache keeps the object with this md5 (which must be 32 lowercase hex digits)."""
        if not MD5_HEX.fullmatch(md5):  # never let a value from the registry become an arbitrary path
            raise RegistryError(f"refusing md5 {md5[:80]!r}: not 32 lowercase hex digits")
        return self.cache_dir / "files" / "md5" / md5[:2] / md5[2:]

    def has(self, md5: str) -> bool:
        return self.object_path(md5).is_file()

    def configure(self) -> None:
        """Run-time DVC settings of the working clone, git-ignored: remote URL (and an S3 endpoint and
        region) and this worker's shared cache. No secrets (they travel in the environment)."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        text = (
            "[cache]\n"
            f'    dir = "{self.cache_dir}"\n'
            '    type = "reflink,hardlink,copy"\n'
            f"['remote \"{DVC_REMOTE}\"']\n"
            f'    url = "{self.remote_url}"\n'
        )
        for name, value in sorted(self.remote_options.items()):  # validated: no quotes, no line breaks
            text += f'    {name} = "{value}"\n'
        path = self.repo_dir / ".dvc" / "config.local"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)

    def add(self, data_file: Path, md5: str) -> None:
        """What ``dvc add`` does, without hashing the file a second time: the export computed the md5
        while writing. The fresh file always REPLACES whatever the cache holds under that name (a
        cached copy may have been damaged since; the fresh bytes are the ones we hashed). Renamed
        into the content-addressed cache (same filesystem: staging sits next to the cache),
        read-only like DVC's own."""
        obj = self.object_path(md5)
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

    def copy_out(self, md5: str, dest: Path, label: str) -> None:
        """Copy the cached object to ``dest`` (a file path), hashing it on the way: ``dest`` appears only
        when the bytes have this md5. A corrupt cache object is removed (the next pull fetches it
        again); on any failure no file is left at ``dest``. ``label`` names the data in messages."""
        obj = self.object_path(md5)
        dest = Path(dest)
        partial = dest.with_name(dest.name + ".partial")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.md5()
            with open(obj, "rb") as src, open(partial, "wb") as out:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != md5:
                obj.chmod(0o644)
                obj.unlink(missing_ok=True)  # a corrupt cache object: the next pull fetches it again
                raise RegistryError(f"{label}: the data has md5 {digest.hexdigest()}, the .dvc file says {md5} "
                                    "(corrupt local cache object removed; rerun to fetch it again)")
            os.replace(partial, dest)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise local_disk_error(exc, dest, f"copying {label} to") from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def ensure_remote(self, rel: str, md5: str, size: int) -> None:
        """Make the DVC remote hold exactly the cached bytes: its content is hashed, and uploaded from
        the cache (the fresh export) when missing or wrong. Nothing is committed before this holds."""
        log.info("ensuring %s (md5 %s, %d bytes) is on the DVC remote %s", rel, md5, size, self.remote_url)
        answer = self.ssh_objects.ensure(md5, size, self.object_path(md5)) if self.ssh_objects else None
        if answer is None:
            check = self._tool("ensure-remote", DVC_REMOTE, md5, str(size), str(self.object_path(md5)))
            answer = check.returncode == 0, (check.stdout or "").splitlines()[:-1] + [_last_line(check)]
        ok, lines = answer
        for line in lines[:-1]:
            log.info("DVC remote: %s", line)
        if not ok:
            raise RegistryError(
                f"the DVC remote {self.remote_url} does not hold {rel} (md5 {md5}): {lines[-1]}. "
                "Nothing was committed or tagged; fix the remote and publish again."
            )
        log.info("verified on the DVC remote: %s", lines[-1])

    def fetch(self, md5: str, label: str) -> None:
        """Download the object from the remote into the cache, hashed while it streams (it appears in
        the cache only when the bytes match). ``label`` names the data in messages."""
        log.info("fetching %s (%s) from the DVC remote %s", label, md5, self.remote_url)
        obj = self.object_path(md5)
        check = self._tool("fetch-object", DVC_REMOTE, md5, str(obj))
        if check.returncode != 0 or not obj.is_file():
            raise RegistryError(f"cannot get {label} (md5 {md5}) from the DVC remote {self.remote_url}: "
                                f"{_last_line(check)}")

    def _tool(self, *args: str):
        """Our ``dvc_cli`` sub-commands (object-level work on the DVC remote); output redacted."""
        proc = self.runner.dvc_process(*args)
        proc.stdout = redact(proc.stdout or "", self.runner.secrets)
        proc.stderr = redact(proc.stderr or "", self.runner.secrets)
        return proc


class StagingArea:
    """Where exports are written before they join the cache: beside it, so placing one is a rename.

    :param directory: the staging folder (created on first use)
    """

    def __init__(self, directory: Path):
        self._directory = Path(directory)

    @property
    def directory(self) -> Path:
        """The staging folder; created here, on first use, so that constructing touches no disk."""
        self._directory.mkdir(parents=True, exist_ok=True)
        return self._directory

    def new_file(self, project: str, output: str) -> Path:
        """A fresh path for one export of ``<project>/<output>``. Exports that killed runs left behind
        (older than a day) are removed first."""
        validate_project(project)
        validate_output(output)
        directory = self.directory
        self._reap_stale(directory)
        return directory / f"{project}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{output}"

    @staticmethod
    def _reap_stale(directory: Path) -> None:
        cutoff = time.time() - STALE_STAGING_SECONDS
        for stale in directory.iterdir():
            try:
                if stale.is_file() and stale.stat().st_mtime < cutoff:
                    stale.unlink()
                    log.info("removed stale staging file %s (left by a killed run)", stale)
            except FileNotFoundError:
                pass  # another process reaped it first
