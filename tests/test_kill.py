"""The publishing process SIGKILLed mid-upload and between commit and push: a rerun completes, no
duplicate commit or tag, every object on the remote has the right hash."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import plain_pull
from test_reliability import remote_objects_are_intact

pytestmark = pytest.mark.slow
DRIVER = Path(__file__).with_name("publish_driver.py")


def driver(registry, data_file, work_dir, *extra):
    settings = json.dumps({k: v for k, v in {
        "repo_url": registry.repo_url, "remote_url": registry.remote_url, "work_dir": str(work_dir),
        "key_file": registry.conn_extra["key_file"], "known_hosts": registry.conn_extra["known_hosts"]}.items()})
    return subprocess.Popen([sys.executable, str(DRIVER), settings, str(data_file), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def test_killed_during_dvc_upload_then_rerun_completes(tmp_path, registry, sshd):
    data = tmp_path / "big.csv"
    with open(data, "wb") as out:
        out.write(b"id,blob\n")
        for i in range(400_000):
            out.write(b"%d,%s\n" % (i, os.urandom(150).hex().encode()))
    proc = driver(registry, data, tmp_path / "work")
    deadline = time.monotonic() + 120
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.is_file() for p in (registry.store / "files").rglob("*")) if (registry.store / "files").exists() else False:
            os.killpg(proc.pid, signal.SIGKILL)  # the worker dies: the publisher and its dvc child
            killed = True
            break
        time.sleep(0.01)
    code, out = finish(proc)
    assert killed, f"the upload was never caught in flight: {out[-2000:]}"
    assert code == -signal.SIGKILL
    assert registry.tags() == [] and registry.commit_count() == 0
    # Atomic upload: nothing partial under an object's final name (at most an orphan .tmp).
    remote_objects_are_intact(registry.store)

    rerun = driver(registry, data, tmp_path / "work")
    code, out = finish(rerun)
    assert code == 0, out[-3000:]
    assert registry.tags() == ["sales/v1"] and registry.commit_count() == 2
    assert remote_objects_are_intact(registry.store) == 1
    assert plain_pull(registry, sshd, "sales/v1", tmp_path / "pull", "sales/train.csv") == data.read_bytes()


def test_killed_between_commit_and_push_then_rerun_completes(tmp_path, registry, sshd):
    data = tmp_path / "d.csv"
    data.write_bytes(b"id\n1\n2\n")
    code, out = finish(driver(registry, data, tmp_path / "work", "kill-before-push"))
    assert code == -signal.SIGKILL and "dying before git push" in out
    assert registry.tags() == [] and registry.commit_count() == 0
    # The dead process left a local commit and tag; make it worse: a stale git index lock too.
    clone = next((tmp_path / "work" / "clones").glob("*/"))
    (clone / ".git" / "index.lock").write_text("")
    code, out = finish(driver(registry, data, tmp_path / "work"))
    assert code == 0, out[-3000:]
    assert registry.tags() == ["sales/v1"] and registry.commit_count() == 2
    assert remote_objects_are_intact(registry.store) == 1
    assert plain_pull(registry, sshd, "sales/v1", tmp_path / "pull", "sales/train.csv") == data.read_bytes()
