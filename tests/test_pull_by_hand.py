"""The README's "pull a version by hand" commands, run as printed against the real sshd registry:
`dvc get --rev <tag> --remote-config keyfile=...` and `dvc.api.read(..., rev=, remote_config=)` give
the published bytes (the SSH key must be passed: the registry's tracked config names no key)."""
import os
import subprocess
import sys
from pathlib import Path

from test_integrity import client_for, publish_with

CONTENT = b"id,name\n1,a\n2,\"b, c\"\n"


def by_hand_env(sshd) -> dict:
    env = {**os.environ, "GIT_SSH_COMMAND": f"ssh -i {sshd.key_file} -o UserKnownHostsFile={sshd.known_hosts} -o IdentitiesOnly=yes"}
    env.pop("PYTHONPATH", None)
    return env


def test_dvc_get_with_the_key_passed_gives_the_published_bytes(tmp_path, registry, sshd):
    publish_with(client_for(registry, tmp_path / "w"), "sales", "v1", CONTENT)
    out = tmp_path / "sales-v1.csv"
    dvc = str(Path(sys.executable).parent / "dvc")
    proc = subprocess.run([dvc, "get", registry.repo_url, "sales/train.csv", "--rev", "sales/v1", "-o", str(out),
                           "--remote-config", f"keyfile={sshd.key_file}"],
                          env=by_hand_env(sshd), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.read_bytes() == CONTENT


def test_dvc_api_read_with_remote_config_gives_the_published_text(tmp_path, registry, sshd):
    publish_with(client_for(registry, tmp_path / "w"), "sales", "v1", CONTENT)
    code = ("import dvc.api, sys\n"
            "text = dvc.api.read('sales/train.csv', repo=sys.argv[1], rev='sales/v1',\n"
            "                    remote_config={'keyfile': sys.argv[2]})\n"
            "sys.stdout.write(text)\n")
    proc = subprocess.run([sys.executable, "-c", code, registry.repo_url, str(sshd.key_file)],
                          env=by_hand_env(sshd), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.encode() == CONTENT
