"""The publish protocol against a real sshd, a bare git registry and an SSH DVC remote."""
import hashlib
import threading

import pytest

from conftest import plain_pull, run
from dataset_registry.registry import RegistryClient, RegistryError, VersionConflictError


def publish(registry, project, version, content: bytes, work_dir=None, **overrides):
    client = RegistryClient(registry.settings(work_dir, **overrides))
    staged = client.staging_file(project, "train.csv")
    staged.write_bytes(content)
    return client.publish(project, "train.csv", version, staged, hashlib.md5(content).hexdigest(), content.count(b"\n") - 1)


def test_publish_over_ssh_and_pull_with_plain_git_and_dvc(tmp_path, registry, sshd):
    content = "id,name\n1,Zoë\n2,\"a,b\"\n".encode()
    res = publish(registry, "sales", "v1", content)
    assert res.created and res.tag == "sales/v1" and res.rows == 2 and res.bytes == len(content)
    assert registry.tags() == ["sales/v1"]
    assert registry.git("rev-parse", "sales/v1^{commit}") == res.commit
    # The registry is standard: .dvc file at <project>/<output>.dvc, DVC set up, no credentials tracked.
    files = registry.git("ls-tree", "-r", "--name-only", "sales/v1").splitlines()
    assert "sales/train.csv.dvc" in files and ".dvc/config" in files
    tracked_config = registry.git("show", "sales/v1:.dvc/config")
    assert "keyfile" not in tracked_config and str(sshd.key_file) not in tracked_config
    pulled = plain_pull(registry, sshd, "sales/v1", tmp_path / "by-hand", "sales/train.csv")
    assert pulled == content


def test_republish_same_bytes_changes_nothing(registry):
    content = b"a\n1\n"
    first = publish(registry, "sales", "v1", content)
    commits = registry.commit_count()
    again = publish(registry, "sales", "v1", content)
    assert not again.created and again.commit == first.commit
    assert registry.commit_count() == commits and registry.tags() == ["sales/v1"]


def test_same_version_different_bytes_fails_naming_both_md5s(registry):
    publish(registry, "sales", "v1", b"a\n1\n")
    commits = registry.commit_count()
    with pytest.raises(VersionConflictError) as err:
        publish(registry, "sales", "v1", b"a\n2\n")
    assert hashlib.md5(b"a\n1\n").hexdigest() in str(err.value)
    assert hashlib.md5(b"a\n2\n").hexdigest() in str(err.value)
    assert registry.commit_count() == commits
    assert registry.git("rev-parse", "sales/v1^{commit}")  # untouched


def test_new_version_with_unchanged_data_adds_tag_without_commit(registry):
    publish(registry, "sales", "v1", b"a\n1\n")
    commits = registry.commit_count()
    res = publish(registry, "sales", "v2", b"a\n1\n")
    assert res.created and registry.commit_count() == commits
    assert sorted(registry.tags()) == ["sales/v1", "sales/v2"]


def test_two_projects_publishing_at_the_same_time_both_land(tmp_path, registry, sshd):
    results, errors = {}, []

    def worker(project):
        try:  # separate work dirs: two workers with their own clone and cache
            results[project] = publish(registry, project, "v1", f"p\n{project}\n".encode(), work_dir=tmp_path / f"w-{project}")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(p,)) for p in ("alpha", "beta")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(registry.tags()) == ["alpha/v1", "beta/v1"]
    assert registry.commit_count() == 3  # init + one per project
    for project in ("alpha", "beta"):
        assert plain_pull(registry, sshd, f"{project}/v1", tmp_path / f"pull-{project}", f"{project}/train.csv") == f"p\n{project}\n".encode()


def test_wrong_key_fails_and_publishes_nothing(tmp_path, registry):
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp_path / "stranger"])
    with pytest.raises(RegistryError) as err:
        publish(registry, "sales", "v1", b"a\n1\n", key_file=str(tmp_path / "stranger"))
    assert "registry repository" in str(err.value)
    assert registry.tags() == [] and registry.commit_count() == 0


def test_unknown_host_key_is_refused(tmp_path, registry, sshd):
    other = tmp_path / "known_hosts"
    other.write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBv5cXwDDrjeHNE1Ftq5ZTXXAFpdLyZXZ8NEXbQ9nq3n\n")
    with pytest.raises(RegistryError) as err:
        publish(registry, "sales", "v1", b"a\n1\n", known_hosts=str(other))
    assert "Host key verification failed" in str(err.value) or "REMOTE HOST IDENTIFICATION" in str(err.value)
    assert registry.tags() == []


def test_dvc_remote_unreachable_publishes_no_commit_or_tag(tmp_path, registry, sshd):
    from conftest import free_port

    dead = registry.remote_url.replace(f":{sshd.port}/", f":{free_port()}/")
    with pytest.raises(RegistryError) as err:
        publish(registry, "sales", "v1", b"a\n1\n", remote_url=dead)
    assert "DVC remote" in str(err.value)
    assert registry.tags() == [] and registry.commit_count() == 0
    # After the fault, a normal run converges.
    assert publish(registry, "sales", "v1", b"a\n1\n").created


def test_existing_non_dvc_repository_is_refused(tmp_path, registry):
    seed = tmp_path / "seed"
    run(["git", "init", "-q", "-b", "main", seed])
    (seed / "x.txt").write_text("x")
    run(["git", "-C", seed, "add", "."])
    run(["git", "-C", seed, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"])
    run(["git", "-C", seed, "push", "-q", str(registry.bare), "main"])
    with pytest.raises(RegistryError, match="not a DVC repository"):
        publish(registry, "sales", "v1", b"a\n1\n")


def test_ssh_options_pushed_into_the_tracked_dvc_config_are_not_trusted(tmp_path, registry, sshd):
    """Whoever can push writes the registry's .dvc/config, and DVC lets its options win over the URL:
    a user, port, key file or GSS setting put there must not change how a worker logs in."""
    import os
    import subprocess

    publish(registry, "sales", "v1", b"a\n1\n")
    evil = tmp_path / "evil"
    env = {**os.environ, "GIT_AUTHOR_NAME": "e", "GIT_AUTHOR_EMAIL": "e@e", "GIT_COMMITTER_NAME": "e",
           "GIT_COMMITTER_EMAIL": "e@e",
           "GIT_SSH_COMMAND": f"ssh -i {sshd.key_file} -o UserKnownHostsFile={sshd.known_hosts} -o IdentitiesOnly=yes"}
    subprocess.run(["git", "clone", "-q", registry.repo_url, str(evil)], check=True, env=env)
    config = evil / ".dvc" / "config"
    config.write_text(config.read_text() + "    user = nobody\n    port = 1\n    keyfile = /nonexistent/key\n"
                      "    gss_auth = true\n")
    for argv in (["git", "commit", "-q", "-am", "log in elsewhere"], ["git", "push", "-q", "origin", "main"]):
        subprocess.run(argv, cwd=evil, check=True, env=env)
    content = b"a\n2\n"
    result = publish(registry, "sales", "v2", content, work_dir=tmp_path / "w2")
    assert result.created and registry.tags() == ["sales/v1", "sales/v2"]
    md5 = hashlib.md5(content).hexdigest()
    assert (registry.store / "files" / "md5" / md5[:2] / md5[2:]).read_bytes() == content
