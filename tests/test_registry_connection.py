"""The ``dvc_registry`` connection as DvcRegistryHook reads it: the form's keys, the legacy
``extra__dvc_registry__`` prefix, ``generic`` JSON connections, and every wrong input refused with
the connection id, the key and what to do. Real Airflow connections from ``AIRFLOW_CONN_*``."""
import json

import pytest

from dataset_registry.get_provider_info import REGISTRY_CONN_FIELDS, get_provider_info
from dataset_registry.hooks.registry_hook import DvcRegistryHook, RegistryConnectionError

BASE = {"repo_url": "ssh://git@127.0.0.1:2222/srv/registry.git", "remote_url": "ssh://dvc@127.0.0.1:2222/srv/store",
        "key_file": "/keys/id_ed25519", "known_hosts": "/keys/known_hosts"}


def settings_of(monkeypatch, extra, conn_type="dvc_registry", conn_id="reg", **fields):
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": conn_type, "extra": extra, **fields}))
    return DvcRegistryHook(conn_id).settings


def test_form_fields_become_settings(monkeypatch, tmp_path):
    s = settings_of(monkeypatch, {**BASE, "branch": "datasets", "no_host_key_check": True, "work_dir": str(tmp_path),
                                  "publish_timeout": 120}, login="git", password="pw")
    assert (s.repo_url, s.remote_url, s.branch, s.key_file, s.known_hosts) == (
        BASE["repo_url"], BASE["remote_url"], "datasets", "/keys/id_ed25519", "/keys/known_hosts")
    assert s.check_host_keys is False and s.publish_timeout == 120 and str(s.work_dir) == str(tmp_path)
    assert (s.ssh_user, s.ssh_password) == ("git", "pw")


def test_generic_json_connection_and_string_values_keep_working(monkeypatch):
    s = settings_of(monkeypatch, {**BASE, "no_host_key_check": "false", "publish_timeout": "60"}, conn_type="generic")
    assert s.check_host_keys is True and s.publish_timeout == 60 and s.branch == "main"


def test_legacy_prefixed_keys_and_empty_form_fields(monkeypatch):
    extra = {f"extra__dvc_registry__{k}": v for k, v in BASE.items()} | {"branch": "", "publish_timeout": None}
    s = settings_of(monkeypatch, extra)
    assert s.repo_url == BASE["repo_url"] and s.branch == "main" and s.publish_timeout == 900


def test_misspelled_key_is_refused_naming_it_and_the_fix(monkeypatch):
    with pytest.raises(RegistryConnectionError) as err:
        settings_of(monkeypatch, {**BASE, "no_host_key_checks": True})
    text = str(err.value)
    assert "connection 'reg'" in text and "'no_host_key_checks'" in text and "did you mean 'no_host_key_check'" in text


@pytest.mark.parametrize("extra, conn_type, expected", [
    ({**BASE, "no_host_key_check": "sometimes"}, "dvc_registry", "extra.no_host_key_check 'sometimes' is not true or false"),
    ({**BASE, "publish_timeout": "soon"}, "dvc_registry", "extra.publish_timeout 'soon' is not a number of seconds"),
    ({"remote_url": BASE["remote_url"]}, "dvc_registry", "extra.repo_url is required"),
    (BASE, "http", "type 'http' is not a registry connection"),
    ({**BASE, "branch": "../main"}, "dvc_registry", "branch"),
    ({**BASE, "key_file": "relative/key"}, "dvc_registry", "key_file"),
    ({**BASE, "key_file": {"path": "/k"}}, "dvc_registry", "extra.key_file must be text, got dict"),
    ({**BASE, "work_dir": 7}, "dvc_registry", "extra.work_dir must be text, got int"),
    ({**BASE, "publish_timeout": True}, "dvc_registry", "extra.publish_timeout True is not a number of seconds"),
    ({**BASE, "remote_conn_id": "aws_default"}, "dvc_registry", "remote_url 'ssh://dvc@127.0.0.1:2222/srv/store' is "
                                                                "not an s3:// URL"),
    ({**BASE, "remote_url": "s3://My_Bucket/x"}, "dvc_registry", "is not a valid bucket name"),
    ({**BASE, "extra__dvc_registry__branch": "a", "branch": "b"}, "dvc_registry", "extra.branch is given twice"),
    ({**BASE, "x" * 5000: 1}, "dvc_registry", "... (5002 characters)"),
])
def test_bad_values_are_refused_with_the_connection_id(monkeypatch, extra, conn_type, expected):
    with pytest.raises(RegistryConnectionError) as err:
        settings_of(monkeypatch, extra, conn_type=conn_type)
    text = str(err.value)
    assert text.startswith("connection 'reg': ") and text.count("connection 'reg'") == 1 and expected in text
    assert len(text) < 1000


def test_building_the_hook_and_client_does_no_io(monkeypatch, tmp_path):
    """Hooks are created lazily and their client touches nothing until used."""
    work = tmp_path / "not-yet"
    monkeypatch.setenv("AIRFLOW_CONN_REG", json.dumps({"conn_type": "dvc_registry", "extra": {**BASE, "work_dir": str(work)}}))
    hook = DvcRegistryHook("reg")
    assert hook.get_conn() is hook.get_conn()
    assert not work.exists()


def test_the_form_is_the_list_of_accepted_keys():
    """One definition: the provider info's form fields are exactly what the hook accepts."""
    (conn_type,) = get_provider_info()["connection-types"]
    assert conn_type["connection-type"] == DvcRegistryHook.conn_type == "dvc_registry"
    assert conn_type["conn-fields"] is REGISTRY_CONN_FIELDS
    assert conn_type["hook-class-name"] == f"{DvcRegistryHook.__module__}.{DvcRegistryHook.__qualname__}"
    assert all(field["label"] for field in REGISTRY_CONN_FIELDS.values())


def test_operators_take_injected_hooks_and_build_their_own_lazily():
    from dataset_registry.operators.version_dataset import VersionDatasetOperator

    injected = DvcRegistryHook("elsewhere")
    op = VersionDatasetOperator(task_id="t", project="p", output_file="o.csv", query="SELECT 1", registry_hook=injected)
    assert op.registry_hook is injected
    lazy = VersionDatasetOperator(task_id="u", project="p", output_file="o.csv", query="SELECT 1", registry_conn_id="mine")
    assert "registry_hook" not in vars(lazy) and "mysql_hook" not in vars(lazy)
    assert lazy.registry_hook.registry_conn_id == "mine"


# ------------------------------------------------------------------ S3 remotes: the aws connection
S3 = {"repo_url": "/srv/registry.git", "remote_url": "s3://datasets-bucket/registry", "remote_conn_id": "aws_reg"}
SECRET, TOKEN = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY", "FQoGZXIvYXdzEXAMPLE-session-token"


def aws_conn(monkeypatch, conn_id="aws_reg", conn_type="aws", **fields):
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": conn_type, **fields}))


def test_aws_connection_gives_the_s3_credentials_endpoint_and_region(monkeypatch):
    aws_conn(monkeypatch, login="AKIAEXAMPLE", password=SECRET,
             extra={"endpoint_url": "http://minio:9000", "region_name": "eu-west-1", "aws_session_token": TOKEN})
    s = settings_of(monkeypatch, S3)
    assert s.remote_url == "s3://datasets-bucket/registry"
    assert (s.s3.access_key_id, s.s3.secret_access_key, s.s3.session_token) == ("AKIAEXAMPLE", SECRET, TOKEN)
    assert (s.s3.endpoint_url, s.s3.region) == ("http://minio:9000", "eu-west-1")
    assert SECRET not in repr(s) and TOKEN not in repr(s)  # settings are logged and compared, never shown with secrets
    assert s.s3.dvc_remote_options() == {"endpointurl": "http://minio:9000", "region": "eu-west-1"}
    assert s.s3.child_variables()["DATASET_REGISTRY_S3_SECRET_ACCESS_KEY"] == SECRET


def test_aws_connection_keys_in_the_extra_and_no_keys_at_all(monkeypatch):
    """As the Amazon provider reads it: keys in login/password, else in the extra; no keys at all
    means the worker's own credentials, with the connection's endpoint and region."""
    aws_conn(monkeypatch, extra={"aws_access_key_id": "AKIAX", "aws_secret_access_key": SECRET,
                                 "service_config": {"s3": {"endpoint_url": "https://s3.internal:8443"}}})
    s = settings_of(monkeypatch, S3)
    assert (s.s3.access_key_id, s.s3.secret_access_key, s.s3.endpoint_url) == ("AKIAX", SECRET, "https://s3.internal:8443")
    aws_conn(monkeypatch, extra={"region_name": "us-east-2"})
    s = settings_of(monkeypatch, S3, conn_id="reg2")
    assert s.s3.access_key_id is None and s.s3.region == "us-east-2" and s.s3.secrets == []
    assert s.s3.child_variables() == {"DATASET_REGISTRY_S3": "1", "DATASET_REGISTRY_S3_REGION": "us-east-2"}


def test_s3_remote_without_remote_conn_id_uses_the_workers_credentials(monkeypatch):
    s = settings_of(monkeypatch, {"repo_url": "/srv/registry.git", "remote_url": "s3://datasets-bucket"})
    assert s.s3 is None and s.remote_url == "s3://datasets-bucket"


@pytest.mark.parametrize("remote, fields, expected", [
    ({"conn_type": "generic", "login": "AKIA", "password": SECRET}, {},
     "extra.remote_conn_id names connection 'aws_reg' of type 'generic': it must be an 'aws' connection"),
    (None, {}, "extra.remote_conn_id names connection 'aws_reg', which does not exist"),
    ({"conn_type": "aws", "login": "AKIA"}, {}, "the access key id (login) and the secret access key (password) go together"),
    ({"conn_type": "aws", "password": SECRET}, {}, "go together"),
    ({"conn_type": "aws", "extra": {"aws_session_token": TOKEN}}, {}, "a session token without an access key"),
    ({"conn_type": "aws", "login": "AKIA", "password": SECRET, "extra": {"role_arn": "arn:aws:iam::1:role/x"}}, {},
     "extra.role_arn is not supported"),
    ({"conn_type": "aws", "extra": {"profile_name": "prod"}}, {}, "extra.profile_name is not supported"),
    ({"conn_type": "aws", "login": "AKIA", "password": SECRET, "extra": {"endpoint_url": "ftp://minio:21"}}, {},
     "S3 endpoint_url 'ftp://minio:21' must be an http:// or https:// URL"),
    ({"conn_type": "aws", "login": "AKIA", "password": SECRET, "extra": {"endpoint_url": f"http://u:{SECRET}@minio"}},
     {}, "(not shown: it has a user part)"),
    ({"conn_type": "aws", "login": "AKIA", "password": SECRET, "extra": {"endpoint_url": "http://minio:9000/?x=1"}},
     {}, "query or fragment"),
    ({"conn_type": "aws", "login": "AKIA", "password": SECRET, "extra": {"region_name": "eu west"}}, {},
     "S3 region 'eu west' is not a region name"),
    ({"conn_type": "aws", "login": "AKIA", "password": SECRET, "extra": {"region_name": 7}}, {},
     "extra.region_name must be text, got int"),
    ({"conn_type": "aws", "login": "AKIA", "password": "two words"}, {}, "secret access key must be printable text"),
    ({"conn_type": "aws", "login": "AKIA", "password": SECRET}, {"remote_url": "/srv/dvc-store"},
     "remote_url '/srv/dvc-store' is not an s3:// URL: remove remote_conn_id"),
    ({"conn_type": "aws", "login": "AKIA", "password": SECRET}, {"remote_conn_id": "aws reg; rm -rf /"},
     "is not a connection id"),
])
def test_bad_s3_credentials_are_refused_naming_both_connections(monkeypatch, remote, fields, expected):
    if remote is not None:
        aws_conn(monkeypatch, **remote)
    else:
        monkeypatch.delenv("AIRFLOW_CONN_AWS_REG", raising=False)
    with pytest.raises(RegistryConnectionError) as err:
        settings_of(monkeypatch, {**S3, **fields})
    text = str(err.value)
    assert text.startswith("connection 'reg': ") and expected in text, text
    if "remote_conn_id" not in fields and "remote_url" not in fields:
        assert "'aws_reg'" in text  # both connections are named
    assert SECRET not in text and TOKEN not in text and len(text) < 1000


@pytest.mark.parametrize("url, expected", [
    ("s3://ab/x", "is not a valid bucket name"),
    ("s3://Datasets/x", "is not a valid bucket name"),
    ("s3://data..sets/x", "is not a valid bucket name"),
    ("s3://192.168.1.10/x", "is not a valid bucket name"),
    ("s3://-datasets/x", "is not a valid bucket name"),
    ("s3://datasets/../x", "the prefix must be"),
    ("s3://datasets/a/./b", "the prefix must be"),
    ("s3://datasets/a//b", "the prefix must be"),
    ("s3://datasets/--upload-pack=x", "the prefix must be"),
    ("s3://datasets/a b", "the prefix must be"),
    ("s3://datasets/x?versionId=1", "the prefix must be"),
    ("s3://datasets/x#frag", "the prefix must be"),
    ("s3://datasets/x\ty", "the prefix must be"),
    (f"s3://AKIA:{SECRET}@datasets/x", "no user, password or port in an s3:// URL"),
    ("s3://datasets:9000/x", "no user, password or port"),
    ("s3://", "is not a valid bucket name"),
])
def test_hostile_s3_urls_are_refused_with_the_rule(monkeypatch, url, expected):
    with pytest.raises(RegistryConnectionError) as err:
        settings_of(monkeypatch, {"repo_url": "/srv/registry.git", "remote_url": url})
    assert expected in str(err.value) and SECRET not in str(err.value)


def test_the_form_has_a_labelled_remote_conn_id_field():
    field = REGISTRY_CONN_FIELDS["remote_conn_id"]
    assert field["label"] == "S3 credentials connection" and "aws" in field["description"]
    assert "s3://" in REGISTRY_CONN_FIELDS["remote_url"]["description"]
