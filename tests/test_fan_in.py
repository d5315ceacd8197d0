"""Team scale: 64 projects publish at the same tick, each from its own worker (own working clone and
DVC cache), to one registry whose git and DVC remotes are served over the test sshd. No publish may
fail because others are publishing."""
import hashlib
import threading
import time

import pytest

from conftest import plain_pull
from dataset_registry.registry import RegistryClient
from test_reliability import remote_objects_are_intact

pytestmark = pytest.mark.slow

PUBLISHERS = 64


def publish_all_at_once(registry, tmp_path, count: int):
    """Start ``count`` publishers behind one barrier; returns (results, errors, latencies, pushes)."""
    results, errors, latencies, pushes = {}, {}, {}, {}
    barrier = threading.Barrier(count)

    def worker(i: int):
        project = f"p{i:03d}"
        client = RegistryClient(registry.settings(tmp_path / f"worker-{i:03d}"))
        original = client.runner.run

        def counting_run(args, **kwargs):
            if "push" in args:
                pushes[project] = pushes.get(project, 0) + 1
            return original(args, **kwargs)

        client.runner.run = counting_run
        content = f"id,project\n1,{project}\n2,{project}\n".encode()
        staged = client.staging_file(project, "train.csv")
        staged.write_bytes(content)
        barrier.wait()
        started = time.monotonic()
        try:
            results[project] = client.publish(project, "train.csv", "v1", staged, hashlib.md5(content).hexdigest(), 2)
        except Exception as exc:  # noqa: BLE001 - collected and asserted on
            errors[project] = exc
        latencies[project] = time.monotonic() - started

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(1200)
    return results, errors, latencies, pushes


def test_sixty_four_projects_publishing_at_the_same_tick_all_land(tmp_path, registry, sshd):
    started = time.monotonic()
    results, errors, latencies, pushes = publish_all_at_once(registry, tmp_path, PUBLISHERS)
    wall = time.monotonic() - started
    assert errors == {}, {k: str(v)[:300] for k, v in list(errors.items())[:5]}
    projects = sorted(results)
    assert len(projects) == PUBLISHERS and all(r.created for r in results.values())
    assert sorted(registry.tags()) == [f"{p}/v1" for p in projects]
    assert registry.commit_count() == PUBLISHERS + 1  # the initial commit + one per project
    subjects = registry.git("log", "--format=%s", "main").splitlines()
    assert sorted(s.split(":")[0] for s in subjects if ": version" in s) == projects
    assert remote_objects_are_intact(registry.store) == PUBLISHERS  # every object hashes to its name
    for p, result in results.items():  # every tag points at a tree holding its project's data
        assert registry.git("rev-parse", f"{p}/v1^{{commit}}") == result.commit
        assert result.md5 in registry.git("show", f"{p}/v1:{p}/train.csv.dvc")
    assert plain_pull(registry, sshd, "p063/v1", tmp_path / "by-hand", "p063/train.csv") == b"id,project\n1,p063\n2,p063\n"
    ordered = sorted(latencies.values())
    print(f"\n{PUBLISHERS} publishers: wall {wall:.1f} s, p50 {ordered[len(ordered) // 2]:.1f} s, "
          f"max {ordered[-1]:.1f} s, pushes per publish {sum(pushes.values()) / PUBLISHERS:.2f}")


def _client_losing_races(registry, tmp_path, rivals: int):
    """A client whose first ``rivals`` pushes each lose to a real publish by another worker that
    lands just before them; returns (client, push counter)."""
    from dataclasses import replace

    client = RegistryClient(replace(registry.settings(tmp_path / "loser"), publish_timeout=600))
    rival = RegistryClient(registry.settings(tmp_path / "rival"))
    original, state = client.runner.run, {"pushes": 0}

    def run(args, **kwargs):
        if "push" in args:
            state["pushes"] += 1
            if state["pushes"] <= rivals:
                content = f"x\n{state['pushes']}\n".encode()
                staged = rival.staging_file("rival", "train.csv")
                staged.write_bytes(content)
                rival.publish("rival", "train.csv", f"r{state['pushes']}", staged, hashlib.md5(content).hexdigest(), 1)
        return original(args, **kwargs)

    client.runner.run = run
    return client, state


def _publish(client, content=b"a\n1\n"):
    staged = client.staging_file("sales", "train.csv")
    staged.write_bytes(content)
    return client.publish("sales", "train.csv", "v1", staged, hashlib.md5(content).hexdigest(), 1,
                          timeout=client.settings.publish_timeout)


def test_lost_races_are_retried_on_the_new_tip_until_the_push_lands(tmp_path, registry):
    client, state = _client_losing_races(registry, tmp_path, rivals=4)
    result = _publish(client)
    assert result.created and state["pushes"] == 5
    assert sorted(registry.tags()) == ["rival/r1", "rival/r2", "rival/r3", "rival/r4", "sales/v1"]
    assert registry.commit_count() == 6  # init + 4 rivals + ours, in that order on one line of history
    assert registry.git("log", "-1", "--format=%s", "main").startswith("sales: version v1")


def test_publish_timeout_is_a_deadline_with_a_clear_message(tmp_path, registry):
    from dataclasses import replace

    from dataset_registry.registry import RegistryError

    client, state = _client_losing_races(registry, tmp_path, rivals=1000)
    client.settings = replace(client.settings, publish_timeout=3)
    started = time.monotonic()
    with pytest.raises(RegistryError) as err:
        _publish(client)
    assert time.monotonic() - started < 60
    assert "within publish_timeout=3 s" in str(err.value) and "lost the race" in str(err.value)
    assert state["pushes"] >= 2 and "sales/v1" not in registry.tags()
