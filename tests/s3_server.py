"""A real S3-compatible server on loopback for the tests: moto's standalone server (``moto_server``).

No real cloud is reachable here, and moto is what can be installed: it speaks the S3 REST API,
computes ETags as S3 does (md5 of a single-part object), and, with ``INITIAL_NO_AUTH_ACTION_COUNT``
set, verifies every request's SigV4 signature against IAM access keys it created (after that many
unauthenticated actions). The fixture spends those first actions on creating an IAM user with an
access key, a policy allowing ``s3:*`` and ``sts:AssumeRole``, and a role to assume (for session
tokens); from then on only those keys work, so a wrong secret really is refused.

Import the fixtures into a test module (``from s3_server import s3_server, s3_registry``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import free_port

REGION = "eu-west-1"
IAM_SETUP_ACTIONS = 5  # create_user, create_access_key, put_user_policy, create_role, put_role_policy
_ALLOW_S3 = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*", "sts:AssumeRole"],
                                                      "Resource": "*"}]}
_TRUST_ANYONE = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"},
                                                         "Action": "sts:AssumeRole"}]}


@dataclass
class S3Server:
    """One running moto server and the IAM access key it accepts."""

    endpoint: str
    access_key_id: str
    secret_access_key: str
    proc: subprocess.Popen
    log: Path

    def client(self, service: str = "s3", **overrides):
        import boto3

        kwargs = {"endpoint_url": self.endpoint, "region_name": REGION, "aws_access_key_id": self.access_key_id,
                  "aws_secret_access_key": self.secret_access_key, **overrides}
        return boto3.client(service, **kwargs)

    def new_bucket(self) -> str:
        name = f"reg-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
        return name

    def session_credentials(self) -> dict:
        """Temporary credentials (an assumed role): AccessKeyId, SecretAccessKey, SessionToken."""
        account = self.client("sts").get_caller_identity()["Account"]
        return self.client("sts").assume_role(RoleArn=f"arn:aws:iam::{account}:role/registry-role",
                                              RoleSessionName="registry-test")["Credentials"]

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix``: key -> bytes."""
        s3, found = self.client(), {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        return found

    def aws_variables(self, **extra) -> dict[str, str]:
        """The AWS_* variables of a person (or worker) whose AWS credentials are these keys."""
        return {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
                "AWS_DEFAULT_REGION": REGION, **extra}

    def aws_env(self, **extra) -> dict[str, str]:
        """This process's environment with only ``aws_variables`` for AWS."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(self.aws_variables(**extra))
        return env

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_s3_server(root: Path, timeout: float = 30) -> S3Server:
    """Start ``moto_server`` on a free loopback port, wait (at most ``timeout`` s) until it answers,
    then create the IAM user, key, policy and role; from then on requests must be signed by that key."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = root / "moto.log"
    binary = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(INITIAL_NO_AUTH_ACTION_COUNT=str(IAM_SETUP_ACTIONS))
    proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, env=env, cwd=root)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1) as answer:  # not an S3/IAM action
                if answer.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"moto_server did not answer within {timeout:.0f} s: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    try:
        import boto3

        iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="setup",
                           aws_secret_access_key="setup")
        iam.create_user(UserName="registry")
        key = iam.create_access_key(UserName="registry")["AccessKey"]
        iam.put_user_policy(UserName="registry", PolicyName="s3", PolicyDocument=json.dumps(_ALLOW_S3))
        iam.create_role(RoleName="registry-role", AssumeRolePolicyDocument=json.dumps(_TRUST_ANYONE))
        iam.put_role_policy(RoleName="registry-role", PolicyName="s3", PolicyDocument=json.dumps(_ALLOW_S3))
    except BaseException:
        proc.kill()
        raise
    return S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], proc, log)


@dataclass
class S3Registry:
    """A registry whose git repository is a local bare one and whose DVC remote is ``s3://bucket/prefix``
    on the test server (the same methods as conftest's ``Registry``, for the shared helpers)."""

    server: S3Server
    bare: Path
    bucket: str
    prefix: str
    work_dir: Path

    @property
    def repo_url(self) -> str:
        return str(self.bare)

    @property
    def remote_url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def access(self, **overrides):
        from dataset_registry.s3_remote import S3Access

        values = {"access_key_id": self.server.access_key_id, "secret_access_key": self.server.secret_access_key,
                  "endpoint_url": self.server.endpoint, "region": REGION, **overrides}
        return S3Access(**values)

    def settings(self, work_dir: Path | None = None, **overrides):
        from dataset_registry.registry import RegistrySettings

        values = {"repo_url": self.repo_url, "remote_url": self.remote_url, "work_dir": Path(work_dir or self.work_dir),
                  "s3": self.access(), **overrides}
        return RegistrySettings(**values)

    def conn_env(self, remote_conn_id: str | None = "aws_registry", **extra) -> dict[str, str]:
        """``AIRFLOW_CONN_*`` variables: the ``dvc_registry`` connection and, when named, its ``aws`` one."""
        registry = {"repo_url": self.repo_url, "remote_url": self.remote_url, **extra}
        env = {}
        if remote_conn_id:
            registry["remote_conn_id"] = remote_conn_id
            env[f"AIRFLOW_CONN_{remote_conn_id.upper()}"] = json.dumps({
                "conn_type": "aws", "login": self.server.access_key_id, "password": self.server.secret_access_key,
                "extra": {"endpoint_url": self.server.endpoint, "region_name": REGION}})
        env["AIRFLOW_CONN_DVC_REGISTRY"] = json.dumps({"conn_type": "dvc_registry", "extra": registry})
        return env

    def git(self, *args) -> str:
        return subprocess.run(["git", "-C", str(self.bare), *args], capture_output=True, text=True, check=True,
                              timeout=60).stdout.strip()

    def tags(self) -> list[str]:
        return [t for t in self.git("tag", "--list").splitlines() if t]

    def commit_count(self) -> int:
        out = subprocess.run(["git", "-C", str(self.bare), "rev-list", "--count", "main"], capture_output=True,
                             text=True, timeout=60)
        return int(out.stdout.strip()) if out.returncode == 0 else 0

    def objects(self) -> dict[str, bytes]:
        """The DVC objects in the bucket: md5 (from the key) -> bytes."""
        found = self.server.objects(self.bucket, f"{self.prefix}/files/md5/")
        return {key.split("/")[-2] + key.split("/")[-1]: data for key, data in found.items()}

    def object_key(self, md5: str) -> str:
        return f"{self.prefix}/files/md5/{md5[:2]}/{md5[2:]}"

    def intact_objects(self) -> int:
        """Every object in the bucket hashes to its own name; returns how many there are."""
        objects = self.objects()
        for name, data in objects.items():
            assert hashlib.md5(data).hexdigest() == name, f"corrupt object {name} in s3://{self.bucket}"
        return len(objects)

    def plain_pull(self, tag: str, dest: Path, relpath: str) -> bytes:
        """What a person with only git and dvc does: clone, checkout the tag, point DVC at the endpoint
        (git-ignored config), ``dvc pull`` with their own AWS credentials from the environment."""
        env = self.server.aws_env()
        env.pop("PYTHONPATH", None)  # plain DVC: none of our code
        dvc = str(Path(sys.executable).parent / "dvc")
        for argv, cwd in ((["git", "clone", "-q", self.repo_url, str(dest)], None),
                          (["git", "-c", "advice.detachedHead=false", "checkout", "-q", tag], dest),
                          ([dvc, "remote", "modify", "--local", "storage", "endpointurl", self.server.endpoint], dest),
                          ([dvc, "pull", "-q"], dest)):
            proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, f"{argv} failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        return (dest / relpath).read_bytes()


def make_s3_registry(root: Path, server: S3Server) -> S3Registry:
    """An empty bare repository and a fresh bucket (prefix ``registry``)."""
    bare = root / "registry.git"
    subprocess.run(["git", "init", "-q", "--bare", "--initial-branch=main", str(bare)], check=True, timeout=60)
    return S3Registry(server, bare, server.new_bucket(), "registry", root / "worker")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server on loopback for the whole session, signatures enforced; stopped at the end."""
    server = start_s3_server(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture
def s3_registry(tmp_path, s3_server) -> S3Registry:
    """An empty registry over a fresh bucket on the session's server."""
    return make_s3_registry(tmp_path, s3_server)
