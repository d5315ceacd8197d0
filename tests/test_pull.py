"""Pulling versions over the real sshd: exact bytes, cache reuse, clear errors, no partial files."""
import hashlib

import pytest

from conftest import free_port
from dataset_registry.registry import RegistryClient, RegistryError, VersionNotFoundError
from test_registry_ssh import publish


def test_pull_gets_exact_bytes_then_reuses_the_cache_without_network(tmp_path, registry, sshd):
    content = ("id,txt\n" + "".join(f"{i},row {i} é\n" for i in range(5000))).encode()
    publish(registry, "sales", "v1", content, work_dir=tmp_path / "publisher")
    puller = tmp_path / "trainer"  # another worker: its own clone and cache
    info, path, downloaded = RegistryClient(registry.settings(puller)).pull("sales", "train.csv", "v1", tmp_path / "a" / "train.csv")
    assert downloaded and path.read_bytes() == content and info.md5 == hashlib.md5(content).hexdigest()
    assert info.rows == 5000 and info.tag == "sales/v1"
    # Second pull: the DVC remote is unreachable, yet it works from the local cache.
    dead = registry.remote_url.replace(f":{sshd.port}/", f":{free_port()}/")
    client = RegistryClient(registry.settings(puller, remote_url=dead))
    info2, path2, downloaded2 = client.pull("sales", "train.csv", "v1", tmp_path / "b" / "train.csv")
    assert not downloaded2 and path2.read_bytes() == content


def test_newest_version_when_none_given(tmp_path, registry):
    publish(registry, "sales", "v1", b"a\n1\n")
    publish(registry, "sales", "v2", b"a\n2\n")
    info, path, _ = RegistryClient(registry.settings(tmp_path / "t")).pull("sales", "train.csv", None, tmp_path / "x.csv")
    assert info.version == "v2" and path.read_bytes() == b"a\n2\n"


def test_unknown_version_lists_the_newest(tmp_path, registry):
    publish(registry, "sales", "v1", b"a\n1\n")
    publish(registry, "sales", "v2", b"a\n2\n")
    with pytest.raises(VersionNotFoundError) as err:
        RegistryClient(registry.settings(tmp_path / "t")).pull("sales", "train.csv", "v9", tmp_path / "x.csv")
    assert "'v9'" in str(err.value) and "newest available: v2, v1" in str(err.value)
    assert not (tmp_path / "x.csv").exists()


def test_missing_remote_object_fails_clearly_and_leaves_no_file(tmp_path, registry):
    content = b"a\n1\n"
    publish(registry, "sales", "v1", content, work_dir=tmp_path / "publisher")
    md5 = hashlib.md5(content).hexdigest()
    obj = registry.store / "files" / "md5" / md5[:2] / md5[2:]
    assert obj.is_file()
    obj.unlink()
    dest = tmp_path / "out" / "train.csv"
    with pytest.raises(RegistryError) as err:
        RegistryClient(registry.settings(tmp_path / "trainer")).pull("sales", "train.csv", "v1", dest)
    assert "sales/v1" in str(err.value) and md5 in str(err.value)
    assert not dest.exists() and not dest.with_name("train.csv.partial").exists()
