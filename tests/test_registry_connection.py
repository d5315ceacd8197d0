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
    ({**BASE, "remote_conn_id": "aws_default"}, "dvc_registry", "remote_conn_id (S3 remotes"),
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
