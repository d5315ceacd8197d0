"""The registry's fetch started in the background while a version run exports (``sync_ahead``): the
publish then skips its first fetch, and nothing about what gets tagged may depend on it."""
import logging

import pytest

import dataset_registry.working_clone as working_clone
from dataset_registry.registry import RegistryError, VersionConflictError
from test_integrity import CONTENT, client_for, md5, publish_with, remote_object


def _count_fetches(client) -> list:
    calls = []
    original = client.runner.run

    def counting(args, **kwargs):
        if "fetch" in args:
            calls.append(tuple(args))
        return original(args, **kwargs)

    client.runner.run = counting
    return calls


def test_a_sync_ahead_stands_in_for_the_publish_s_first_fetch(registry, caplog):
    client = client_for(registry)
    publish_with(client, "other", "v1", b"o\n1\n")  # the registry exists (the ahead sync needs a branch)
    fetches = _count_fetches(client)
    publish_with(client, "sales", "v1", CONTENT)
    assert len(fetches) == 1  # without it: the clone's sync (a quiet registry's landing round needs no other)
    client.sync_ahead()
    client.wait_ahead()
    assert len(fetches) == 2  # the ahead sync fetched (in its thread)
    caplog.set_level(logging.INFO, logger="dataset_registry.working_clone")
    result = publish_with(client, "sales", "v2", CONTENT + b"9,x\n")
    assert len(fetches) == 2  # the publish itself did not fetch at all
    assert "not fetched again" in caplog.text
    assert result.created and sorted(registry.tags()) == ["other/v1", "sales/v1", "sales/v2"]
    assert registry.git("rev-parse", "sales/v2^{commit}") == registry.git("rev-parse", "main") == result.commit
    assert remote_object(registry, CONTENT + b"9,x\n").read_bytes() == CONTENT + b"9,x\n"
    publish_with(client, "sales", "v3", CONTENT + b"10,y\n")
    assert len(fetches) == 3  # used once: the next publish syncs itself again


def test_a_sync_ahead_that_another_publisher_overtook_still_refuses_a_conflicting_tag(tmp_path, registry):
    ahead = client_for(registry)
    publish_with(ahead, "other", "v1", b"o\n1\n")
    ahead.sync_ahead()
    ahead.wait_ahead()
    other = client_for(registry, tmp_path / "other-worker")
    first = publish_with(other, "sales", "v1", CONTENT)  # after the ahead sync: it has not seen this tag
    with pytest.raises(VersionConflictError) as err:
        publish_with(ahead, "sales", "v1", CONTENT + b"9,x\n")
    assert md5(CONTENT) in str(err.value) and md5(CONTENT + b"9,x\n") in str(err.value)
    assert registry.git("rev-parse", "sales/v1^{commit}") == first.commit  # the tag never moves
    assert f"md5: {md5(CONTENT)}" in registry.git("cat-file", "-p", "sales/v1")
    ahead.sync_ahead()
    ahead.wait_ahead()
    publish_with(other, "other", "v2", b"o\n2\n")
    same = publish_with(ahead, "other", "v2", b"o\n2\n")  # same bytes, tag made meanwhile: not "created"
    assert not same.created and same.commit == registry.git("rev-parse", "other/v2^{commit}")
    publish_with(other, "other", "v3", b"o\n3\n")  # any landing round drops the refused proposal
    assert registry.git("for-each-ref", "refs/registry-pending/") == ""
    assert sorted(registry.tags()) == ["other/v1", "other/v2", "other/v3", "sales/v1"]


def test_a_failed_sync_ahead_leaves_the_publish_to_fetch_and_succeed(registry, caplog):
    client = client_for(registry)
    publish_with(client, "other", "v1", b"o\n1\n")
    away = registry.bare.with_name("registry-away.git")
    registry.bare.rename(away)  # the registry is unreachable while the export runs
    caplog.set_level(logging.INFO, logger="dataset_registry.working_clone")
    try:
        client.sync_ahead()
        client.wait_ahead()
    finally:
        away.rename(registry.bare)
    assert "syncing the working clone ahead failed" in caplog.text
    fetches = _count_fetches(client)
    result = publish_with(client, "sales", "v1", CONTENT)
    assert result.created and len(fetches) == 1 and "sales/v1" in registry.tags()


def test_an_old_sync_ahead_is_not_trusted(registry, monkeypatch):
    client = client_for(registry)
    publish_with(client, "other", "v1", b"o\n1\n")
    monkeypatch.setattr(working_clone, "AHEAD_MAX_AGE", -1.0)  # already too old when the publish starts
    client.sync_ahead()
    client.wait_ahead()
    fetches = _count_fetches(client)
    assert publish_with(client, "sales", "v1", CONTENT).created
    assert len(fetches) == 1


def test_a_sync_ahead_on_an_empty_registry_leaves_initializing_to_the_publish(registry):
    client = client_for(registry)
    client.sync_ahead()  # the registry has no refs yet: nothing to stand in for
    client.wait_ahead()
    fetches = _count_fetches(client)
    result = publish_with(client, "sales", "v1", CONTENT)
    assert result.created and len(fetches) == 1  # the publish synced (and initialized) itself
    tree = registry.git("ls-tree", "--name-only", "main").split()
    assert ".dvc" in tree and "sales" in tree and registry.tags() == ["sales/v1"]


def test_a_tag_landed_on_the_unchanged_tip_meanwhile_is_reported_not_an_error(tmp_path, registry):
    """Another run publishes the same version with the same bytes as the branch head (a tag without a
    new commit) after our view was fetched: our first round's push loses on the tag, not the tip."""
    ahead = client_for(registry)
    publish_with(ahead, "sales", "v1", CONTENT)
    ahead.sync_ahead()
    ahead.wait_ahead()
    other = client_for(registry, tmp_path / "other-worker")
    theirs = publish_with(other, "sales", "v2", CONTENT)  # same data as the head: a tag, no commit
    assert theirs.created and theirs.commit == registry.git("rev-parse", "main")
    their_tag = registry.git("rev-parse", "sales/v2")
    ours = publish_with(ahead, "sales", "v2", CONTENT)
    assert not ours.created and ours.commit == theirs.commit
    assert registry.git("rev-parse", "sales/v2") == their_tag  # the tag never moves
    with pytest.raises(VersionConflictError):  # and different bytes under that tag are still refused
        ahead.sync_ahead()
        publish_with(ahead, "sales", "v2", CONTENT + b"9,x\n")


def test_a_branch_deleted_during_the_export_is_reported_never_re_created(tmp_path, registry):
    client = client_for(registry)
    publish_with(client, "other", "v1", b"o\n1\n")
    client.sync_ahead()
    client.wait_ahead()  # the view still has main
    registry.git("update-ref", "-d", "refs/heads/main")
    with pytest.raises(RegistryError) as err:
        publish_with(client, "sales", "v1", CONTENT)
    assert "has no branch 'main'" in str(err.value)
    assert "main" not in registry.git("for-each-ref", "--format=%(refname:short)", "refs/heads/").split()
    assert registry.tags() == ["other/v1"]


def test_only_the_publish_uses_the_fetch_ahead(registry):
    client = client_for(registry)
    publish_with(client, "sales", "v1", CONTENT)
    client.sync_ahead()
    client.wait_ahead()
    fetches = _count_fetches(client)
    previous = client.previous_version("sales", "train.csv", exclude="v2")  # a check: fetches for itself
    assert previous.tag == "sales/v1" and len(fetches) == 1
    assert publish_with(client, "sales", "v2", CONTENT + b"9,x\n").created
    assert len(fetches) == 1  # the publish still had the fetch ahead to stand on


def test_a_fetch_ahead_does_not_wait_for_a_busy_clone(registry, caplog):
    import fcntl
    import time

    client = client_for(registry)
    publish_with(client, "other", "v1", b"o\n1\n")
    caplog.set_level(logging.INFO, logger="dataset_registry.working_clone")
    with open(client.lock_path, "a+") as held:  # another task on this worker is using the clone
        fcntl.flock(held, fcntl.LOCK_EX)
        started = time.monotonic()
        client.sync_ahead()
        client.wait_ahead()
        assert time.monotonic() - started < 5
        fcntl.flock(held, fcntl.LOCK_UN)
    assert "syncing the working clone ahead failed" in caplog.text
    fetches = _count_fetches(client)
    assert publish_with(client, "sales", "v1", CONTENT).created and len(fetches) == 1


def test_a_tag_on_the_head_s_data_is_never_put_on_a_branch_head_that_moved_on(tmp_path, registry):
    """The version's data equals the head of our (old) view, so no commit is needed there; but the
    branch has moved on meanwhile: the tag must go on a commit at the current tip, not the old one."""
    ahead = client_for(registry)
    old_head = publish_with(ahead, "sales", "v1", CONTENT).commit
    ahead.sync_ahead()
    ahead.wait_ahead()  # the view: main at v1's commit
    other = client_for(registry, tmp_path / "other-worker")
    publish_with(other, "sales", "v2", CONTENT + b"9,x\n")  # main moves on, to other data
    result = publish_with(ahead, "sales", "v3", CONTENT)  # v1's bytes again
    main = registry.git("rev-parse", "main")
    assert result.created and result.commit == main != old_head
    assert registry.git("rev-parse", "sales/v3^{commit}") == main
    assert md5(CONTENT) in registry.git("show", "main:sales/train.csv.dvc")
    assert registry.git("rev-list", "--count", "main") == "4"  # init, v1, v2, v3: linear
