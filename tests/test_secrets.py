"""SSH password authentication, and the password never leaking: exception, logs, XCom/stdout,
files of the working clone, the registry's git history, the DVC remote."""
import hashlib
import json
import logging
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import MYSQL_PASSWORD, MYSQL_USER, make_sshd, run
from dataset_registry.registry import RegistryClient, RegistryError, RegistrySettings

pytestmark = pytest.mark.slow
USER = "dsvpwtest"


@pytest.fixture(scope="module")
def password_host(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("creating a local SSH user needs root (CI and `make test` run as root here)")
    password = "S3cr3t-" + uuid.uuid4().hex
    if subprocess.run(["id", USER], capture_output=True).returncode != 0:
        run(["useradd", "--create-home", "--shell", "/bin/sh", USER])
    subprocess.run(["chpasswd"], input=f"{USER}:{password}\n", text=True, check=True)
    root = Path(f"/tmp/dsv-pw-{uuid.uuid4().hex[:8]}")
    root.mkdir(mode=0o755)
    server = make_sshd(tmp_path_factory.mktemp("pw-sshd"), "PasswordAuthentication yes\nPermitEmptyPasswords no\n")
    yield server, password, root
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def fresh_registry(root: Path) -> tuple[Path, Path]:
    case = root / uuid.uuid4().hex[:8]
    bare, store = case / "registry.git", case / "store"
    run(["git", "init", "-q", "--bare", "--initial-branch=main", bare])
    store.mkdir(parents=True)
    run(["chown", "-R", f"{USER}:{USER}", case])
    return bare, store


def settings(server, bare, store, password, work_dir):
    return RegistrySettings(
        repo_url=f"ssh://127.0.0.1:{server.port}{bare}", remote_url=f"ssh://127.0.0.1:{server.port}{store}",
        work_dir=work_dir, ssh_user=USER, ssh_password=password, known_hosts=str(server.known_hosts),
    )


def assert_nowhere(secret: str, *places: Path, texts=()):
    for text in texts:
        assert secret not in text
    for place in places:
        for path in [place] if place.is_file() else place.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert secret.encode() not in path.read_bytes(), f"password found in {path}"


def publish(client, content=b"a\n1\n"):
    staged = client.staging_file("sales", "train.csv")
    staged.write_bytes(content)
    return client.publish("sales", "train.csv", "v1", staged, hashlib.md5(content).hexdigest(), 1)


def test_password_auth_publishes_and_the_password_is_nowhere(tmp_path, password_host, caplog):
    server, password, root = password_host
    bare, store = fresh_registry(root)
    caplog.set_level(logging.DEBUG)
    result = publish(RegistryClient(settings(server, bare, store, password, tmp_path / "work")))
    assert result.created and run(["git", "-c", "safe.directory=*", "-C", bare, "tag"]).stdout.split() == ["sales/v1"]
    assert any(store.rglob("*")), "no object reached the DVC remote"
    history = run(["git", "-c", "safe.directory=*", "-C", bare, "log", "--all", "-p", "--format=%H %an %s%n%b"]).stdout
    config = run(["git", "-c", "safe.directory=*", "-C", bare, "show", "main:.dvc/config"]).stdout
    assert_nowhere(password, tmp_path / "work", bare, store, texts=[caplog.text, history, config, repr(result)])


def test_wrong_password_fails_without_leaking_it(tmp_path, password_host, caplog):
    server, password, root = password_host
    bare, store = fresh_registry(root)
    wrong = "Wr0ng-" + uuid.uuid4().hex
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RegistryError) as err:
        publish(RegistryClient(settings(server, bare, store, wrong, tmp_path / "work")))
    assert "registry repository" in str(err.value)
    assert run(["git", "-c", "safe.directory=*", "-C", bare, "tag"]).stdout.strip() == "" and not any(store.rglob("*"))
    assert_nowhere(wrong, tmp_path / "work", bare, texts=[str(err.value), repr(err.value), caplog.text])
    assert_nowhere(password, tmp_path / "work", texts=[str(err.value), caplog.text])


def test_password_never_reaches_airflow_task_output(tmp_path, password_host, mysql_db):
    import sys

    server, password, root = password_host
    bare, store = fresh_registry(root)
    db, connect = mysql_db
    conn = connect()
    conn.cursor().execute("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))")
    conn.cursor().execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    conn.close()
    projects = tmp_path / "projects"
    projects.mkdir()
    (projects / "pw.yaml").write_text(f"project: pw\nschedule: null\noutput: d.csv\nretries: 0\nquery: SELECT id, v FROM {db}.t ORDER BY id\n")
    env = {**os.environ, "DATASET_PROJECTS_DIR": str(projects), "DATASET_WORK_DIR": str(tmp_path / "work"),
           "MODEL_DB_PATH": str(tmp_path / "m.sqlite"),
           "AIRFLOW_CONN_MYSQL_RAW": json.dumps({"conn_type": "mysql", "host": "127.0.0.1", "login": MYSQL_USER, "password": MYSQL_PASSWORD}),
           "AIRFLOW_CONN_DVC_REGISTRY": json.dumps({"conn_type": "generic", "login": USER, "password": password, "extra": {
               "repo_url": f"ssh://127.0.0.1:{server.port}{bare}", "remote_url": f"ssh://127.0.0.1:{server.port}{store}",
               "known_hosts": str(server.known_hosts)}})}
    airflow = str(Path(sys.executable).parent / "airflow")
    proc = subprocess.run([airflow, "dags", "test", "version_pw", "-c",
                           json.dumps({"version": "v1", "start": "2024-01-01T00:00:00Z", "end": "2024-01-02T00:00:00Z"})],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert run(["git", "-c", "safe.directory=*", "-C", bare, "tag"]).stdout.split() == ["pw/v1"]
    assert_nowhere(password, tmp_path / "work", bare, store, texts=[proc.stdout, proc.stderr])


# ------------------------------------------------------------------ S3 remotes: secret key and session token
from s3_server import make_s3_registry, s3_server  # noqa: E402,F401 - the fixture


def test_s3_secret_and_session_token_are_nowhere(tmp_path, s3_server, monkeypatch, caplog):
    """Temporary credentials (an assumed role: key id, secret, session token) in the aws connection:
    published and pulled, then neither the secret nor the token is in the registry's history or tracked
    files, the clone's DVC configs, the worker's folder, the logs or the results; nor in the message of
    a publish whose token is wrong."""
    from dataset_registry.hooks.registry_hook import DvcRegistryHook

    reg = make_s3_registry(tmp_path, s3_server)
    creds = s3_server.session_credentials()
    secret, token = creds["SecretAccessKey"], creds["SessionToken"]
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    env = reg.conn_env(work_dir=str(tmp_path / "work"))
    aws = json.loads(env["AIRFLOW_CONN_AWS_REGISTRY"])
    aws.update(login=creds["AccessKeyId"], password=secret)
    aws["extra"]["aws_session_token"] = token
    env["AIRFLOW_CONN_AWS_REGISTRY"] = json.dumps(aws)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG)

    client = DvcRegistryHook().get_conn()
    result = publish(client)
    info, pulled, _ = client.pull("sales", "train.csv", "v1", tmp_path / "pulled.csv")
    assert result.created and reg.tags() == ["sales/v1"] and pulled.read_bytes() == b"a\n1\n"
    assert reg.objects() == {hashlib.md5(b"a\n1\n").hexdigest(): b"a\n1\n"}  # the session credentials did the upload

    history = run(["git", "-C", reg.bare, "log", "--all", "-p", "--format=%H %an %s%n%b"]).stdout
    tracked = "".join(run(["git", "-C", reg.bare, "show", f"sales/v1:{path}"]).stdout for path in
                      run(["git", "-C", reg.bare, "ls-tree", "-r", "--name-only", "sales/v1"]).stdout.split())
    local_config = (client.clone_dir / ".dvc" / "config.local").read_text()
    assert f"endpointurl = \"{s3_server.endpoint}\"" in local_config  # the endpoint is there, no secret
    for value in (secret, token):
        assert_nowhere(value, tmp_path / "work", reg.bare, tmp_path / "pulled.csv",
                       texts=[caplog.text, history, tracked, local_config, repr(result), repr(info),
                              repr(DvcRegistryHook().settings)])

    aws["extra"]["aws_session_token"] = token[:-8] + "00000000"
    monkeypatch.setenv("AIRFLOW_CONN_AWS_REGISTRY", json.dumps(aws))
    staged_client = DvcRegistryHook().get_conn()
    with pytest.raises(RegistryError) as err:
        staged = staged_client.staging_file("sales", "train.csv")
        staged.write_bytes(b"a\n2\n")
        staged_client.publish("sales", "train.csv", "v2", staged, hashlib.md5(b"a\n2\n").hexdigest(), 1)
    assert "session token" in str(err.value) and reg.tags() == ["sales/v1"]
    for value in (secret, token, token[:-8]):
        assert value not in str(err.value) and value not in caplog.text
