"""Running git and DVC as subprocesses: argument lists only, secrets redacted from every error."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable, Sequence

log = logging.getLogger(__name__)

PLUGINS_DIR = Path(__file__).resolve().parents[1]


# What OpenSSH and git print when the server shed a connection before or while talking to it (sshd's
# MaxStartups refusing a burst of connections, a reset): worth trying again, unlike "Connection refused"
# (no server) or an authentication or host-key failure.
_DROPPED = ("kex_exchange_identification", "ssh_exchange_identification", "Connection closed by remote host",
            "Connection reset by peer", "Connection closed by 127.", "the remote end hung up unexpectedly")


def dropped_connection(text: str) -> bool:
    """Whether a failed git/ssh command's output says the server dropped the connection."""
    return any(marker in text for marker in _DROPPED)


class CommandError(RuntimeError):
    """A git or DVC command failed; ``output`` is its redacted stderr/stdout."""

    def __init__(self, message: str, output: str = "", returncode: int | None = None):
        super().__init__(message)
        self.output = output
        self.returncode = returncode


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class Runner:
    """Runs commands in one working directory with one environment; never through a shell.

    :param cwd: the working directory of every command
    :param env: the complete environment of every command
    :param secrets: values replaced by ``***`` in every error message
    :param timeout: seconds a command may run
    :param before_first_run: set-up the environment relies on (e.g. a helper program it names), run
        once before the first command, so that building a Runner touches no disk
    :param dvc_env: variables added for ``dvc_cli`` children only (credentials git never needs)
    """

    def __init__(self, cwd: Path, env: dict[str, str], secrets: Sequence[str] = (), timeout: float = 3600,
                 before_first_run: Callable[[], None] | None = None, dvc_env: dict[str, str] | None = None):
        self.cwd = Path(cwd)
        self.env = env
        self.dvc_env = dict(dvc_env or {})
        self.secrets = [s for s in secrets if s]
        self.timeout = timeout
        self._before_first_run = before_first_run

    def run(self, args: Sequence[str], *, check: bool = True, what: str | None = None,
            input_text: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run ``args``; ``env`` adds variables for this call only (e.g. a private GIT_INDEX_FILE)."""
        args = [str(a) for a in args]
        if self._before_first_run is not None:
            self._before_first_run()
            self._before_first_run = None
        try:
            proc = subprocess.run(
                args, cwd=self.cwd, env={**self.env, **env} if env else self.env, capture_output=True, text=True,
                timeout=self.timeout, input=input_text, check=False,
            )
        except subprocess.TimeoutExpired:
            raise CommandError(f"{what or self._name(args)} timed out after {self.timeout:.0f} s") from None
        if check and proc.returncode != 0:
            output = redact((proc.stderr or "") + (proc.stdout or ""), self.secrets).strip()
            raise CommandError(
                f"{what or self._name(args)} failed (exit {proc.returncode}): {_tail(output)}",
                output=output, returncode=proc.returncode,
            )
        return proc

    def git(self, *args: str, check: bool = True, what: str | None = None, input_text: str | None = None,
            env: dict[str, str] | None = None) -> str:
        return self.run(["git", *args], check=check, what=what, input_text=input_text, env=env).stdout.strip()

    def dvc(self, *args: str, what: str | None = None) -> str:
        """DVC's CLI through ``dvc_cli`` (checked); its stdout."""
        return self.dvc_process(*args, check=True, what=what).stdout

    def dvc_process(self, *args: str, check: bool = False, what: str | None = None) -> subprocess.CompletedProcess:
        """``python -m dataset_registry.dvc_cli ARGS`` with ``dvc_env`` added."""
        return self.run([sys.executable, "-m", "dataset_registry.dvc_cli", *args], check=check, what=what,
                        env=self.dvc_env or None)

    @staticmethod
    def _name(args: Sequence[str]) -> str:
        if args and args[0] == "git":
            rest = list(args[1:])
            while rest and rest[0] in ("-c", "-C"):  # global options and their values come first
                rest = rest[2:]
            return "git " + (rest[0] if rest else "")
        if "dataset_registry.dvc_cli" in args:
            i = list(args).index("dataset_registry.dvc_cli")
            return "dvc " + (args[i + 1] if len(args) > i + 1 else "")
        return args[0] if args else "command"


def _tail(text: str, limit: int = 1500) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    text = "\n".join(lines[-12:])
    return text if len(text) <= limit else "..." + text[-limit:]


def base_env() -> dict[str, str]:
    """A clean environment for git/DVC: no prompts, no pager, no analytics, our package importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "DATASET_REGISTRY_"))}
    env.update(
        GIT_TERMINAL_PROMPT="0",
        GIT_PAGER="cat",
        GIT_CONFIG_NOSYSTEM="1",
        DVC_NO_ANALYTICS="1",
        LC_ALL="C.UTF-8",
    )
    env.setdefault("DVC_NO_UPDATER", "1")
    existing = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(PLUGINS_DIR) + (os.pathsep + existing if existing else "")
    return env
