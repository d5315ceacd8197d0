"""Proposals and landing rounds: verified versions join the branch in batches, by one atomic push.

Why proposals: with dozens of projects publishing at the same tick, every publisher racing to move
the branch with its own commit makes N publishers need about N rounds each (the previous protocol:
5 of 32 gave up after 20 attempts). So each publisher first pushes a *proposal* (a tiny root commit
holding its ``.dvc`` file, its message = the tag message) to its own ref
``refs/registry-pending/<project>/<version>``: distinct refs never conflict. A landing round takes
the branch, the tags and every pending proposal as last fetched (a publisher's first round: what its
sync fetched, plus its own proposal), builds one commit per proposal on the tip (plumbing
in a private index: no checkout, no re-hash, no re-upload), creates their annotated tags, and pushes
branch + all those tags + the deletion of the landed proposals in ONE ``git push --atomic``.
Whoever wins a round lands everybody's ready versions. Proposals come from the registry, so anyone
with push access could craft one: each is checked before it lands, and an invalid one is dropped.
"""
from __future__ import annotations

import logging
import os
import threading

from dataset_registry.dvc_store import dvc_file_text, gitignore_with, parse_dvc_file
from dataset_registry.gitcmd import CommandError, dropped_connection, redact
from dataset_registry.names import InvalidNameError, validate_output, validate_project, validate_version
from dataset_registry.registry_errors import RegistryError
from dataset_registry.working_clone import (
    COMMITTER, PENDING_LOCAL, PENDING_NAMESPACE, WorkingClone, message_field, remote_tag_ref,
)

log = logging.getLogger(__name__)

MAX_BATCH = 200  # proposals landed by one push at most


class Landing:
    """Proposing versions and landing the pending proposals, through one working clone.

    :param clone: the working clone (its lock held by the caller)
    """

    def __init__(self, clone: WorkingClone):
        self.clone = clone

    def propose(self, project: str, output: str, tag: str, md5: str, size: int, message: str) -> str | None:
        """Push this version's proposal to its own pending ref (no other publisher writes that ref).
        Returns the proposal's commit when the push created the ref and the clone recorded it (so a
        first landing round may go without fetching), else None (the caller fetches first)."""
        git = self.clone.git
        dvc_blob = git("hash-object", "-w", "--stdin", input_text=dvc_file_text(output, md5, size))
        inner = git("mktree", input_text=f"100644 blob {dvc_blob}\t{output}.dvc\n")
        tree = git("mktree", input_text=f"040000 tree {inner}\t{project}\n")
        proposal = git(*COMMITTER, "commit-tree", tree, "-m", message)
        pushed = self.clone.git_process("push", "--porcelain", "origin", f"{proposal}:{PENDING_NAMESPACE}/{tag}")
        if pushed.returncode != 0:  # taken by another run of this version (the tag check decides), or unreachable
            log.info("proposal ref for %s exists already or could not be pushed; the landing round decides", tag)
            return None
        # as a fetch would record it: a first landing round can go without fetching (see ``land``)
        if self.clone.git_process("update-ref", f"{PENDING_LOCAL}/{tag}", proposal).returncode != 0:
            log.info("could not record the proposal of %s in the working clone; fetching before landing", tag)
            return None
        return proposal

    def fetch(self) -> None:
        """The branches, every tag and every pending proposal (pruned: landed proposals disappear)."""
        self.clone.fetch()

    def is_pending(self, tag: str) -> bool:
        """Whether the last fetch found this version's proposal on the registry."""
        return bool(self.clone.git("rev-parse", "-q", "--verify", f"{PENDING_LOCAL}/{tag}", check=False))

    def land(self) -> dict[str, dict] | None:
        """One landing round on what the last ``fetch`` found (the clone's sync fetches proposals too)
        plus the proposals this clone pushed since: every valid pending proposal becomes a commit on
        the tip and a tag, pushed with the branch and the proposals' deletion atomically. A view that
        is out of date only loses the round: the push names the tip and the proposals it expects.

        Returns the proposals it landed (``{tag: proposal}``, each with its ``commit``), or None when
        the push lost the race (someone else moved the branch or landed the proposals first; fetch
        and try again). A push that fails for any other reason raises.
        """
        branch = self.clone.branch
        origin = self.clone.origin_tip()
        if not origin and (gone := self.clone.missing_branch_error()) is not None:
            raise gone  # the branch was deleted: never re-create it under the tags
        base = origin or self.clone.git("rev-parse", "HEAD")  # HEAD: a fresh registry's init commit
        tip, landing, done = self._plan(base)
        tags = list(landing)
        # Compare-and-swap on every ref but the new tags (which must not exist: never forced): the
        # branch moves only from the tip this round built on ("": it must not exist yet), even when
        # it does not move (a tag on the head's commit), and a proposal is deleted only if it is the
        # one this round read; so a round on an old view (branch moved or deleted, proposal
        # replaced) can only lose.
        refspecs = [f"{tip}:refs/heads/{branch}"] + [f"refs/tags/{t}:refs/tags/{t}" for t in tags]
        refspecs += [f":{PENDING_NAMESPACE}/{t}" for t in done]
        leases = [f"--force-with-lease=refs/heads/{branch}:{origin}"]
        leases += [f"--force-with-lease={PENDING_NAMESPACE}/{t}:{sha}" for t, sha in done.items()]
        pushed = self.clone.git_process("push", "--porcelain", "--atomic", *leases, "origin", *refspecs)
        if pushed.returncode == 0:
            log.info("landed %d version(s) at commit %s: %s", len(tags), tip[:12], ", ".join(tags[:20]))
            self._after_push(branch, tip, tags, done)
            return landing
        detail = redact((pushed.stderr or "") + (pushed.stdout or ""), self.clone.runner.secrets).strip()
        if dropped_connection(detail):  # the server shed the connection (a burst): a lost round, not a failure
            log.info("the registry dropped the push's connection (%s); trying again", detail[-200:])
            return None
        if self._registry_changed(base, done, tags):
            return None
        raise RegistryError(f"git push to the registry repository {self.clone.repo_url} failed "
                            f"(exit {pushed.returncode}): {detail[-1500:]}")

    def _plan(self, base: str) -> tuple[str, dict[str, dict], dict[str, str]]:
        """(new tip, {tag: proposal} to create, {tag: proposal commit} of the pending refs to delete)
        for every valid pending proposal.

        Each proposal is checked (names, exactly one ``<project>/<output>.dvc``, a valid md5); an
        invalid one is dropped (its ref deleted) with a warning, never landed.
        """
        records = self.clone.git("for-each-ref", "--format=%(refname) %(objectname)", f"{PENDING_LOCAL}/")
        proposals, done = [], {}
        for line in records.splitlines()[:MAX_BATCH]:
            ref, sha = line.split(" ", 1)
            tag = ref[len(PENDING_LOCAL) + 1:]
            try:
                proposal = self._read_proposal(tag, sha)
            except (RegistryError, InvalidNameError, CommandError) as exc:
                log.warning("dropping invalid proposal %s: %s", tag, exc)
                done[tag] = sha
                continue
            if self.clone.git("rev-parse", "-q", "--verify", remote_tag_ref(tag), check=False):
                done[tag] = sha  # landed already (its owner compares md5s)
                continue
            proposal["sha"] = sha
            proposals.append(proposal)
        tip, landing = base, {}
        for p in sorted(proposals, key=lambda p: (p["created"], p["tag"])):
            tip = self._commit_on(tip, p["project"], p["output"], p["version"], p["rows"], p["md5"], p["blob"])
            self.clone.git(*COMMITTER, "tag", "-f", "-a", "-m", p["message"], p["tag"], tip)
            landing[p["tag"]] = {**p, "commit": tip}
            done[p["tag"]] = p["sha"]
        return tip, landing, done

    def _read_proposal(self, tag: str, sha: str) -> dict:
        git = self.clone.git
        project, _, version = tag.partition("/")
        validate_project(project)
        validate_version(version)
        paths = git("ls-tree", "-r", "--name-only", sha).splitlines()
        if len(paths) != 1 or not paths[0].startswith(f"{project}/") or not paths[0].endswith(".dvc"):
            raise RegistryError(f"expected exactly one file {project}/<output>.dvc, found {paths[:5]}")
        output = validate_output(paths[0][len(project) + 1:-len(".dvc")])
        blob = git("rev-parse", f"{sha}:{paths[0]}")
        md5, _ = parse_dvc_file(git("cat-file", "blob", blob))
        message = self.clone.git_process("log", "-1", "--format=%B", sha, check=True).stdout
        if message_field(message, "md5") != md5:
            raise RegistryError("the proposal's message and .dvc file name different md5s")
        rows = message_field(message, "rows") or "?"
        return {"tag": tag, "project": project, "version": version, "output": output, "blob": blob, "md5": md5,
                "rows": rows, "message": message, "created": message_field(message, "created") or ""}

    def _commit_on(self, base: str, project, output, version, rows, md5, dvc_blob: str) -> str:
        """A commit on ``base`` whose tree is base's with ``<project>/<output>.dvc`` and the project's
        ``.gitignore`` set; ``base`` itself when nothing changes (same data as the branch head)."""
        git = self.clone.git
        index = self.clone.clone_dir / ".git" / f"publish-index-{os.getpid()}-{threading.get_ident()}"
        env = {"GIT_INDEX_FILE": str(index)}
        try:
            ignore_path = f"{project}/.gitignore"
            shown = self.clone.git_process("cat-file", "-p", f"{base}:{ignore_path}")
            current = shown.stdout if shown.returncode == 0 else ""  # raw: keep the trailing newline
            ignore_blob = git("hash-object", "-w", "--stdin", input_text=gitignore_with(current, output))
            git("read-tree", base, env=env)
            git("update-index", "--add", "--cacheinfo", f"100644,{dvc_blob},{project}/{output}.dvc", env=env)
            git("update-index", "--add", "--cacheinfo", f"100644,{ignore_blob},{ignore_path}", env=env)
            tree = git("write-tree", env=env)
        finally:
            index.unlink(missing_ok=True)
        if tree == git("rev-parse", f"{base}^{{tree}}"):
            return base
        return git(*COMMITTER, "commit-tree", tree, "-p", base, "-m",
                   f"{project}: version {version} ({rows} rows, md5 {md5})")

    def _registry_changed(self, base: str, done: dict[str, str], tags: list[str]) -> bool:
        """After a failed push: did someone else move the branch, land, drop or replace proposals, or
        create one of these tags (another run of the same version, on the same tip: a lost race), or
        is the failure ours to report (rejected, unreachable)?"""
        self.fetch()
        tip = self.clone.origin_tip()
        if tip != base and (tip or self.clone.missing_branch_error() is not None):
            return True  # moved, or deleted (the next round reports that)
        if any(self.clone.git("rev-parse", "-q", "--verify", remote_tag_ref(t), check=False) for t in tags):
            return True
        return any(self.clone.git("rev-parse", "-q", "--verify", f"{PENDING_LOCAL}/{t}", check=False) != sha
                   for t, sha in done.items())

    def _after_push(self, branch: str, commit: str, tags: list[str], done: dict[str, str]) -> None:
        """Bookkeeping only: the push landed, so a failure here must not turn it into a failed publish
        (the next fetch writes the same refs anyway). The proposals it removed go from the clone's
        view too, so a first round that lands on that view does not try to remove them again."""
        updates = [(f"refs/remotes/origin/{branch}", commit)] + [(remote_tag_ref(t), f"refs/tags/{t}") for t in tags]
        for ref, value in updates:
            if self.clone.git_process("update-ref", ref, value).returncode:
                log.warning("could not record %s in the working clone; the next fetch will", ref)
        if done and self.clone.git_process("update-ref", "--stdin", input_text="".join(
                f"delete {PENDING_LOCAL}/{t}\n" for t in done)).returncode:
            log.warning("could not drop the landed proposals from the working clone's view; the next fetch will")
