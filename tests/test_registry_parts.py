"""The registry's parts on their own, without sshd: the SSH environment builder, the DVC cache, the
settings' messages, and constructors that touch no disk. Real git, ssh, DVC and files; no mocks."""
import hashlib
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run
from dataset_registry import dvc_cli
from dataset_registry.dvc_store import (
    DvcStore, SshObjects, StagingArea, dvc_file_text, gitignore_with, parse_dvc_file,
)
from dataset_registry.gitcmd import Runner, base_env
from dataset_registry.landing import Landing
from dataset_registry.s3_remote import S3Access, S3SettingsError
from dataset_registry.registry import (
    RegistryClient, RegistryError, RegistrySettings, VersionConflictError, VersionNotFoundError,
)
from dataset_registry.ssh_env import (
    ASKPASS_SCRIPT, ENV_GIT_PASSWORD, ENV_GIT_USER, SubprocessEnv, split_url_credentials,
)
from dataset_registry.working_clone import RegistryVersions, WorkingClone

CONTENT = b"id,name\n1,a\n2,b\n"
AIRFLOW_WORDS = ("connection", "extra.", "trigger", "dag", "task", "airflow")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def settings(tmp_path: Path, **overrides) -> RegistrySettings:
    values = {"repo_url": "ssh://git@registry.example:2222/srv/registry.git",
              "remote_url": "ssh://dvc@registry.example:2222/srv/dvc-store", "work_dir": tmp_path / "work"}
    return RegistrySettings(**{**values, **overrides})


def effective_ssh_config(env: dict[str, str]) -> dict[str, str]:
    """What ``ssh`` would do with git's SSH command (``ssh -G`` resolves it without connecting)."""
    argv = shlex.split(env["GIT_SSH_COMMAND"]) + ["-G", "registry.example"]
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30, check=True).stdout
    config: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        config.setdefault(key, value)
    return config


# ------------------------------------------------------------------ ssh_env
def test_host_keys_are_checked_against_the_given_known_hosts(tmp_path):
    key, known = tmp_path / "id_ed25519", tmp_path / "known_hosts"
    key.write_text("not a real key\n")
    env = SubprocessEnv(settings(tmp_path, key_file=str(key), known_hosts=str(known), ssh_user="dvc"),
                        tmp_path / "askpass").variables()
    config = effective_ssh_config(env)
    assert config["stricthostkeychecking"] == "true" and config["userknownhostsfile"] == str(known)
    assert config["batchmode"] == "yes" and config["identitiesonly"] == "yes" and config["user"] == "dvc"
    assert str(key) in config["identityfile"]
    assert env[dvc_cli.ENV_KNOWN_HOSTS] == str(known) and env[dvc_cli.ENV_KEY_FILE] == str(key)
    assert env[dvc_cli.ENV_USER] == "dvc" and dvc_cli.ENV_NO_HOST_KEY_CHECK not in env


def test_host_key_check_is_off_only_when_the_settings_say_so(tmp_path):
    env = SubprocessEnv(settings(tmp_path, check_host_keys=False), tmp_path / "askpass").variables()
    config = effective_ssh_config(env)
    assert config["stricthostkeychecking"] == "false" and config["userknownhostsfile"] == "/dev/null"
    assert env[dvc_cli.ENV_NO_HOST_KEY_CHECK] == "1"


def test_a_password_reaches_git_through_askpass_variables_never_the_script_or_argv(tmp_path):
    askpass = tmp_path / "work" / "askpass.sh"
    builder = SubprocessEnv(settings(tmp_path, ssh_user="dvc", ssh_password="pw-S3cret"), askpass)
    env = builder.variables()
    assert env["SSH_ASKPASS"] == str(askpass) and env["SSH_ASKPASS_REQUIRE"] == "force"
    assert env[ENV_GIT_USER] == "dvc" and env[ENV_GIT_PASSWORD] == "pw-S3cret"
    assert env[dvc_cli.ENV_PASSWORD] == "pw-S3cret"  # DVC's SSH filesystem gets it the same way
    assert "pw-S3cret" not in env["GIT_SSH_COMMAND"] and effective_ssh_config(env)["batchmode"] == "no"
    assert not askpass.exists()  # building the environment writes nothing
    builder.install_askpass()
    assert askpass.read_text() == ASKPASS_SCRIPT and "pw-S3cret" not in askpass.read_text()
    assert askpass.stat().st_mode & 0o777 == 0o700
    # What ssh/git get when they ask: the login for a user-name prompt, the password otherwise.
    asked = [run([askpass, prompt], env=env).stdout for prompt in ("Username for 'https://h': ", "dvc@h's password: ")]
    assert asked == ["dvc\n", "pw-S3cret\n"]


def test_without_a_password_there_is_no_askpass_and_ssh_never_prompts(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_GIT_PASSWORD, "inherited-from-the-worker")  # never passed on to the child
    askpass = tmp_path / "askpass.sh"
    builder = SubprocessEnv(settings(tmp_path), askpass)
    env = builder.variables()
    assert "SSH_ASKPASS" not in env and ENV_GIT_PASSWORD not in env
    assert effective_ssh_config(env)["batchmode"] == "yes"
    builder.install_askpass()
    assert not askpass.exists()


@pytest.mark.parametrize("url, expected", [
    ("https://deploy:t%40k@git.example/r.git", ("https://deploy@git.example/r.git", "deploy", "t@k")),
    ("https://:tok@git.example/r.git", ("https://git.example/r.git", None, "tok")),
    ("https://ghp_tok@git.example/r.git", ("https://git.example/r.git", "ghp_tok", None)),  # token as the user
    ("https://u:p@ss@git.example/r.git", ("https://u@git.example/r.git", "u", "p@ss")),  # last @ ends it
    ("ssh://git@git.example:22/r.git", ("ssh://git@git.example:22/r.git", None, None)),  # a login, not a secret
    ("git@git.example:srv/r.git", ("git@git.example:srv/r.git", None, None)),
    ("/srv/registry.git", ("/srv/registry.git", None, None)),
])
def test_credentials_are_taken_out_of_urls(url, expected):
    assert split_url_credentials(url) == expected


def test_a_url_token_never_reaches_argv_config_or_messages(tmp_path):
    client = RegistryClient(settings(tmp_path, repo_url="https://deploy:tok-S3cret@127.0.0.1:1/registry.git",
                                     remote_url=str(tmp_path / "store")))
    argvs = []
    original = client.runner.run

    def recording_run(args, **kwargs):
        argvs.append([str(a) for a in args])
        return original(args, **kwargs)

    client.runner.run = recording_run
    with pytest.raises(RegistryError) as err:  # nothing listens on port 1
        client.sync()
    assert argvs and not any("tok-S3cret" in arg for argv in argvs for arg in argv)
    assert "tok-S3cret" not in str(err.value) and "deploy@127.0.0.1" in str(err.value)
    assert "tok-S3cret" not in (client.clone_dir / ".git" / "config").read_text()
    assert client.runner.env[ENV_GIT_PASSWORD] == "tok-S3cret"  # only in the child's environment


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize("overrides, says", [
    ({"repo_url": ""}, "registry setting repo_url is empty"),
    ({"remote_url": "ftp://x/y"}, "registry setting remote_url 'ftp://x/y' must be"),
    ({"repo_url": "ftp://u:pw-S3cret@h/x"}, "registry setting repo_url 'ftp://u@h/x' must be"),
    ({"remote_url": "ssh://u:pw-S3cret@h/x"}, "registry setting remote_url 'ssh://u@h/x' must be"),
    ({"branch": "../main"}, "registry setting branch '../main' is not a valid branch name"),
    ({"key_file": "keys/id"}, "registry setting key_file must be an absolute path"),
    ({"publish_timeout": 0}, "registry setting publish_timeout 0 must be a number of seconds"),
    ({"work_dir": Path("relative/work")}, "registry setting work_dir 'relative/work' must be an absolute path"),
    ({"remote_url": "s3://Upper_Case/x"}, "registry setting remote_url: S3 remote 's3://Upper_Case/x': bucket"),
    ({"remote_url": "s3://k:pw-S3cret@bucket/x"}, "registry setting remote_url: S3 remote: no user, password"),
    ({"s3": S3Access(endpoint_url="http://minio:9000")}, "registry setting s3 (S3 credentials, endpoint, region) is "
                                                         "only for an s3:// remote_url"),
])
def test_settings_errors_speak_of_the_registry_and_show_no_secret(tmp_path, overrides, says):
    with pytest.raises(RegistryError) as err:
        settings(tmp_path, **overrides)
    message = str(err.value)
    assert says in message and "S3cret" not in message
    assert not any(word in message.lower() for word in AIRFLOW_WORDS), message


@pytest.mark.parametrize("fields, says", [
    ({"access_key_id": "AKIA"}, "an access key id without a secret access key"),
    ({"secret_access_key": "pw-S3cret"}, "a secret access key without an access key id"),
    ({"endpoint_url": "http://u:pw-S3cret@minio:9000"}, "(not shown: it has a user part)"),
    ({"endpoint_url": "javascript:alert(1)"}, "must be an http:// or https:// URL"),
    ({"endpoint_url": "http://minio:99999"}, "must be http(s)://host[:port][/path]"),
    ({"endpoint_url": "http://minio:9000/a/../b"}, "must be http(s)://host[:port][/path]"),
    ({"endpoint_url": 'http://minio"/x'}, "without spaces, quotes"),
    ({"endpoint_url": "http://minio:9000#x"}, "without spaces, quotes, query or fragment"),
    ({"region": "eu-west-1\n[core]"}, "is not a region name"),
])
def test_s3_access_errors_show_no_secret(fields, says):
    with pytest.raises(S3SettingsError) as err:
        S3Access(**fields)
    assert says in str(err.value), str(err.value)
    assert "S3cret" not in str(err.value)
    assert not any(word in str(err.value).lower() for word in AIRFLOW_WORDS), str(err.value)


def test_s3_credentials_go_to_dvc_children_only_and_are_redacted(tmp_path):
    access = S3Access("AKIAEXAMPLE", "sec-S3cret", "tok-S3cret", endpoint_url="http://127.0.0.1:9", region="eu-west-1")
    builder = SubprocessEnv(settings(tmp_path, remote_url="s3://bucket/prefix", s3=access), tmp_path / "askpass")
    assert not any("S3cret" in value for value in builder.variables().values())  # git never gets them
    assert builder.dvc_variables() == {"DATASET_REGISTRY_S3": "1", "DATASET_REGISTRY_S3_ACCESS_KEY_ID": "AKIAEXAMPLE",
                                       "DATASET_REGISTRY_S3_SECRET_ACCESS_KEY": "sec-S3cret",
                                       "DATASET_REGISTRY_S3_SESSION_TOKEN": "tok-S3cret",
                                       "DATASET_REGISTRY_S3_ENDPOINT_URL": "http://127.0.0.1:9",
                                       "DATASET_REGISTRY_S3_REGION": "eu-west-1"}
    assert set(builder.secrets) >= {"sec-S3cret", "tok-S3cret"}
    client = RegistryClient(settings(tmp_path, remote_url="s3://bucket/prefix", s3=access))
    assert client.runner.dvc_env == builder.dvc_variables() and "sec-S3cret" in client.runner.secrets
    client.store.repo_dir.joinpath(".dvc").mkdir(parents=True)
    client.store.configure()
    local = (client.store.repo_dir / ".dvc" / "config.local").read_text()
    assert 'url = "s3://bucket/prefix"' in local and 'endpointurl = "http://127.0.0.1:9"' in local
    assert 'region = "eu-west-1"' in local and "S3cret" not in local and "AKIA" not in local


def test_ambient_aws_variables_reach_dvc_children_unless_credentials_are_given(tmp_path, monkeypatch):
    """Without given credentials the worker's AWS_* variables reach the child; with them, the child
    drops the ambient ones before DVC starts (what ``s3_remote.patch_dvc_s3`` does)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAAMBIENT")
    monkeypatch.setenv("AWS_PROFILE", "ambient")
    ambient = RegistryClient(settings(tmp_path, remote_url="s3://bucket/prefix"))
    assert ambient.runner.env["AWS_ACCESS_KEY_ID"] == "AKIAAMBIENT"
    assert ambient.runner.dvc_env == {"DATASET_REGISTRY_S3": "1"}  # no credentials: botocore's chain finds them
    assert RegistryClient(settings(tmp_path)).runner.dvc_env == {}  # not an S3 remote
    given = RegistryClient(settings(tmp_path, remote_url="s3://bucket/prefix", s3=S3Access("AKIAGIVEN", "sec-S3cret")))
    given.clone_dir.mkdir(parents=True)
    code = ("import os, sys; from dataset_registry import s3_remote; s3_remote.patch_dvc_s3(); "
            "print(os.environ.get('AWS_ACCESS_KEY_ID'), os.environ.get('AWS_PROFILE'), "
            "os.environ['DATASET_REGISTRY_S3_ACCESS_KEY_ID'])")
    out = given.runner.run([sys.executable, "-c", code], env=given.runner.dvc_env).stdout.split()
    assert out == ["None", "None", "AKIAGIVEN"]
    plain = ambient.runner.run([sys.executable, "-c", code.replace("os.environ['DATASET_REGISTRY_S3_ACCESS_KEY_ID']",
                                                                   "'-'")]).stdout.split()
    assert plain == ["AKIAAMBIENT", "ambient", "-"]


# ------------------------------------------------------------------ dvc_store
def test_dvc_file_text_is_what_dvc_add_writes_and_parses_back(tmp_path):
    (tmp_path / "train.csv").write_bytes(CONTENT)
    dvc = [sys.executable, "-m", "dataset_registry.dvc_cli"]
    run([*dvc, "init", "-q", "--no-scm"], cwd=tmp_path)
    run([*dvc, "add", "-q", "train.csv"], cwd=tmp_path)
    written = (tmp_path / "train.csv.dvc").read_text()
    assert written == dvc_file_text("train.csv", md5(CONTENT), len(CONTENT))
    assert parse_dvc_file(written) == (md5(CONTENT), len(CONTENT))


@pytest.mark.parametrize("text, says", [
    ("outs:\n- md5: ../../../../etc/passwd\n  size: 3\n  path: x\n", "is not 32 lowercase hex digits"),
    (f"outs:\n- md5: {'A' * 32}\n  size: 3\n  path: x\n", "is not 32 lowercase hex digits"),
    (f"outs:\n- md5: {'a' * 32}\n  size: true\n  path: x\n", "is not a whole number of bytes"),
    (f"outs:\n- md5: {'a' * 32}\n- md5: {'b' * 32}\n", "exactly one output"),
    ("outs: [", "unreadable .dvc file"),
])
def test_a_crafted_dvc_file_is_refused(text, says):
    with pytest.raises(RegistryError, match=says):
        parse_dvc_file(text)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "ab/../../../../tmp/x" + "0" * 12, "A" * 32, "a" * 31,
                                 "a" * 32 + "\n", "a" * 31 + "/", ""])
def test_the_cache_refuses_an_md5_that_is_not_32_lowercase_hex_digits(tmp_path, bad):
    store = DvcStore(tmp_path / "cache", str(tmp_path / "store"), tmp_path / "clone", Runner(tmp_path, {}))
    with pytest.raises(RegistryError, match="not 32 lowercase hex digits"):
        store.object_path(bad)
    good = "0123456789abcdef" * 2
    assert store.object_path(good) == tmp_path / "cache" / "files" / "md5" / "01" / good[2:]


def test_gitignore_gains_the_data_file_once():
    assert gitignore_with("", "train.csv") == "/train.csv\n"
    assert gitignore_with("*.tmp", "train.csv") == "*.tmp\n/train.csv\n"
    assert gitignore_with("*.tmp\n/train.csv\n", "train.csv") == "*.tmp\n/train.csv\n"


def _store_with(tmp_path: Path, content: bytes) -> DvcStore:
    store = DvcStore(tmp_path / "cache", str(tmp_path / "store"), tmp_path / "clone", Runner(tmp_path, {}))
    export = tmp_path / "export.csv"
    export.write_bytes(content)
    store.add(export, md5(content))
    assert not export.exists()  # moved into the cache, not copied
    return store


def test_a_cached_export_is_read_only_and_copies_out_verified(tmp_path):
    store = _store_with(tmp_path, CONTENT)
    obj = store.object_path(md5(CONTENT))
    assert obj.read_bytes() == CONTENT and obj.stat().st_mode & 0o777 == 0o444
    store.copy_out(md5(CONTENT), tmp_path / "out" / "train.csv", "sales/v1")
    assert (tmp_path / "out" / "train.csv").read_bytes() == CONTENT


def test_a_corrupt_cache_object_is_never_copied_out_and_is_removed(tmp_path):
    store = _store_with(tmp_path, CONTENT)
    obj = store.object_path(md5(CONTENT))
    obj.chmod(0o644)
    obj.write_bytes(CONTENT.replace(b"a", b"x"))
    dest = tmp_path / "out" / "train.csv"
    with pytest.raises(RegistryError) as err:
        store.copy_out(md5(CONTENT), dest, "sales/v1")
    assert "sales/v1" in str(err.value) and md5(CONTENT.replace(b"a", b"x")) in str(err.value)
    assert md5(CONTENT) in str(err.value)
    assert not obj.exists() and list(dest.parent.iterdir()) == []  # no dest, no .partial


def test_a_fresh_export_replaces_a_damaged_cached_copy(tmp_path):
    store = _store_with(tmp_path, CONTENT)
    obj = store.object_path(md5(CONTENT))
    obj.chmod(0o644)
    obj.write_bytes(b"damaged")
    export = tmp_path / "again.csv"
    export.write_bytes(CONTENT)
    store.add(export, md5(CONTENT))
    assert obj.read_bytes() == CONTENT


# ------------------------------------------------------------------ the ssh:// remote through OpenSSH
def test_the_remote_ssh_command_has_the_settings_login_key_and_host_key_policy(tmp_path):
    key, known = tmp_path / "id_ed25519", tmp_path / "known_hosts"
    key.write_text("not a real key\n")
    env = SubprocessEnv(settings(tmp_path, key_file=str(key), known_hosts=str(known), ssh_user="other"),
                        tmp_path / "askpass")
    argv, folder = env.remote_ssh()
    assert folder == "/srv/dvc-store" and argv[-2:] == ["--", "registry.example"]
    out = subprocess.run(argv[:-2] + ["-G", "--", argv[-1]], capture_output=True, text=True, check=True).stdout
    config: dict[str, str] = {}
    for line in out.splitlines():
        config.setdefault(*line.partition(" ")[::2])
    identities = [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("identityfile ")]
    assert config["user"] == "dvc" and config["port"] == "2222"  # the URL's login wins, as in dvc_cli
    assert config["stricthostkeychecking"] == "true" and config["userknownhostsfile"] == str(known)
    assert config["batchmode"] == "yes" and config["identitiesonly"] == "yes" and str(key) in identities
    assert config["forwardagent"] == "no" and config["escapechar"] == "none"
    off = SubprocessEnv(settings(tmp_path, check_host_keys=False), tmp_path / "askpass").remote_ssh()[0]
    assert "StrictHostKeyChecking=no" in off and "UserKnownHostsFile=/dev/null" in off


@pytest.mark.parametrize("overrides", [
    {"ssh_password": "pw"},  # only DVC's filesystem gets the SSH password
    {"remote_url": "/srv/dvc-store"},
    {"remote_url": "ssh://dvc@registry.example/srv/dvc store%20x"},
    {"remote_url": "ssh://dvc@registry.example/srv/$(reboot)"},
    {"remote_url": "ssh://-oProxyCommand@registry.example/srv/store"},
])
def test_the_remote_ssh_command_is_only_built_for_plain_key_based_ssh_urls(tmp_path, overrides):
    try:
        s = settings(tmp_path, **overrides)
    except RegistryError:
        return  # refused by the settings already
    assert SubprocessEnv(s, tmp_path / "askpass").remote_ssh() is None


def test_the_remote_ssh_environment_has_no_password_or_askpass(tmp_path):
    env = SubprocessEnv(settings(tmp_path, repo_url="https://u:tok@git.example/r.git"),
                        tmp_path / "askpass").remote_ssh_variables()
    assert "SSH_ASKPASS" not in env and ENV_GIT_PASSWORD not in env and "tok" not in " ".join(env.values())


# Runs the command line that ssh would hand to the remote shell, here, with sh: the remote script is
# exercised on a real filesystem without an SSH server.
LOCAL_SHELL = ["sh", "-c", 'exec sh -c "$1"', "local-shell"]


def _remote(tmp_path: Path, content: bytes, env: dict | None = None) -> tuple[SshObjects, Path, Path]:
    (tmp_path / "worker").mkdir(exist_ok=True)
    store = _store_with(tmp_path / "worker", content)
    remote = tmp_path / "remote"
    remote.mkdir(exist_ok=True)
    digest = md5(content)
    return (SshObjects(LOCAL_SHELL, str(remote), env or base_env()), store.object_path(digest),
            remote / "files" / "md5" / digest[:2] / digest[2:])


def _leftovers(remote_obj: Path) -> list[str]:
    return sorted(p.name for p in remote_obj.parent.iterdir()) if remote_obj.parent.exists() else []


def test_the_remote_script_uploads_a_missing_object_then_only_hashes_it(tmp_path):
    objects, local, remote_obj = _remote(tmp_path, CONTENT)
    ok, lines = objects.ensure(md5(CONTENT), len(CONTENT), local)
    assert ok and lines[0].startswith("missing:") and "uploaded, md5sum on the remote host" in lines[-1]
    assert remote_obj.read_bytes() == CONTENT and _leftovers(remote_obj) == [remote_obj.name]
    ok, lines = objects.ensure(md5(CONTENT), len(CONTENT), local)
    assert ok and lines == [f"ok: object {md5(CONTENT)} ({len(CONTENT)} bytes) is on the remote, content "
                            "verified (md5sum on the remote host)"]


@pytest.mark.parametrize("damage", ["same size, other bytes", "short", "long", "empty"])
def test_the_remote_script_replaces_a_wrong_remote_object(tmp_path, damage):
    objects, local, remote_obj = _remote(tmp_path, CONTENT)
    remote_obj.parent.mkdir(parents=True)
    remote_obj.write_bytes({"same size, other bytes": CONTENT.replace(b"a", b"x"), "short": CONTENT[:-3],
                            "long": CONTENT + b"4,d\n", "empty": b""}[damage])
    remote_obj.chmod(0o444)  # as DVC leaves objects: the rename replaces it anyway
    ok, lines = objects.ensure(md5(CONTENT), len(CONTENT), local)
    assert ok and lines[0].startswith("corrupt:"), lines
    assert remote_obj.read_bytes() == CONTENT and _leftovers(remote_obj) == [remote_obj.name]


def test_the_remote_script_never_renames_bytes_that_do_not_hash_right(tmp_path):
    objects, local, remote_obj = _remote(tmp_path, CONTENT)
    local.chmod(0o644)
    local.write_bytes(CONTENT.replace(b"a", b"x"))  # the cached copy went bad after the export hashed it
    ok, lines = objects.ensure(md5(CONTENT), len(CONTENT), local)
    assert not ok and "did not verify" in lines[-1] and "holds bytes with md5" in lines[-1]
    assert _leftovers(remote_obj) == []  # no object, no temporary file


def test_the_remote_script_fails_when_the_local_copy_is_gone_and_leaves_nothing(tmp_path):
    objects, local, remote_obj = _remote(tmp_path, CONTENT)
    local.chmod(0o644)
    local.unlink()
    ok, lines = objects.ensure(md5(CONTENT), len(CONTENT), local)
    assert not ok and "is not on the remote, and uploading it failed" in lines[-1] and str(local) in lines[-1]
    assert _leftovers(remote_obj) == []


def test_the_remote_script_refuses_a_directory_in_place_of_the_object(tmp_path):
    objects, local, remote_obj = _remote(tmp_path, CONTENT)
    remote_obj.mkdir(parents=True)
    ok, lines = objects.ensure(md5(CONTENT), len(CONTENT), local)
    assert not ok and "is a directory, not a file" in lines[-1] and list(remote_obj.iterdir()) == []


def test_the_remote_script_reports_a_full_disk_and_removes_its_temporary_file(tmp_path, monkeypatch):
    import dataset_registry.dvc_store as dvc_store_module

    objects, local, remote_obj = _remote(tmp_path, CONTENT)
    remote_obj.parent.mkdir(parents=True)
    monkeypatch.setattr(dvc_store_module.uuid, "uuid4", lambda: type("Fixed", (), {"hex": "full"}))
    # /dev/full fails every write with ENOSPC: the upload's temporary name points there
    (remote_obj.parent / f".{remote_obj.name}.full.tmp").symlink_to("/dev/full")
    ok, lines = objects.ensure(md5(CONTENT), len(CONTENT), local)
    assert not ok and "uploading it failed" in lines[-1] and "No space left" in lines[-1], lines
    assert "free space there" in lines[-1] and _leftovers(remote_obj) == []


def test_a_host_that_cannot_run_the_script_is_left_to_dvc(tmp_path):
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("sh", "cat", "wc", "mkdir", "rm", "mv"):  # no md5sum
        (bare / tool).symlink_to(subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True,
                                                text=True, check=True).stdout.strip())
    objects, local, remote_obj = _remote(tmp_path, CONTENT, env={**base_env(), "PATH": str(bare)})
    objects.ssh = [str(bare / "sh"), "-c", 'exec sh -c "$1"', "local-shell"]
    assert objects.ensure(md5(CONTENT), len(CONTENT), local) is None
    objects.env = base_env()
    objects.ssh = ["false"]  # unreachable, refused, wrong key: DVC's filesystem words the error
    assert objects.ensure(md5(CONTENT), len(CONTENT), local) is None
    objects.ssh = [str(tmp_path / "no-ssh-client")]
    assert objects.ensure(md5(CONTENT), len(CONTENT), local) is None
    assert _leftovers(remote_obj) == []


# ------------------------------------------------------------------ no I/O in constructors
def test_constructors_touch_no_disk(tmp_path):
    work = tmp_path / "missing" / "work"
    s = settings(tmp_path, work_dir=work, ssh_password="pw", repo_url="https://u:tok@127.0.0.1:1/r.git")
    runner = Runner(work / "clone", {})
    clone = WorkingClone(work / "clone", work / "clone.lock", "https://u@127.0.0.1:1/r.git", "main", s.remote_url,
                         runner)
    RegistryVersions(clone), Landing(clone), StagingArea(work / "staging")
    DvcStore(work / "cache", s.remote_url, work / "clone", runner), SubprocessEnv(s, work / "askpass")
    client = RegistryClient(s)
    assert client.work_dir == work and not (tmp_path / "missing").exists()
    staged = client.staging_file("sales", "train.csv")  # first use creates what it needs, no more
    assert staged.parent.is_dir() and not staged.exists() and not client.clone_dir.exists()
    assert sorted(p.name for p in work.iterdir()) == ["staging"]  # the askpass script waits for a command


# ------------------------------------------------------------------ the parts together, without sshd
def _publish(client: RegistryClient, version: str, content: bytes):
    staged = client.staging_file("sales", "train.csv")
    staged.write_bytes(content)
    return client.publish("sales", "train.csv", version, staged, md5(content), content.count(b"\n") - 1)


def test_publish_and_pull_on_a_local_registry(tmp_path):
    bare, store = tmp_path / "registry.git", tmp_path / "store"
    run(["git", "init", "-q", "--bare", "--initial-branch=main", bare])
    store.mkdir()
    local = {"repo_url": str(bare), "remote_url": str(store)}
    publisher = RegistryClient(settings(tmp_path, work_dir=tmp_path / "publisher", **local))
    first = _publish(publisher, "v1", CONTENT)
    assert first.created and first.tag == "sales/v1" and first.rows == 2
    assert not _publish(publisher, "v1", CONTENT).created  # same bytes again: nothing changes
    with pytest.raises(VersionConflictError) as err:
        _publish(publisher, "v1", CONTENT + b"3,c\n")
    assert md5(CONTENT) in str(err.value) and not any(w in str(err.value).lower() for w in AIRFLOW_WORDS)
    assert _publish(publisher, "v2", CONTENT + b"3,c\n").created

    puller = RegistryClient(settings(tmp_path, work_dir=tmp_path / "puller", **local))
    info, path, downloaded = puller.pull("sales", "train.csv", None, tmp_path / "pulled" / "train.csv")
    assert (info.version, downloaded, path.read_bytes()) == ("v2", True, CONTENT + b"3,c\n")
    info, path, downloaded = puller.pull("sales", "train.csv", "v1", tmp_path / "pulled" / "v1.csv")
    assert (info.md5, downloaded, path.read_bytes()) == (md5(CONTENT), True, CONTENT)
    assert puller.pull("sales", "train.csv", "v1", tmp_path / "again.csv")[2] is False  # from the cache
    assert puller.list_versions("sales") == ["v2", "v1"]
    with pytest.raises(VersionNotFoundError, match="newest available: v2, v1"):
        puller.resolve_version("sales", "train.csv", "v9")
    assert run(["git", "-C", bare, "for-each-ref", "refs/registry-pending/"]).stdout == ""


def test_an_sftp_only_host_is_given_up_after_the_hello_deadline_and_remembered(tmp_path, monkeypatch):
    """`ForceCommand internal-sftp` runs sftp-server, which waits for a packet and never says hello:
    the fast path must not wait for the whole timeout (the clone's flock is held meanwhile). The host
    is remembered for NO_SHELL_SECONDS only: one that was just slow to answer gets its fast path back."""
    import time

    import dataset_registry.dvc_store as dvc_store_module

    monkeypatch.setattr(dvc_store_module, "HELLO_SECONDS", 1.0)
    objects, local, remote_obj = _remote(tmp_path, CONTENT)
    shell_now = tmp_path / "the host runs commands now"
    argv = ["sh", "-c", 'if [ -e "$0" ]; then exec sh -c "$1"; else exec sleep 60; fi', str(shell_now)]
    state = tmp_path / "worker" / "state"
    objects = SshObjects(argv, objects.root, objects.env, state_dir=state)
    started = time.monotonic()
    assert objects.ensure(md5(CONTENT), len(CONTENT), local) is None  # reads nothing, says nothing
    assert time.monotonic() - started < 10
    shell_now.touch()
    started = time.monotonic()
    assert objects.ensure(md5(CONTENT), len(CONTENT), local) is None  # remembered: not even tried
    assert time.monotonic() - started < 0.5
    assert _leftovers(remote_obj) == []
    remembered_until = dvc_store_module._NO_SHELL[tuple(argv)]
    assert 0 < remembered_until - time.monotonic() <= dvc_store_module.NO_SHELL_SECONDS
    # Airflow runs each task in a new process: the worker's folder remembers it too
    dvc_store_module._NO_SHELL.clear()
    next_task = SshObjects(argv, objects.root, objects.env, state_dir=state)
    started = time.monotonic()
    assert next_task.ensure(md5(CONTENT), len(CONTENT), local) is None
    assert time.monotonic() - started < 0.5
    # ... for NO_SHELL_SECONDS: then the host is tried again (it was only slow, or it has a shell now)
    old = time.time() - dvc_store_module.NO_SHELL_SECONDS - 1
    os.utime(next_task.no_shell_marker, (old, old))
    ok, lines = next_task.ensure(md5(CONTENT), len(CONTENT), local)
    assert ok and "uploaded, md5sum on the remote host" in lines[-1] and remote_obj.read_bytes() == CONTENT
