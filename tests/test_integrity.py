"""Integrity of the publish protocol under attack and mishap (issue: a tag never points at bad bytes).

Each test reproduces a case the security review found, against a real sshd, bare git registry and
DVC remote; the case number is the issue's.
"""
import contextlib
import hashlib
import http.server
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import plain_pull, run
from dataset_registry.gitcmd import CommandError, Runner, base_env
from dataset_registry.registry import RegistryClient, RegistryError, RegistrySettings

pytestmark = pytest.mark.slow

FIXED_DATE = "2024-01-01T00:00:00+00:00"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def client_for(registry, work_dir=None, fixed_date=False, **overrides) -> RegistryClient:
    client = RegistryClient(registry.settings(work_dir, **overrides))
    if fixed_date:  # git timestamps have one-second resolution: make "the same second" certain
        client.runner.env.update(GIT_COMMITTER_DATE=FIXED_DATE, GIT_AUTHOR_DATE=FIXED_DATE)
    return client


def publish_with(client: RegistryClient, project: str, version: str, content: bytes):
    staged = client.staging_file(project, "train.csv")
    staged.write_bytes(content)
    return client.publish(project, "train.csv", version, staged, md5(content), content.count(b"\n") - 1)


def remote_object(registry, content: bytes) -> Path:
    digest = md5(content)
    return registry.store / "files" / "md5" / digest[:2] / digest[2:]


def flip_first_byte(path: Path) -> None:
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.write_bytes(bytes(data))


CONTENT = b"id,name\n" + b"".join(b"%d,row %d\n" % (i, i) for i in range(200))


# 2 ---------------------------------------------------------------------------------------------
def test_corrupt_cache_object_is_never_uploaded_the_fresh_export_wins(tmp_path, registry, sshd):
    client = client_for(registry)
    publish_with(client, "sales", "v1", CONTENT)
    cached = client._cache_object(md5(CONTENT))
    flip_first_byte(cached)  # same size, wrong bytes: a size check cannot see it
    remote_object(registry, CONTENT).unlink()  # so the next publish has to upload
    result = publish_with(client, "sales", "v2", CONTENT)
    assert result.created
    assert md5(remote_object(registry, CONTENT).read_bytes()) == md5(CONTENT)
    assert md5(cached.read_bytes()) == md5(CONTENT)  # the cache now holds the fresh bytes too
    for tag in ("sales/v1", "sales/v2"):  # the older tag with the same md5 is recoverable
        assert plain_pull(registry, sshd, tag, tmp_path / tag.replace("/", "-"), "sales/train.csv") == CONTENT


def test_corrupt_remote_object_is_detected_by_content_and_replaced(tmp_path, registry, sshd):
    client = client_for(registry)
    publish_with(client, "sales", "v1", CONTENT)
    flip_first_byte(remote_object(registry, CONTENT))
    result = publish_with(client, "sales", "v2", CONTENT)  # same bytes, new version
    assert result.created
    assert remote_object(registry, CONTENT).read_bytes() == CONTENT
    assert plain_pull(registry, sshd, "sales/v1", tmp_path / "pull", "sales/train.csv") == CONTENT


def test_truncated_cache_object_does_not_block_reruns(registry):
    client = client_for(registry)
    publish_with(client, "sales", "v1", CONTENT)
    cached = client._cache_object(md5(CONTENT))
    cached.chmod(0o644)
    cached.write_bytes(CONTENT[:10])
    remote_object(registry, CONTENT).unlink()
    assert publish_with(client, "sales", "v2", CONTENT).created
    assert remote_object(registry, CONTENT).read_bytes() == CONTENT


# 3 ---------------------------------------------------------------------------------------------
def test_republishing_the_same_bytes_restores_a_lost_remote_object(tmp_path, registry, sshd):
    client = client_for(registry)
    first = publish_with(client, "sales", "v1", CONTENT)
    remote_object(registry, CONTENT).unlink()
    client._cache_object(md5(CONTENT)).chmod(0o644)
    client._cache_object(md5(CONTENT)).unlink()  # nothing left but the fresh export
    again = publish_with(client, "sales", "v1", CONTENT)
    assert not again.created and again.commit == first.commit and registry.tags() == ["sales/v1"]
    assert plain_pull(registry, sshd, "sales/v1", tmp_path / "pull", "sales/train.csv") == CONTENT


def test_hand_pushed_tag_without_its_object_gets_the_object(tmp_path, registry, sshd):
    publish_with(client_for(registry), "other", "v1", b"x\n1\n")  # initializes the registry
    by_hand = tmp_path / "by-hand"
    env = {**os.environ, "GIT_SSH_COMMAND": f"ssh -i {sshd.key_file} -o UserKnownHostsFile={sshd.known_hosts}"}
    run(["git", "clone", "-q", registry.repo_url, by_hand], env=env)
    (by_hand / "sales").mkdir()
    (by_hand / "sales" / "train.csv.dvc").write_text(
        f"outs:\n- md5: {md5(CONTENT)}\n  size: {len(CONTENT)}\n  hash: md5\n  path: train.csv\n")
    run(["git", "-c", "user.name=x", "-c", "user.email=x@x", "add", "."], cwd=by_hand, env=env)
    run(["git", "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-qm", "by hand"], cwd=by_hand, env=env)
    run(["git", "-c", "user.name=x", "-c", "user.email=x@x", "tag", "-a", "-m", "by hand", "sales/v1"], cwd=by_hand, env=env)
    run(["git", "push", "-q", "origin", "main", "sales/v1"], cwd=by_hand, env=env)
    assert not remote_object(registry, CONTENT).exists()
    result = publish_with(client_for(registry), "sales", "v1", CONTENT)
    assert not result.created
    assert plain_pull(registry, sshd, "sales/v1", tmp_path / "pull", "sales/train.csv") == CONTENT


# 4 ---------------------------------------------------------------------------------------------
def test_stale_ref_locks_in_the_working_clone_are_cleared(registry):
    client = client_for(registry)
    publish_with(client, "sales", "v1", b"a\n1\n")
    git_dir = client.clone_dir / ".git"
    locks = [git_dir / "refs/heads/main.lock", git_dir / "refs/remotes/origin/main.lock",
             git_dir / "refs/tags/sales/v2.lock", git_dir / "refs/registry-tags/sales/v2.lock",
             git_dir / "packed-refs.lock", git_dir / "config.lock"]
    for lock in locks:
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text("left by a killed git\n")
    assert publish_with(client_for(registry), "sales", "v2", b"a\n2\n").created
    assert sorted(registry.tags()) == ["sales/v1", "sales/v2"]
    assert not any(lock.exists() for lock in locks)


def test_a_landed_push_is_never_reported_as_a_failure(registry):
    client = client_for(registry)
    publish_with(client, "sales", "v1", b"a\n1\n")
    original = client.runner.run
    lock = client.clone_dir / ".git" / "refs" / "registry-tags" / "sales" / "v2.lock"

    def run_then_lock(args, **kwargs):
        proc = original(args, **kwargs)
        if "push" in args:  # a lock appears on the private tag ref right after the push landed
            lock.parent.mkdir(parents=True, exist_ok=True)
            lock.write_text("")
        return proc

    client.runner.run = run_then_lock
    result = publish_with(client, "sales", "v2", b"a\n2\n")
    assert result.created and "sales/v2" in registry.tags()
    assert registry.git("rev-parse", "sales/v2^{commit}") == result.commit


# 5 ---------------------------------------------------------------------------------------------
def test_a_deleted_branch_is_not_an_empty_repository(registry):
    publish_with(client_for(registry), "sales", "v1", b"a\n1\n")
    registry.git("update-ref", "-d", "refs/heads/main")
    with pytest.raises(RegistryError) as err:
        publish_with(client_for(registry), "sales", "v2", b"a\n2\n")
    assert "no branch 'main'" in str(err.value) and "not empty" in str(err.value)
    assert registry.tags() == ["sales/v1"]
    assert registry.git("for-each-ref", "refs/heads/") == ""  # no new root commit pushed


def test_a_branch_that_does_not_exist_names_the_ones_that_do(tmp_path, registry):
    publish_with(client_for(registry), "sales", "v1", b"a\n1\n")
    settings = registry.settings(tmp_path / "w2")
    other = RegistryClient(RegistrySettings(**{**settings.__dict__, "branch": "develop"}))
    with pytest.raises(RegistryError) as err:
        publish_with(other, "sales", "v2", b"a\n2\n")
    assert "no branch 'develop'" in str(err.value) and "branches: main" in str(err.value)
    assert registry.git("for-each-ref", "--format=%(refname)", "refs/heads/") == "refs/heads/main"


# 6 ---------------------------------------------------------------------------------------------
def test_newest_version_is_the_one_published_last_even_within_one_second(registry):
    client = client_for(registry, fixed_date=True)
    publish_with(client, "sales", "v1", b"a\n1\n")
    publish_with(client, "sales", "v2", b"a\n2\n")  # new commit
    publish_with(client, "sales", "v3", b"a\n2\n")  # same data: same commit as v2, tagged after it
    assert registry.git("rev-parse", "sales/v2^{commit}") == registry.git("rev-parse", "sales/v3^{commit}")
    assert client.list_versions("sales") == ["v3", "v2", "v1"]
    newest = client_for(registry).resolve_version("sales", "train.csv", None)
    assert newest.version == "v3"


# 8 ---------------------------------------------------------------------------------------------
def test_concurrent_publishes_of_the_same_bytes_report_one_creation(tmp_path, registry):
    publish_with(client_for(registry), "other", "v1", b"x\n1\n")
    clients = {k: client_for(registry, tmp_path / f"w-{k}", fixed_date=True) for k in "ab"}
    results, errors, barrier = {}, {}, threading.Barrier(2)

    def worker(key):
        barrier.wait()
        try:
            results[key] = publish_with(clients[key], "sales", "v1", CONTENT)
        except Exception as exc:  # noqa: BLE001
            errors[key] = exc

    threads = [threading.Thread(target=worker, args=(k,)) for k in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == {}
    assert sorted(r.created for r in results.values()) == [False, True]
    assert registry.tags() == ["other/v1", "sales/v1"]


# 9 ---------------------------------------------------------------------------------------------
class _AuthRecorder(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        auth = self.headers.get("Authorization")
        if auth:
            import base64

            type(self).seen.append(base64.b64decode(auth.split()[1]).decode())
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="registry"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def auth_recorder():
    """A real HTTP server on loopback that records the Basic credentials git sends (and refuses them)."""
    _AuthRecorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AuthRecorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


def publish_refused(tmp_path, repo_url: str, **settings) -> RegistryError:
    client = RegistryClient(RegistrySettings(repo_url=repo_url, remote_url=str(tmp_path / "store"),
                                             work_dir=tmp_path / "w", **settings))
    with pytest.raises(RegistryError) as err:
        publish_with(client, "sales", "v1", b"a\n1\n")
    return err.value


def test_https_style_prompts_get_the_login_as_user_name_and_the_password_as_password(tmp_path):
    with auth_recorder() as port:
        err = publish_refused(tmp_path, f"http://127.0.0.1:{port}/registry.git", ssh_user="alice", ssh_password="s3cret-pw")
    assert _AuthRecorder.seen and set(_AuthRecorder.seen) == {"alice:s3cret-pw"}
    assert "s3cret-pw" not in str(err)


def stored_text(tmp_path) -> str:
    return "".join(p.read_text(errors="replace") for p in (tmp_path / "w").rglob("*") if p.is_file())


def test_a_token_in_an_https_url_is_used_but_never_stored_or_shown(tmp_path):
    with auth_recorder() as port:
        err = publish_refused(tmp_path, f"http://deploy:tok%2Fen-123@127.0.0.1:{port}/registry.git")
    # git got the token through askpass (it may first try the bare user name, as git does)
    assert "deploy:tok/en-123" in _AuthRecorder.seen and set(_AuthRecorder.seen) <= {"deploy:", "deploy:tok/en-123"}
    assert "tok" not in str(err).replace("stok", "") and "deploy@127.0.0.1" in str(err)
    assert "tok%2Fen-123" not in stored_text(tmp_path) and "tok/en-123" not in stored_text(tmp_path)


def test_a_token_given_as_the_https_user_is_used_but_never_stored_or_shown(tmp_path):
    """``https://<token>@host/x.git`` (how GitHub tokens are usually written): the whole user part is
    the secret; it reaches the server only through askpass and is in no message or file."""
    with auth_recorder() as port:
        err = publish_refused(tmp_path, f"http://ghp_T0KEN-only@127.0.0.1:{port}/registry.git")
    assert "ghp_T0KEN-only:" in _AuthRecorder.seen
    assert "T0KEN" not in str(err) and f"127.0.0.1:{port}/registry.git" in str(err)
    assert "T0KEN" not in stored_text(tmp_path)


# 13 --------------------------------------------------------------------------------------------
def test_dvc_remote_errors_carry_the_remote_s_own_reason(tmp_path, registry, sshd):
    bare_local = str(registry.bare)  # git over a local path: only the DVC remote talks SSH here
    wrong_hosts = tmp_path / "other_known_hosts"
    wrong_hosts.write_text(f"[127.0.0.1]:{sshd.port} " + sshd.known_hosts.read_text().split(" ", 1)[1].replace("A", "B", 1))
    with pytest.raises(RegistryError) as err:
        publish_with(client_for(registry, tmp_path / "w1", repo_url=bare_local, known_hosts=str(wrong_hosts)),
                     "sales", "v1", b"a\n1\n")
    assert "host key" in str(err.value).lower() and "Having any troubles" not in str(err.value)
    closed = f"ssh://{sshd.user}@127.0.0.1:1{registry.store}"
    with pytest.raises(RegistryError) as err:
        publish_with(client_for(registry, tmp_path / "w2", repo_url=bare_local, remote_url=closed), "sales", "v1", b"a\n1\n")
    assert "refused" in str(err.value).lower() or "connect" in str(err.value).lower()
    assert registry.tags() == []


# 14 + 13 ---------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB filesystem (tmpfs; needs root, as CI is)."""
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


BIG = b"x\n" + os.urandom(1_500_000).hex().encode()[:2_000_000] + b"\n"


def test_full_remote_disk_fails_clearly_and_leaves_no_temp_file(tmp_path, registry, sshd, small_disk):
    client = client_for(registry, repo_url=str(registry.bare), remote_url=sshd.url(small_disk))
    with pytest.raises(RegistryError) as err:
        publish_with(client, "sales", "v1", BIG)
    message = str(err.value)
    assert "Having any troubles" not in message and "uploading it failed" in message
    assert "space" in message.lower() or "failure" in message.lower(), message
    assert [p for p in small_disk.rglob("*") if p.is_file()] == []  # no orphan temp upload
    assert registry.tags() == []


def test_full_local_remote_disk_names_no_space(tmp_path, registry, small_disk):
    client = client_for(registry, repo_url=str(registry.bare), remote_url=str(small_disk))
    with pytest.raises(RegistryError) as err:
        publish_with(client, "sales", "v1", BIG)
    assert "No space left" in str(err.value) and "free space" in str(err.value)
    assert [p for p in small_disk.rglob("*") if p.is_file()] == []
    assert registry.tags() == []


def test_stale_staging_files_are_reaped_fresh_ones_kept(registry):
    client = client_for(registry)
    stale = client.staging_dir / "sales.1.deadbeef.train.csv"
    fresh = client.staging_dir / "sales.2.cafecafe.train.csv"
    for path in (stale, fresh):
        path.write_bytes(b"left by a killed run\n")
    two_days_ago = time.time() - 2 * 86400
    os.utime(stale, (two_days_ago, two_days_ago))
    publish_with(client, "sales", "v1", b"a\n1\n")
    assert not stale.exists() and fresh.exists()
    assert sorted(p.name for p in client.staging_dir.iterdir()) == [fresh.name]  # the run's own export is gone too


# 15 --------------------------------------------------------------------------------------------
def test_git_errors_name_the_git_sub_command(tmp_path):
    runner = Runner(tmp_path, base_env())
    run(["git", "init", "-q", tmp_path])
    with pytest.raises(CommandError) as err:
        runner.git("-c", "protocol.ext.allow=never", "-C", str(tmp_path), "rev-parse", "--verify", "no-such-ref")
    assert str(err.value).startswith("git rev-parse failed")


# 16 --------------------------------------------------------------------------------------------
def test_a_relative_work_dir_is_refused_up_front(tmp_path, registry, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RegistryError) as err:
        registry.settings(Path("relative/work"))
    assert "'relative/work' must be an absolute path" in str(err.value)
    assert not (tmp_path / "relative").exists()


# 18 --------------------------------------------------------------------------------------------
def test_full_local_disk_while_pulling_names_the_path(tmp_path, registry, small_disk):
    publish_with(client_for(registry), "sales", "v1", BIG)
    dest = small_disk / "runs" / "train.csv"
    with pytest.raises(RegistryError) as err:
        client_for(registry).pull("sales", "train.csv", "v1", dest)
    assert "no space left" in str(err.value) and str(dest) in str(err.value)
    assert [p for p in small_disk.rglob("*") if p.is_file()] == []  # no .partial left


def test_full_local_disk_while_fetching_into_the_cache_names_the_path(tmp_path, registry, small_disk):
    publish_with(client_for(registry), "sales", "v1", BIG)
    with pytest.raises(RegistryError) as err:
        client_for(registry, small_disk / "worker").pull("sales", "train.csv", "v1", tmp_path / "out" / "train.csv")
    assert "No space left" in str(err.value) and str(small_disk) in str(err.value)
    assert not (tmp_path / "out" / "train.csv").exists()


def test_full_local_disk_while_exporting_names_the_path(mysql_params, mysql_db, small_disk):
    from dataset_registry.mysql_export import ExportError, export_query

    name, _ = mysql_db
    dest = small_disk / "staging" / "big.csv"
    dest.parent.mkdir()
    with pytest.raises(ExportError) as err:
        export_query({**mysql_params, "db": name},
                     "SELECT seq, REPEAT('x', 100) AS pad FROM seq_1_to_100000 ORDER BY seq", dest, fetch_rows=1000)
    assert "no space left on the device while writing the export" in str(err.value)
    assert str(dest) in str(err.value) and "DATASET_WORK_DIR" in str(err.value)
    assert list(dest.parent.iterdir()) == []  # no .partial left


def test_data_file_of_a_killed_train_run_is_reaped_later(tmp_path, monkeypatch):
    from dataset_registry.operators.train_model import reap_stale_run_data

    root = tmp_path / "runs"
    old_run = root / "train_shop" / "manual__old"
    new_run = root / "train_shop" / "manual__new"
    for run_dir in (old_run, new_run):
        (run_dir / "artifacts").mkdir(parents=True)
        (run_dir / "artifacts" / "model.json").write_text("{}")
        (run_dir / "orders.csv").write_bytes(b"id\n1\n")
    two_days_ago = time.time() - 2 * 86400
    os.utime(old_run / "orders.csv", (two_days_ago, two_days_ago))
    reap_stale_run_data(root)
    assert not (old_run / "orders.csv").exists() and (old_run / "artifacts" / "model.json").exists()
    assert (new_run / "orders.csv").exists()


def _push_by_hand(registry, sshd, tmp_path, files: dict, tag: str):
    by_hand = tmp_path / f"by-hand-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "GIT_SSH_COMMAND": f"ssh -i {sshd.key_file} -o UserKnownHostsFile={sshd.known_hosts}"}
    ident = ["-c", "user.name=x", "-c", "user.email=x@x"]
    run(["git", "clone", "-q", registry.repo_url, by_hand], env=env)
    for rel, text in files.items():
        (by_hand / rel).parent.mkdir(parents=True, exist_ok=True)
        (by_hand / rel).write_text(text)
    run(["git", *ident, "add", "."], cwd=by_hand, env=env)
    run(["git", *ident, "commit", "-qm", "by hand"], cwd=by_hand, env=env)
    run(["git", *ident, "tag", "-a", "-m", "by hand", tag], cwd=by_hand, env=env)
    run(["git", "push", "-q", "origin", "main", tag], cwd=by_hand, env=env)


def test_a_crafted_dvc_file_cannot_turn_its_md5_into_a_path(tmp_path, registry, sshd):
    publish_with(client_for(registry), "sales", "v1", CONTENT)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    _push_by_hand(registry, sshd, tmp_path, {"sales/train.csv.dvc":
                  f"outs:\n- md5: xx{victim}\n  size: 9\n  hash: md5\n  path: train.csv\n"}, "sales/evil")
    client = client_for(registry)
    with pytest.raises(RegistryError) as err:  # None: the newest version (evil), as train_<p> takes by default
        client.pull("sales", "train.csv", None, tmp_path / "out" / "train.csv")
    assert "is not 32 lowercase hex digits" in str(err.value)
    assert victim.read_text() == "precious\n" and oct(victim.stat().st_mode & 0o777) != "0o444"


def test_a_directory_in_place_of_the_remote_object_is_reported_not_filled(tmp_path, registry):
    client = client_for(registry)
    publish_with(client, "sales", "v1", CONTENT)
    obj = remote_object(registry, CONTENT)
    obj.unlink()
    obj.mkdir()
    with pytest.raises(RegistryError) as err:
        publish_with(client, "sales", "v2", CONTENT)
    assert "is a directory, not a file" in str(err.value)
    assert list(obj.iterdir()) == [] and "sales/v2" not in registry.tags()


def test_a_crafted_proposal_is_dropped_not_landed(tmp_path, registry, sshd):
    publish_with(client_for(registry), "other", "v1", b"o\n1\n")
    env = {**os.environ, "GIT_SSH_COMMAND": f"ssh -i {sshd.key_file} -o UserKnownHostsFile={sshd.known_hosts}"}
    crafted = tmp_path / "crafted"
    run(["git", "init", "-q", crafted])
    (crafted / "sales").mkdir()
    (crafted / "sales" / "train.csv.dvc").write_text("outs:\n- md5: xx/etc/passwd\n  size: 1\n  hash: md5\n  path: train.csv\n")
    (crafted / "extra.txt").write_text("smuggled\n")
    ident = ["-c", "user.name=x", "-c", "user.email=x@x"]
    run(["git", *ident, "add", "."], cwd=crafted)
    run(["git", *ident, "commit", "-qm", "sales: version evil\n\nmd5: xx/etc/passwd\n"], cwd=crafted)
    run(["git", "push", "-q", registry.repo_url, "HEAD:refs/registry-pending/sales/evil"], cwd=crafted, env=env)
    result = publish_with(client_for(registry), "sales", "v1", CONTENT)
    assert result.created and sorted(registry.tags()) == ["other/v1", "sales/v1"]
    assert registry.git("for-each-ref", "refs/registry-pending/") == ""  # dropped with the landing push
    assert "extra.txt" not in registry.git("ls-tree", "-r", "--name-only", "main")


# The ssh:// remote through one OpenSSH command (dvc_store.SshObjects) ---------------------------
def _count_dvc_children(client: RegistryClient) -> list:
    calls = []
    original = client.runner.dvc_process

    def counting(*args, **kwargs):
        calls.append(args[:1])
        return original(*args, **kwargs)

    client.runner.dvc_process = counting
    return calls


def test_the_ssh_remote_is_checked_and_filled_without_a_dvc_child(tmp_path, registry, sshd):
    client = client_for(registry)
    publish_with(client, "other", "v1", b"o\n1\n")  # initializes the registry (dvc init)
    calls = _count_dvc_children(client)
    publish_with(client, "sales", "v1", CONTENT)
    obj = remote_object(registry, CONTENT)
    obj.chmod(0o644)
    obj.write_bytes(CONTENT[:-5])  # truncated on the remote: found by size, replaced
    publish_with(client, "sales", "v2", CONTENT)
    flip_first_byte(obj)  # same size, wrong bytes: found by the remote's md5sum, replaced
    publish_with(client, "sales", "v3", CONTENT)
    assert calls == [] and obj.read_bytes() == CONTENT
    assert [p.name for p in obj.parent.iterdir()] == [obj.name]  # no temporary file left
    assert plain_pull(registry, sshd, "sales/v3", tmp_path / "pull", "sales/train.csv") == CONTENT


def test_bytes_that_do_not_match_their_md5_are_never_placed_on_the_ssh_remote(tmp_path, registry):
    client = client_for(registry)
    publish_with(client, "other", "v1", b"o\n1\n")
    original = RegistryClient._push_data

    def damage_cache(self, rel, md5_, size):
        flip_first_byte(self._cache_object(md5_))  # after the export hashed it, before the upload
        return original(self, rel, md5_, size)

    client._push_data = damage_cache.__get__(client)
    with pytest.raises(RegistryError) as err:
        publish_with(client, "sales", "v1", CONTENT)
    assert "did not verify" in str(err.value) and "Nothing was committed or tagged" in str(err.value)
    assert not remote_object(registry, CONTENT).parent.exists() or \
        list(remote_object(registry, CONTENT).parent.iterdir()) == []  # no object, no temporary file
    assert "sales/v1" not in registry.tags()
    del client._push_data
    assert publish_with(client, "sales", "v1", CONTENT).created  # a rerun converges
    assert remote_object(registry, CONTENT).read_bytes() == CONTENT


def test_an_sftp_only_remote_host_is_checked_through_dvc(tmp_path, registry):
    from conftest import make_sshd

    sftp_only = make_sshd(tmp_path / "sftp-only", "PasswordAuthentication no\nForceCommand internal-sftp\n")
    try:
        store = tmp_path / "sftp-store"
        store.mkdir()
        client = client_for(registry, repo_url=str(registry.bare), remote_url=sftp_only.url(store),
                            key_file=str(sftp_only.key_file), known_hosts=str(sftp_only.known_hosts))
        publish_with(client, "other", "v1", b"o\n1\n")
        calls = _count_dvc_children(client)
        publish_with(client, "sales", "v1", CONTENT)
        assert calls == [("ensure-remote",)]  # the shell-less host is left to DVC's SFTP filesystem
        obj = store / "files" / "md5" / md5(CONTENT)[:2] / md5(CONTENT)[2:]
        assert obj.read_bytes() == CONTENT
        flip_first_byte(obj)
        publish_with(client, "sales", "v2", CONTENT)  # read back and hashed there, replaced
        assert obj.read_bytes() == CONTENT
    finally:
        sftp_only.stop()
