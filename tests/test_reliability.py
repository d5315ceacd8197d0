"""Faults, races and hostile input (issue: nothing lost, nothing half-published, converges on rerun)."""
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from conftest import make_registry, make_sshd, plain_pull
from dataset_registry.mysql_export import ExportError, export_query
from dataset_registry.registry import RegistryClient, RegistryError, VersionConflictError
from test_registry_ssh import publish

pytestmark = pytest.mark.slow


def remote_objects_are_intact(store: Path) -> int:
    """Every object on the DVC remote hashes to its own name; returns how many there are.
    (Dot-named ``*.tmp`` files are uploads a killed process never renamed: not objects.)"""
    count = 0
    for obj in (store / "files" / "md5").glob("*/*"):
        if obj.name.startswith(".") and obj.name.endswith(".tmp"):
            continue
        assert hashlib.md5(obj.read_bytes()).hexdigest() == obj.parent.name + obj.name, f"corrupt object {obj}"
        count += 1
    return count


def run_concurrently(jobs):
    results, errors, barrier = {}, {}, threading.Barrier(len(jobs))

    def worker(key, fn):
        barrier.wait()
        try:
            results[key] = fn()
        except Exception as exc:  # noqa: BLE001
            errors[key] = exc

    threads = [threading.Thread(target=worker, args=item) for item in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results, errors


# 6 ---------------------------------------------------------------------------------------
def test_two_runs_racing_for_one_version_with_different_data(tmp_path, registry, sshd):
    contents = {"a": b"x\n1\n", "b": b"x\n2\n"}
    results, errors = run_concurrently({
        key: (lambda k=key: publish(registry, "sales", "v1", contents[k], work_dir=tmp_path / f"w-{k}"))
        for key in contents
    })
    assert len(results) == 1 and len(errors) == 1, (results, errors)
    (winner, _), (loser, error) = next(iter(results.items())), next(iter(errors.items()))
    assert isinstance(error, VersionConflictError)
    assert hashlib.md5(contents[winner]).hexdigest() in str(error) and hashlib.md5(contents[loser]).hexdigest() in str(error)
    assert registry.tags() == ["sales/v1"] and registry.commit_count() == 2
    assert plain_pull(registry, sshd, "sales/v1", tmp_path / "pull", "sales/train.csv") == contents[winner]


# 7 ---------------------------------------------------------------------------------------
def test_eight_projects_publishing_at_the_same_moment_all_land(tmp_path, registry, sshd):
    projects = [f"p{i}" for i in range(8)]
    results, errors = run_concurrently({
        p: (lambda p=p: publish(registry, p, "v1", f"col\n{p}\n".encode(), work_dir=tmp_path / f"w-{p}"))
        for p in projects
    })
    assert errors == {}
    assert sorted(registry.tags()) == [f"{p}/v1" for p in projects]
    assert registry.commit_count() == 9  # init + one per project: none lost, none duplicated
    log = registry.git("log", "--format=%s", "main")
    assert sorted(line.split(":")[0] for line in log.splitlines() if ": version" in line) == projects
    assert remote_objects_are_intact(registry.store) == 8
    for p in projects:  # every tag points at a tree holding that project's data
        assert registry.git("show", f"{p}/v1:{p}/train.csv.dvc").count(results[p].md5) == 1


# 1 ---------------------------------------------------------------------------------------
def test_sshd_stopped_during_publish_then_rerun_converges(tmp_path):
    server = make_sshd(tmp_path / "own-sshd")
    try:
        registry = make_registry(tmp_path, server)
        content = b"a\n1\n2\n"
        server.stop()
        with pytest.raises(RegistryError) as err:
            publish(registry, "sales", "v1", content)
        assert "127.0.0.1" in str(err.value) and "registry" in str(err.value)
        assert registry.tags() == [] and registry.commit_count() == 0
        server.start()
        result = publish(registry, "sales", "v1", content)
        assert result.created and result.md5 == hashlib.md5(content).hexdigest()
        assert registry.tags() == ["sales/v1"] and remote_objects_are_intact(registry.store) == 1
    finally:
        server.stop()


def test_sshd_dying_between_git_fetch_and_dvc_push_publishes_nothing(tmp_path, monkeypatch):
    server = make_sshd(tmp_path / "own-sshd")
    try:
        registry = make_registry(tmp_path, server)
        original = RegistryClient._push_data

        def push_while_down(self, *args):
            server.stop()
            return original(self, *args)

        monkeypatch.setattr(RegistryClient, "_push_data", push_while_down)
        with pytest.raises(RegistryError) as err:
            publish(registry, "sales", "v1", b"a\n1\n")
        assert "DVC remote" in str(err.value) and f":{server.port}" in str(err.value)
        assert registry.tags() == [] and registry.commit_count() == 0
        monkeypatch.setattr(RegistryClient, "_push_data", original)
        server.start()
        assert publish(registry, "sales", "v1", b"a\n1\n").created
        assert remote_objects_are_intact(registry.store) == 1
    finally:
        server.stop()


def test_connections_the_server_sheds_under_a_burst_are_tried_again(tmp_path, registry, monkeypatch, caplog):
    """sshd's MaxStartups drops new connections while too many are unauthenticated (a burst of
    publishers at one tick; Debian's default is 10:30:100), which OpenSSH reports as
    "kex_exchange_identification: Connection closed by remote host". Real sshd behind; the first two
    fetch connections are dropped by an ssh shim (sshd's own throttling is random and timed, so a
    test of it could not fail reliably). The fetch is tried again and the version lands."""
    import logging
    import shutil

    shim = tmp_path / "bin"
    shim.mkdir()
    count = tmp_path / "dropped"
    (shim / "ssh").write_text(
        "#!/bin/sh\n"
        'case "$*" in *git-upload-pack*)\n'
        f'  n=$(cat {count} 2>/dev/null || echo 0)\n'
        f'  if [ "$n" -lt 2 ]; then echo $((n + 1)) > {count}\n'
        '    echo "kex_exchange_identification: Connection closed by remote host" >&2; exit 255; fi;;\n'
        "esac\n"
        f'exec {shutil.which("ssh")} "$@"\n')
    (shim / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    with caplog.at_level(logging.INFO, logger="dataset_registry"):
        result = publish(registry, "sales", "v1", b"a\n1\n")
    assert result.created and registry.tags() == ["sales/v1"] and count.read_text().strip() == "2"
    assert caplog.text.count("dropped the fetch's connection") == 2
    assert remote_objects_are_intact(registry.store) == 1


def test_a_registry_that_refuses_connections_is_not_tried_again(tmp_path, monkeypatch):
    """"Connection refused" (no server) is not a shed connection: it fails at once, as before."""
    server = make_sshd(tmp_path / "own-sshd")
    try:
        registry = make_registry(tmp_path, server)
        server.stop()
        started = time.monotonic()
        with pytest.raises(RegistryError, match="registry"):
            publish(registry, "sales", "v1", b"a\n1\n")
        assert time.monotonic() - started < 10
    finally:
        server.stop()


# 3 ---------------------------------------------------------------------------------------
def test_cache_file_deleted_before_push_fails_without_a_tag(tmp_path, registry, monkeypatch):
    original = RegistryClient._push_data

    def lose_cache(self, *args):
        for obj in (self.cache_dir / "files" / "md5").glob("*/*"):
            obj.chmod(0o644)
            obj.unlink()
        return original(self, *args)

    monkeypatch.setattr(RegistryClient, "_push_data", lose_cache)
    with pytest.raises(RegistryError) as err:
        publish(registry, "sales", "v1", b"a\n1\n")
    assert "does not hold sales/train.csv" in str(err.value) and "is not on the remote" in str(err.value)
    assert registry.tags() == [] and registry.commit_count() == 0 and remote_objects_are_intact(registry.store) == 0
    monkeypatch.setattr(RegistryClient, "_push_data", original)
    assert publish(registry, "sales", "v1", b"a\n1\n").created  # rerun converges, no manual clean-up


# 5 ---------------------------------------------------------------------------------------
def test_mysql_connection_killed_mid_stream_fails_and_leaves_no_csv(tmp_path, mysql_params, mysql_db):
    import MySQLdb

    name, connect = mysql_db
    dest = tmp_path / "big.csv"
    outcome = {}

    def exporter():
        try:
            export_query({**mysql_params, "db": name},
                         "SELECT seq AS killme, REPEAT('x', 200) AS pad FROM seq_1_to_5000000 ORDER BY seq",
                         dest, fetch_rows=1000)
            outcome["result"] = "finished"
        except ExportError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=exporter)
    thread.start()
    admin = MySQLdb.connect(**mysql_params, autocommit=True)
    cur = admin.cursor()
    victim = None
    for _ in range(600):
        time.sleep(0.05)
        if dest.with_name("big.csv.partial").exists() and dest.with_name("big.csv.partial").stat().st_size > 1_000_000:
            cur.execute("SELECT id FROM information_schema.processlist WHERE info LIKE 'SELECT seq AS killme%%'")
            row = cur.fetchone()
            if row:
                victim = row[0]
                break
    assert victim, "the export never showed up streaming"
    cur.execute(f"KILL {int(victim)}")
    thread.join(120)
    admin.close()
    assert "error" in outcome, outcome
    assert "after" in str(outcome["error"]) and "rows" in str(outcome["error"])
    assert not dest.exists() and not dest.with_name("big.csv.partial").exists()


def test_server_side_statement_timeout_fails_cleanly(tmp_path, mysql_params, mysql_db):
    name, _ = mysql_db
    started = time.monotonic()
    with pytest.raises(ExportError) as err:
        export_query({**mysql_params, "db": name}, "SELECT SLEEP(10) AS s", tmp_path / "t.csv", query_timeout=1)
    assert time.monotonic() - started < 8
    assert "max_statement_time" in str(err.value) or "interrupted" in str(err.value)
    assert list(tmp_path.iterdir()) == []


# 10 --------------------------------------------------------------------------------------
HOSTILE = ["$(touch pwned)", "--upload-pack=touch pwned", "-x", "a b", "..", "a/b", "", "x" * 65, "../x",
           "/etc/passwd", "v1\x00", "ѵ1", "x" * 10_240]


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_operator_args_are_refused_before_any_subprocess(tmp_path, bad, monkeypatch):
    import subprocess

    from airflow.sdk.exceptions import AirflowFailException

    from dataset_registry.operators.version_dataset import VersionDatasetOperator

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError("subprocess called")))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError("subprocess called")))
    monkeypatch.setenv("DATASET_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.chdir(tmp_path)
    context = {"data_interval_start": None, "data_interval_end": None}
    cases = [{"project": bad}]
    if bad != "x" * 65:  # a 65-character file name is a fine output name
        cases.append({"output_file": bad})
    if bad:  # an empty version means "use the version template", by design
        cases.append({"version": bad})
    for kwargs in cases:
        args = {"task_id": "t", "project": "shop", "output_file": "o.csv", "query": "SELECT 1",
                "version": "v1", "start": "2024-01-01", "end": "2024-01-02", **kwargs}
        op = VersionDatasetOperator(**args)
        with pytest.raises(AirflowFailException):
            op.execute(context)
    assert calls == []
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no work dir, no clone, no pwned file
