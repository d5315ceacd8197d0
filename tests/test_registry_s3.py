"""S3-compatible DVC remotes against a real S3 server on loopback (moto's standalone server, with SigV4
signatures and IAM keys enforced; see ``s3_server``): publish -> tag -> pull through the hook with an
``aws`` connection and with the worker's own credentials, wrong secrets and missing buckets refused
with nothing tagged, a corrupted object detected and replaced, a person's plain ``git`` + ``dvc pull``,
a server that dies mid-publish, and the DAGs end to end."""
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from dataset_registry.hooks.registry_hook import DvcRegistryHook
from dataset_registry.registry import RegistryClient, RegistryError
from s3_server import REGION, make_s3_registry, s3_registry, s3_server, start_s3_server  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow

CONTENT = b'id,name\n1,a\n2,"b, c"\n3,\n'
AMBIENT_WRONG = {"AWS_ACCESS_KEY_ID": "AKIAAMBIENTWRONG0000", "AWS_SECRET_ACCESS_KEY": "ambient-wrong-secret"}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def use_env(monkeypatch, env: dict[str, str], clear_aws: bool = True) -> None:
    if clear_aws:
        for name in [n for n in os.environ if n.startswith("AWS_")]:
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def publish(client: RegistryClient, version: str, content: bytes = CONTENT, project: str = "sales"):
    staged = client.staging_file(project, "train.csv")
    staged.write_bytes(content)
    return client.publish(project, "train.csv", version, staged, md5(content), content.count(b"\n") - 1)


def test_round_trip_through_the_hook_with_an_aws_connection(tmp_path, s3_registry, monkeypatch, caplog):
    """The aws connection's keys are used even though the worker's own AWS_* variables hold other (wrong)
    ones: a named connection wins. Data reaches the bucket, verified, before the tag exists."""
    reg = s3_registry
    use_env(monkeypatch, {**reg.conn_env(work_dir=str(tmp_path / "worker")), **AMBIENT_WRONG})
    caplog.set_level(logging.INFO, logger="dataset_registry")
    result = publish(DvcRegistryHook().get_conn(), "v1")

    assert result.created and reg.tags() == ["sales/v1"] and reg.commit_count() == 2
    assert reg.objects() == {md5(CONTENT): CONTENT}  # the exact bytes, under their md5, in the bucket
    assert "content verified (S3 ETag = md5 of a single-part upload)" in caplog.text
    tracked = reg.git("show", "sales/v1:.dvc/config")
    assert f"url = s3://{reg.bucket}/registry" in tracked and "127.0.0.1" not in tracked  # endpoint: local config only
    assert md5(CONTENT) in reg.git("show", "sales/v1:sales/train.csv.dvc")

    monkeypatch.setenv("AIRFLOW_CONN_DVC_REGISTRY", reg.conn_env(work_dir=str(tmp_path / "puller"))["AIRFLOW_CONN_DVC_REGISTRY"])
    info, path, downloaded = DvcRegistryHook().get_conn().pull("sales", "train.csv", "v1", tmp_path / "out" / "v1.csv")
    assert (info.tag, info.md5, downloaded, path.read_bytes()) == ("sales/v1", md5(CONTENT), True, CONTENT)
    again = publish(DvcRegistryHook().get_conn(), "v1")  # same bytes again: verified, nothing changes
    assert not again.created and reg.commit_count() == 2


def test_ambient_credentials_when_no_connection_is_named(tmp_path, s3_registry, monkeypatch):
    """No remote_conn_id: what botocore finds on the worker (here AWS_* variables, the endpoint in
    AWS_ENDPOINT_URL as botocore reads it) reaches the DVC child processes."""
    reg = s3_registry
    use_env(monkeypatch, {**reg.conn_env(remote_conn_id=None, work_dir=str(tmp_path / "worker")),
                          **reg.server.aws_variables(AWS_ENDPOINT_URL=reg.server.endpoint)})
    hook = DvcRegistryHook()
    assert hook.settings.s3 is None
    assert publish(hook.get_conn(), "v1").created and reg.tags() == ["sales/v1"]
    assert reg.objects() == {md5(CONTENT): CONTENT}
    client = RegistryClient(reg.settings(tmp_path / "puller", s3=None))
    assert client.pull("sales", "train.csv", "v1", tmp_path / "v1.csv")[1].read_bytes() == CONTENT

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")  # the ambient credentials really are the ones used
    with pytest.raises(RegistryError, match="SignatureDoesNotMatch"):
        publish(RegistryClient(reg.settings(tmp_path / "w2", s3=None)), "v2", CONTENT + b"4,d\n")
    assert reg.tags() == ["sales/v1"]


def test_wrong_secret_is_refused_naming_the_remote_and_nothing_is_tagged(tmp_path, s3_registry, monkeypatch, caplog):
    """Valid ambient credentials are on the worker too: the connection's wrong secret still wins."""
    reg = s3_registry
    wrong = "Wr0ng/Secret+" + "x" * 27
    env = reg.conn_env(work_dir=str(tmp_path / "worker"))
    aws = json.loads(env["AIRFLOW_CONN_AWS_REGISTRY"])
    env["AIRFLOW_CONN_AWS_REGISTRY"] = json.dumps({**aws, "password": wrong})
    use_env(monkeypatch, {**env, **reg.server.aws_variables(AWS_ENDPOINT_URL=reg.server.endpoint)})
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RegistryError) as err:
        publish(DvcRegistryHook().get_conn(), "v1")
    text = str(err.value)
    assert f"the DVC remote s3://{reg.bucket}/registry" in text and "SignatureDoesNotMatch" in text
    assert "the secret access key is wrong" in text and "Nothing was committed or tagged" in text
    assert wrong not in text and wrong not in caplog.text and reg.server.secret_access_key not in text
    assert reg.tags() == [] and reg.commit_count() == 0 and reg.objects() == {}


def test_pull_with_wrong_credentials_or_from_a_missing_bucket_says_so(tmp_path, s3_registry):
    reg = s3_registry
    publish(RegistryClient(reg.settings(tmp_path / "w")), "v1")
    bad = RegistryClient(reg.settings(tmp_path / "bad", s3=reg.access(access_key_id="AKIAUNKNOWN000000000")))
    with pytest.raises(RegistryError) as err:
        bad.pull("sales", "train.csv", "v1", tmp_path / "v1.csv")
    assert "InvalidAccessKeyId" in str(err.value) and f"s3://{reg.bucket}/registry" in str(err.value)
    assert not (tmp_path / "v1.csv").exists()
    gone = RegistryClient(reg.settings(tmp_path / "gone", remote_url="s3://no-such-bucket-here/registry"))
    with pytest.raises(RegistryError, match="the bucket does not exist"):
        gone.pull("sales", "train.csv", "v1", tmp_path / "v1.csv")


def test_missing_bucket_is_named_and_nothing_is_tagged(tmp_path, s3_registry):
    reg = s3_registry
    client = RegistryClient(reg.settings(tmp_path / "w", remote_url="s3://no-such-bucket-here/registry"))
    with pytest.raises(RegistryError) as err:
        publish(client, "v1")
    text = str(err.value)
    assert "the DVC remote s3://no-such-bucket-here/registry" in text
    assert "bucket 'no-such-bucket-here': the bucket does not exist" in text and "NoSuchBucket" in text
    assert reg.tags() == [] and reg.commit_count() == 0


def test_a_corrupted_object_is_detected_never_pulled_and_replaced_on_republish(tmp_path, s3_registry, caplog):
    reg = s3_registry
    publish(RegistryClient(reg.settings(tmp_path / "w")), "v1")
    s3 = reg.server.client()
    damaged = CONTENT.replace(b"a", b"z")  # same size: only the content proves it wrong
    s3.put_object(Bucket=reg.bucket, Key=reg.object_key(md5(CONTENT)), Body=damaged)

    with pytest.raises(RegistryError, match=f"holds bytes with md5 {md5(damaged)}"):
        RegistryClient(reg.settings(tmp_path / "puller")).pull("sales", "train.csv", "v1", tmp_path / "v1.csv")
    assert not (tmp_path / "v1.csv").exists() and not any((tmp_path / "puller" / "dvc-cache").rglob("files/md5/*/*"))

    caplog.set_level(logging.INFO, logger="dataset_registry")
    result = publish(RegistryClient(reg.settings(tmp_path / "w2")), "v1")  # same version, same bytes
    assert not result.created and f"holds bytes with md5 {md5(damaged)}: uploading it" in caplog.text
    assert reg.objects() == {md5(CONTENT): CONTENT} and reg.tags() == ["sales/v1"]


def test_an_object_whose_etag_is_not_its_md5_is_read_back_and_hashed(tmp_path, s3_registry, caplog):
    """A multipart upload's ETag is not an md5 (``<hex>-<parts>``): the bytes are read back instead."""
    reg = s3_registry
    s3, key = reg.server.client(), reg.object_key(md5(CONTENT))
    upload = s3.create_multipart_upload(Bucket=reg.bucket, Key=key)
    part = s3.upload_part(Bucket=reg.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=CONTENT)
    s3.complete_multipart_upload(Bucket=reg.bucket, Key=key, UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    assert "-" in s3.head_object(Bucket=reg.bucket, Key=key)["ETag"]
    caplog.set_level(logging.INFO, logger="dataset_registry")
    assert publish(RegistryClient(reg.settings(tmp_path / "w")), "v1").created
    assert "content verified (read back and hashed)" in caplog.text and "uploading" not in caplog.text


def test_remote_options_pushed_into_the_tracked_dvc_config_are_not_trusted(tmp_path, s3_registry):
    """Whoever can push to the registry writes its .dvc/config: an endpoint, profile or credentials
    file put there must not redirect a worker's uploads (or its signed requests) elsewhere."""
    reg = s3_registry
    publish(RegistryClient(reg.settings(tmp_path / "w")), "v1")
    evil = tmp_path / "evil"
    env = {**os.environ, "GIT_AUTHOR_NAME": "e", "GIT_AUTHOR_EMAIL": "e@e", "GIT_COMMITTER_NAME": "e",
           "GIT_COMMITTER_EMAIL": "e@e"}
    subprocess.run(["git", "clone", "-q", reg.repo_url, str(evil)], check=True, env=env)
    config = evil / ".dvc" / "config"
    config.write_text(config.read_text() + "    endpointurl = http://127.0.0.1:9\n    profile = nobody\n"
                      "    credentialpath = /nonexistent\n    use_ssl = false\n    acl = public-read\n"
                      "    sse = aws:kms\n    sse_kms_key_id = arn:aws:kms:us-east-1:999999999999:key/attacker\n")
    for argv in (["git", "commit", "-q", "-am", "point the remote elsewhere"], ["git", "push", "-q", "origin", "main"]):
        subprocess.run(argv, cwd=evil, check=True, env=env)
    result = publish(RegistryClient(reg.settings(tmp_path / "w2")), "v2", CONTENT + b"4,d\n")
    assert result.created and md5(CONTENT + b"4,d\n") in reg.objects()
    s3 = reg.server.client()
    key = reg.object_key(md5(CONTENT + b"4,d\n"))
    grants = s3.get_object_acl(Bucket=reg.bucket, Key=key)["Grants"]
    assert not [g for g in grants if "AllUsers" in str(g.get("Grantee"))], grants  # not made public
    assert "SSEKMSKeyId" not in s3.head_object(Bucket=reg.bucket, Key=key)  # not encrypted with their key
    puller = RegistryClient(reg.settings(tmp_path / "puller"))
    assert puller.pull("sales", "train.csv", "v2", tmp_path / "v2.csv")[1].read_bytes() == CONTENT + b"4,d\n"


def test_a_person_pulls_by_hand_with_git_and_dvc_and_their_own_credentials(tmp_path, s3_registry):
    reg = s3_registry
    publish(RegistryClient(reg.settings(tmp_path / "w")), "v1")
    publish(RegistryClient(reg.settings(tmp_path / "w")), "v2", CONTENT + b"4,d\n")
    assert reg.plain_pull("sales/v1", tmp_path / "by-hand", "sales/train.csv") == CONTENT


def test_a_server_that_goes_away_mid_publish_tags_nothing(tmp_path):
    """The S3 server is killed after the registry is prepared, before the upload: a clear error in
    bounded time, no tag, no commit on the registry."""
    server = start_s3_server(tmp_path / "moto")
    try:
        reg = make_s3_registry(tmp_path, server)
        client = RegistryClient(reg.settings(tmp_path / "w"))
        original = client._push_data

        def push_after_the_server_died(*args):
            server.stop()
            return original(*args)

        client._push_data = push_after_the_server_died
        started = time.monotonic()
        with pytest.raises(RegistryError) as err:
            publish(client, "v1")
        assert time.monotonic() - started < 90
        assert f"the DVC remote s3://{reg.bucket}/registry" in str(err.value)
        assert "Could not connect" in str(err.value) or "connect" in str(err.value).lower()
        assert reg.tags() == [] and reg.commit_count() == 0
    finally:
        server.stop()


def test_the_command_line_reads_the_aws_connection_from_the_environment(tmp_path, s3_registry):
    """``dataset-registry pull`` (no Airflow) with both connections as AIRFLOW_CONN_* JSON; a non-aws
    one is refused naming both, exit 2."""
    reg = s3_registry
    publish(RegistryClient(reg.settings(tmp_path / "w")), "v1")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DATASET_", "AWS_"))}
    env.update(PYTHONPATH=str(REPO / "plugins"), **reg.conn_env(work_dir=str(tmp_path / "cli-work")))
    argv = [sys.executable, "-m", "dataset_registry", "pull", "sales", "v1", "--to", str(tmp_path / "v1.csv"), "--json"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["md5"] == md5(CONTENT) and (tmp_path / "v1.csv").read_bytes() == CONTENT
    env["AIRFLOW_CONN_AWS_REGISTRY"] = json.dumps({"conn_type": "generic", "login": "AKIA", "password": "pw-secret"})
    proc = subprocess.run(argv[:-2] + [str(tmp_path / "again.csv")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "AIRFLOW_CONN_DVC_REGISTRY: extra.remote_conn_id names 'aws_registry'" in proc.stderr
    assert "it must be 'aws'" in proc.stderr and "pw-secret" not in proc.stderr + proc.stdout


def dags_test(env, conf: dict, cwd: Path, dag_id: str) -> subprocess.CompletedProcess:
    airflow = str(Path(sys.executable).parent / "airflow")
    return subprocess.run([airflow, "dags", "test", dag_id, "-c", json.dumps(conf)],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_version_and_train_dags_end_to_end_on_an_s3_remote(tmp_path, shop, s3_registry):
    """`airflow dags test version_shop` then `train_shop`, the registry's data on S3 (aws connection)."""
    reg = s3_registry
    env = {k: v for k, v in shop.items() if not k.startswith("AWS_")}
    env.update(reg.conn_env(work_dir=str(tmp_path / "worker")))
    proc = dags_test(env, {"start": "2024-05-01T00:00:00Z", "end": "2024-05-02T00:00:00Z"}, tmp_path, "version_shop")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert reg.tags() == ["shop/v20240502T000000"]
    expected = b'id,item,price,at\n1,tea,3.50,2024-05-01 10:00:00\n2,"",0.00,2024-05-01 11:00:00\n3,,9.99,2024-05-01 23:00:00\n'
    assert reg.objects() == {md5(expected): expected}
    trained = dags_test(env, {"version": "v20240502T000000"}, tmp_path, "train_shop")
    out += trained.stdout + trained.stderr
    assert trained.returncode == 0, out[-4000:]
    import sqlite3

    with sqlite3.connect(env["MODEL_DB_PATH"]) as db:
        rows = db.execute("SELECT training_dataset, status, dataset_md5 FROM experiments").fetchall()
    assert rows == [("shop/v20240502T000000", "succeeded", md5(expected))]
    assert reg.server.secret_access_key not in out and not (REPO / "pwned").exists()
