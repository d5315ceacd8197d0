"""`make bench` (fan-in part): N projects publish at the same moment, each from its own worker (own
working clone and DVC cache), to one registry served over a loopback sshd (``--remote s3``: git over
the sshd, the data on the test S3 server, see ``tests/s3_server.py``). Prints wall time, publishes
per second, p50/p99 latency, git pushes per publish and failures, for the current publish protocol
and for the previous one (fixed 20 attempts, full checkout per retry), side by side.

Figures, not assertions: `tests/test_fan_in.py` is the pass/fail check (64 publishers, in make test).
"""
from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "plugins"))
sys.path.insert(0, str(HERE.parent))

from conftest import make_registry, make_sshd  # noqa: E402
from dataset_registry.registry import (  # noqa: E402
    COMMITTER, PublishResult, RegistryClient, RegistryError, dvc_file_text, gitignore_with,
)


class PreviousProtocolClient(RegistryClient):
    """The publish protocol before the team-scale work, for comparison: after a lost race, fetch every
    ref, check the branch out again, commit, retry; at most 20 attempts."""

    ATTEMPTS = 20

    def _commit_and_push(self, project, output, version, tag, md5, rows, size, timeout):
        branch = self.settings.branch
        rel = f"{project}/{output}"
        message = f"{project}: version {version}\n\nmd5: {md5}\nrows: {rows}\nbytes: {size}\n"
        ignore = self.clone_dir / project / ".gitignore"
        for attempt in range(1, self.ATTEMPTS + 1):
            (self.clone_dir / project).mkdir(exist_ok=True)
            (self.clone_dir / f"{rel}.dvc").write_text(dvc_file_text(output, md5, size))
            ignore.write_text(gitignore_with(ignore.read_text() if ignore.exists() else "", output))
            self._git("add", "--", f"{rel}.dvc", f"{project}/.gitignore")
            if self.runner.run(["git", "diff", "--cached", "--quiet"], check=False).returncode == 1:
                self._git(*COMMITTER, "commit", "-q", "-m", f"{project}: version {version}")
            commit = self._git("rev-parse", "HEAD")
            base = self._origin_tip()
            self._git(*COMMITTER, "tag", "-f", "-a", "-m", message, tag, commit)
            pushed = self.runner.run(["git", "push", "-q", "--atomic", "origin", f"refs/heads/{branch}:refs/heads/{branch}",
                                      f"refs/tags/{tag}:refs/tags/{tag}"], check=False)
            if pushed.returncode == 0:
                return PublishResult(project, version, tag, md5, rows, size, commit, created=True)
            self.fetch()
            if self._origin_tip() == base or attempt == self.ATTEMPTS:
                raise RegistryError(f"could not publish {tag} after {attempt} attempts")
            time.sleep(min(3.0, 0.1 * 2 ** min(attempt, 5)) * random.uniform(0.5, 1.5))
            self._git("checkout", "-q", "-f", "-B", branch, f"refs/remotes/origin/{branch}")
        raise AssertionError("unreachable")


def publish_at_once(client_class, registry, root: Path, count: int) -> dict:
    """``count`` projects (p000, p001, ...) publish v1 behind one barrier, each with its own worker
    folder. Returns {project: {"result" or "error", "latency", "pushes"}}."""
    outcomes: dict[str, dict] = {}
    barrier = threading.Barrier(count)

    def worker(i: int):
        project = f"p{i:03d}"
        client = client_class(registry.settings(root / f"worker-{i:03d}"))
        original, outcome = client.runner.run, {"pushes": 0}
        outcomes[project] = outcome

        def counting_run(args, **kwargs):
            if "push" in args:
                outcome["pushes"] += 1
            return original(args, **kwargs)

        client.runner.run = counting_run
        content = f"id,project\n1,{project}\n2,{project}\n".encode()
        staged = client.staging_file(project, "train.csv")
        staged.write_bytes(content)
        barrier.wait()
        started = time.monotonic()
        try:
            outcome["result"] = client.publish(project, "train.csv", "v1", staged, hashlib.md5(content).hexdigest(), 2)
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            outcome["error"] = exc
        outcome["latency"] = time.monotonic() - started

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(3600)
    return outcomes


def run_round(client_class, count: int, root: Path, sshd, s3=None) -> dict:
    registry = make_registry(root, sshd)
    if s3 is not None:  # the same git registry, the data on S3
        from s3_server import make_s3_registry

        bucket_registry = make_s3_registry(root / "s3", s3)
        registry = _SshGitS3Data(registry, bucket_registry)
    started = time.monotonic()
    outcomes = publish_at_once(client_class, registry, root, count)
    wall = time.monotonic() - started
    ordered = sorted(o["latency"] for o in outcomes.values() if "result" in o) or [float("nan")]
    errors = [f"{p}: {str(o['error'])[:120]}" for p, o in sorted(outcomes.items()) if "error" in o]
    return {
        "wall": wall, "ok": count - len(errors), "failed": len(errors), "per_second": (count - len(errors)) / wall,
        "p50": statistics.median(ordered), "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "pushes": sum(o["pushes"] for o in outcomes.values()) / count, "commits": registry.commit_count(),
        "tags": len(registry.tags()), "first_error": errors[0] if errors else "",
    }


class _SshGitS3Data:
    """The registry over SSH (git) with its DVC remote on S3: settings and counts as the benchmark reads them."""

    def __init__(self, ssh_registry, s3_registry):
        self.ssh, self.s3 = ssh_registry, s3_registry

    def settings(self, work_dir):
        from dataclasses import replace

        return replace(self.ssh.settings(work_dir), remote_url=self.s3.remote_url, s3=self.s3.access())

    def commit_count(self) -> int:
        return self.ssh.commit_count()

    def tags(self) -> list[str]:
        return self.ssh.tags()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--publishers", type=int, default=100)
    ap.add_argument("--remote", choices=("ssh", "s3"), default="ssh", help="where the DVC remote is (git is over SSH)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fan-in-") as tmp:
        sshd = make_sshd(Path(tmp) / "sshd")
        s3 = None
        try:
            if args.remote == "s3":
                from s3_server import start_s3_server

                s3 = start_s3_server(Path(tmp) / "moto")
            results = {}
            for name, cls in (("this protocol", RegistryClient), ("previous protocol", PreviousProtocolClient)):
                print(f"fan-in: {args.publishers} publishers at once, {name}...", flush=True)
                results[name] = run_round(cls, args.publishers, Path(tmp) / name.replace(" ", "-"), sshd, s3)
        finally:
            sshd.stop()
            if s3 is not None:
                s3.stop()
    where = "registry over SSH" + (", data on S3" if args.remote == "s3" else "")
    print(f"\nFan-in: {args.publishers} projects publishing at the same moment, one worker each, {where}")
    print(f"| protocol | ok | failed | wall | publishes/s | p50 latency | p99 latency | git pushes per publish |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['ok']} | {r['failed']} | {r['wall']:.1f} s | {r['per_second']:.2f} | {r['p50']:.1f} s | "
              f"{r['p99']:.1f} s | {r['pushes']:.2f} |")
    for name, r in results.items():
        if r["first_error"]:
            print(f"  {name}, first error: {r['first_error']}")
    ours = results["this protocol"]
    verdict = "met" if ours["failed"] == 0 and ours["tags"] == args.publishers else "NOT MET"
    print(f"target: no publish fails because others are publishing -> {verdict} "
          f"({ours['ok']}/{args.publishers} landed, {ours['commits']} commits)")
    return results


if __name__ == "__main__":
    main()
