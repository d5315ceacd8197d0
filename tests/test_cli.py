"""The `dataset-registry` command line (catalog + version_diff) against real parts.

A bare git registry and a DVC remote served by the test sshd; versions published by RegistryClient
with their profiles in the tag messages; a SQLite model DB with experiments. The CLI runs as a
subprocess (`python -m dataset_registry`) configured by environment variables only, as a person
without Airflow runs it.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import REPO, make_registry
from test_integrity import client_for, md5, publish_with

BASE_CSV = b'id,item,price\n1,tea,3.50\n2,,0.00\n3,mug,9.99\n5,"a,b",1.00\n'
TARGET_CSV = b'id,item,price,qty\n1,tea,3.50,1\n2,"",0.00,2\n5,"a,b",1.25,1\n7,cup,2.00,\n10,pot,4.00,3\n'


def prof(type_, nulls=0, empty=0, min_=None, max_=None, distinct=0):
    return {"type": type_, "nulls": nulls, "empty": empty, "min": min_, "max": max_, "distinct": distinct}


BASE_PROFILE = {"id": prof("INT", min_="1", max_="5", distinct=4),
                "item": prof("VARCHAR", nulls=1, min_="a,b", max_="tea", distinct=3),
                "price": prof("DECIMAL", min_="0.00", max_="9.99", distinct=4)}
TARGET_PROFILE = {"id": prof("INT", min_="1", max_="10", distinct=5),
                  "item": prof("VARCHAR", empty=1, min_="", max_="tea", distinct=5),
                  "price": prof("DOUBLE", min_="0.00", max_="4.00", distinct=5),
                  "qty": prof("INT", nulls=1, min_="1", max_="3", distinct=3)}


def publish_version(client, project, version, content: bytes, output="orders.csv", **meta):
    staged = client.staging_file(project, output)
    staged.write_bytes(content)
    return client.publish(project, output, version, staged, md5(content), content.count(b"\n") - 1, **meta)


def cli(env: dict, *args, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dataset_registry", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)
    if check_rc is not None:
        assert proc.returncode == check_rc, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def clean_env(**extra) -> dict:
    """The environment of a person without Airflow: no AIRFLOW_* / DATASET_* settings of this shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DATASET_", "MODEL_DB"))}
    env["PYTHONPATH"] = str(REPO / "plugins")
    env["HOME"] = extra.pop("HOME", env.get("HOME", "/tmp"))
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def published_registry(tmp_path_factory, sshd):
    """shop/v1, shop/v2 (one column added, one retyped, keys added/removed/changed) and other/2024-01,
    and a model DB with experiments on shop/v1 and shop/v2; published once for the module's tests,
    which only read."""
    tmp_path = tmp_path_factory.mktemp("published")
    registry = make_registry(tmp_path, sshd)
    client = client_for(registry, tmp_path / "publisher")
    publish_version(client, "shop", "v1", BASE_CSV, columns=["id", "item", "price"], profile=BASE_PROFILE,
                    window_start="2024-05-01T00:00:00+00:00", window_end="2024-05-02T00:00:00+00:00")
    publish_version(client, "shop", "v2", TARGET_CSV, columns=["id", "item", "price", "qty"], profile=TARGET_PROFILE,
                    window_start="2024-05-02T00:00:00+00:00", window_end="2024-05-03T00:00:00+00:00")
    publish_with(client, "other", "2024-01", b"x\n1\n")  # no profile: an older-style tag, output train.csv

    from dataset_registry.model_db import ModelDB

    db_path = tmp_path / "model_db.sqlite"
    db = ModelDB(f"sqlite:///{db_path}")
    model_id = db.get_or_create_model(db.get_or_create_project("shop"), "baseline")
    first = db.upsert_experiment(model_id=model_id, model_version_id="1", training_dataset="shop/v1",
                                 dataset_md5=md5(BASE_CSV), parameters={"kind": "mean"})
    db.update_experiment(first, evaluations={"mae": 1.25}, status="succeeded")
    db.upsert_experiment(model_id=model_id, model_version_id="2", training_dataset="shop/v2", dataset_md5=md5(TARGET_CSV))
    return registry, db_path


@pytest.fixture
def published(tmp_path, published_registry):
    """The environment of a CLI user of the published registry, with a fresh work folder (empty DVC cache)."""
    registry, db_path = published_registry
    return clean_env(
        AIRFLOW_CONN_DVC_REGISTRY=registry.conn_json(work_dir=str(tmp_path / "cli-work")),
        AIRFLOW_CONN_MODEL_DB=json.dumps({"conn_type": "sqlite", "host": str(db_path)}),
    )


def test_projects_versions_and_show(published):
    env = published
    assert json.loads(cli(env, "projects", "--json").stdout) == [
        {"project": "other", "versions": 1, "latest": "2024-01"},
        {"project": "shop", "versions": 2, "latest": "v2"},
    ]
    table = cli(env, "projects").stdout.splitlines()
    assert table[0].split() == ["PROJECT", "VERSIONS", "LATEST"] and table[2].split() == ["shop", "2", "v2"]

    versions = json.loads(cli(env, "versions", "shop", "--json").stdout)
    assert [v["version"] for v in versions] == ["v2", "v1"]
    assert list(versions[0]) == ["version", "tag", "md5", "rows", "bytes", "commit", "created", "window_start",
                                 "window_end"]
    assert versions[1] | {"commit": None, "created": None} == {
        "version": "v1", "tag": "shop/v1", "md5": md5(BASE_CSV), "rows": 4, "bytes": len(BASE_CSV), "commit": None,
        "created": None, "window_start": "2024-05-01T00:00:00+00:00", "window_end": "2024-05-02T00:00:00+00:00"}
    assert len(versions[0]["commit"]) == 40 and versions[0]["created"].startswith("20")
    assert "[2024-05-02T00:00:00+00:00, 2024-05-03T00:00:00+00:00)" in cli(env, "versions", "shop").stdout

    shown = json.loads(cli(env, "show", "shop", "v1", "--json").stdout)
    assert shown["output"] == "orders.csv" and shown["columns"] == ["id", "item", "price"]
    assert shown["profile"] == BASE_PROFILE
    assert [(e["model_name"], e["model_version_id"], e["status"], e["evaluations"]) for e in shown["experiments"]] == [
        ("baseline", "1", "succeeded", {"mae": 1.25})]
    text = cli(env, "show", "shop", "v1").stdout
    assert "window:  [2024-05-01T00:00:00+00:00, 2024-05-02T00:00:00+00:00)" in text
    assert [line.split()[:4] for line in text.splitlines() if line.startswith("item ")] == [["item", "VARCHAR", "1", "0"]]
    assert "baseline" in text and '{"mae":1.25}' in text

    other = json.loads(cli(env, "show", "other", "2024-01", "--json").stdout)  # no profile in the tag
    assert (other["output"], other["columns"], other["profile"], other["experiments"]) == ("train.csv", [], {}, [])
    assert "Profile: none recorded" in cli(env, "show", "other", "2024-01").stdout

    experiments = json.loads(cli(env, "experiments", "--training-dataset", "shop/v2", "--json").stdout)
    assert [(e["project_name"], e["model_version_id"]) for e in experiments] == [("shop", "2")]
    assert len(json.loads(cli(env, "experiments", "--project", "shop", "--model", "baseline", "--json").stdout)) == 2
    assert json.loads(cli(env, "experiments", "--model-version-id", "7", "--json").stdout) == []


def test_diff_counts_are_exact(tmp_path, published):
    env = published
    result = json.loads(cli(env, "diff", "shop", "v1", "v2", "--key", "id", "--json").stdout)
    assert result == {
        "schema": {"added": ["qty"], "removed": [], "changed": {"price": {"base": "DECIMAL", "target": "DOUBLE"}}},
        "rows": {"base": 4, "target": 5},
        "columns": {
            "id": {"max": {"base": "5", "target": "10"}, "distinct": {"base": 4, "target": 5}},
            "item": {"nulls": {"base": 1, "target": 0}, "empty": {"base": 0, "target": 1},
                     "min": {"base": "a,b", "target": ""}, "distinct": {"base": 3, "target": 5}},
            "price": {"max": {"base": "9.99", "target": "4.00"}, "distinct": {"base": 4, "target": 5}},
        },
        # 3 removed; 7 and 10 added; 2 (NULL -> "") and 5 (price) changed; 1 unchanged
        "keys": {"added": 2, "removed": 1, "changed": 2},
    }
    text = cli(env, "diff", "shop", "v1", "v2", "--key", "id").stdout
    assert "rows:            4 -> 5 (+1)" in text and "columns added:   qty" in text
    assert "columns retyped: price DECIMAL -> DOUBLE" in text and "columns removed: -" in text
    assert "rows by key:     2 added, 1 removed, 2 changed (key: id)" in text
    assert [line.split() for line in text.splitlines() if line.startswith("item ")] == [
        ["item", "nulls", "1", "0"], ["item", "empty", "0", "1"], ["item", "min", "a,b", '""'],
        ["item", "distinct", "3", "5"]]
    no_key = json.loads(cli(env, "diff", "shop", "v1", "v2", "--json").stdout)
    assert "keys" not in no_key and no_key["schema"] == result["schema"]
    # the project's own key: from its YAML when DATASET_PROJECTS_DIR has it; --no-key turns it off
    projects = tmp_path / "projects"
    projects.mkdir()
    (projects / "shop.yaml").write_text("project: shop\nschedule: null\noutput: orders.csv\nkey: [id]\n"
                                        "query: SELECT id, item, price FROM shop.orders ORDER BY id\n")
    with_yaml = {**env, "DATASET_PROJECTS_DIR": str(projects)}
    proc = cli(with_yaml, "diff", "shop", "v1", "v2", "--json")
    assert json.loads(proc.stdout) == result and f"key (id) from {projects / 'shop.yaml'}" in proc.stderr
    assert "keys" not in json.loads(cli(with_yaml, "diff", "shop", "v1", "v2", "--no-key", "--json").stdout)
    # the scratch copies of the two files are gone
    work = Path(json.loads(env["AIRFLOW_CONN_DVC_REGISTRY"])["extra"]["work_dir"])
    assert not any((work / "diff").iterdir())


def test_pull_through_the_local_cache(tmp_path, published):
    env = published
    first = json.loads(cli(env, "pull", "shop", "v1", "--to", tmp_path / "v1.csv", "--json").stdout)
    assert (tmp_path / "v1.csv").read_bytes() == BASE_CSV
    assert first["downloaded"] is True and first["md5"] == hashlib.md5(BASE_CSV).hexdigest()
    again = json.loads(cli(env, "pull", "shop", "v1", "--to", tmp_path / "again.csv", "--json").stdout)
    assert again["downloaded"] is False and (tmp_path / "again.csv").read_bytes() == BASE_CSV
    folder = tmp_path / "into"
    folder.mkdir()
    text = cli(env, "pull", "shop", "--to", folder).stdout  # newest, into a folder: keeps its name
    assert (folder / "orders.csv").read_bytes() == TARGET_CSV
    assert f"shop/v2: {folder / 'orders.csv'} ({len(TARGET_CSV)} bytes, md5 {md5(TARGET_CSV)} verified" in text
    refused = cli(env, "pull", "shop", "v1", "--to", folder / "orders.csv", check_rc=2)
    assert "already exists" in refused.stderr and "--force" in refused.stderr
    assert (folder / "orders.csv").read_bytes() == TARGET_CSV
    cli(env, "pull", "shop", "v1", "--to", folder / "orders.csv", "--force")
    assert (folder / "orders.csv").read_bytes() == BASE_CSV


def test_flags_instead_of_environment_without_airflow_and_the_console_script_entry(tmp_path, registry, sshd):
    publish_with(client_for(registry, tmp_path / "publisher"), "sales", "v1", b"id\n1\n")
    no_airflow = tmp_path / "no-airflow" / "airflow"
    no_airflow.mkdir(parents=True)
    (no_airflow / "__init__.py").write_text("raise ImportError('Airflow is not installed here')\n")
    env = clean_env()
    env["PYTHONPATH"] = f"{no_airflow.parent}{os.pathsep}{env['PYTHONPATH']}"  # importing airflow fails
    flags = ["--repo-url", registry.repo_url, "--remote-url", registry.remote_url, "--key-file", sshd.key_file,
             "--known-hosts", sshd.known_hosts, "--work-dir", tmp_path / "w"]
    assert json.loads(cli(env, "versions", "sales", "--json", *flags).stdout)[0]["tag"] == "sales/v1"
    assert cli(env, *flags, "projects").stdout.splitlines()[1].split() == ["sales", "1", "v1"]  # before the command too
    cli(env, *flags, "pull", "sales", "v1", "--to", tmp_path / "v1.csv")
    assert (tmp_path / "v1.csv").read_bytes() == b"id\n1\n"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["dataset-registry"] == "dataset_registry.cli:main"


def test_files_not_sorted_by_the_key_are_refused(tmp_path, registry):
    client = client_for(registry, tmp_path / "publisher")
    publish_version(client, "shop", "v1", b"id,name\n1,b\n2,a\n", profile={"id": prof("INT"), "name": prof("VARCHAR")},
                    columns=["id", "name"])
    publish_version(client, "shop", "v2", b"id,name\n2,a\n1,b\n3,c\n", profile={"id": prof("INT"), "name": prof("VARCHAR")},
                    columns=["id", "name"])
    env = clean_env(AIRFLOW_CONN_DVC_REGISTRY=registry.conn_json(work_dir=str(tmp_path / "w")))
    proc = cli(env, "diff", "shop", "v1", "v2", "--key", "id", check_rc=1)
    assert "shop/v2 (orders.csv) is not sorted by the key (id): data row 2 (id='1') comes after id='2'" in proc.stderr
    assert "`ORDER BY id`" in proc.stderr and proc.stdout == ""
    proc = cli(env, "diff", "shop", "v1", "v2", "--key", "name", check_rc=1)
    assert "shop/v1 (orders.csv) is not sorted by the key (name)" in proc.stderr
    assert "`ORDER BY name COLLATE utf8mb4_bin`" in proc.stderr
    proc = cli(env, "diff", "shop", "v1", "v2", "--key", "sku", check_rc=2)
    assert "key column(s) sku not in the file's columns (id, name)" in proc.stderr


def test_bad_inputs_say_what_and_exit_2_or_1(tmp_path, registry, sshd):
    publish_with(client_for(registry, tmp_path / "publisher"), "sales", "v1", b"id\n1\n")
    good = registry.conn_json(work_dir=str(tmp_path / "w"))

    proc = cli(clean_env(HOME=str(tmp_path)), "projects", check_rc=2)
    assert "AIRFLOW_CONN_DVC_REGISTRY is not set" in proc.stderr and "--repo-url" in proc.stderr

    secret = "s3cr3t-pa55"
    proc = cli(clean_env(AIRFLOW_CONN_DVC_REGISTRY='{"conn_type": "generic", "password": "' + secret + '", extra'),
               "projects", check_rc=2)
    assert "AIRFLOW_CONN_DVC_REGISTRY is not valid JSON" in proc.stderr and secret not in proc.stderr

    proc = cli(clean_env(AIRFLOW_CONN_DVC_REGISTRY=registry.conn_json(work_dir=str(tmp_path / "w"), known_host="/x")),
               "projects", check_rc=2)
    assert "unknown extra key 'known_host': did you mean 'known_hosts'?" in proc.stderr

    env = clean_env(AIRFLOW_CONN_DVC_REGISTRY=good)

    proc = cli(env, "show", "sales", "v1;rm", check_rc=2)
    assert "invalid version 'v1;rm': it must match" in proc.stderr
    proc = cli(env, "versions", "Sales", check_rc=2)
    assert "invalid project name 'Sales'" in proc.stderr
    proc = cli(env, "versions", "nosuch", check_rc=1)
    assert "project 'nosuch' has no versions in the registry; projects with versions: sales" in proc.stderr
    proc = cli(env, "show", "sales", "v9", check_rc=1)
    assert "version 'v9' of project sales does not exist (no tag sales/v9); newest versions: v1" in proc.stderr
    proc = cli(env, "diff", "sales", "v1", "v1", "--key", "id,", check_rc=2)
    assert "--key 'id,'" in proc.stderr
    proc = cli(env, "pull", "sales", "--to", tmp_path / "no" / "such" / "x.csv", check_rc=2)
    assert "does not exist" in proc.stderr
    proc = cli(env, "experiments", check_rc=2)
    assert "no model DB configured" in proc.stderr
    proc = cli(env, "--model-db-url", "mysql://u:p@h/db", "experiments", check_rc=2)
    assert "scheme 'mysql' is not supported" in proc.stderr
    proc = cli(env, "frobnicate", check_rc=2)
    assert "invalid choice" in proc.stderr
    for command in ("projects", "versions", "show", "diff", "pull", "experiments"):
        assert "AIRFLOW_CONN_<ID>" in cli(env, command, "--help").stdout

    # an unreachable registry: exit 1, the password never shown
    down = dict(json.loads(good), login="git", password=secret)
    down["extra"] = {**down["extra"], "repo_url": down["extra"]["repo_url"].replace(str(sshd.port), "1"),
                     "work_dir": str(tmp_path / "w2")}
    proc = cli(clean_env(AIRFLOW_CONN_DVC_REGISTRY=json.dumps(down)), "projects", check_rc=1)
    assert "cannot read the registry" in proc.stderr and secret not in proc.stderr + proc.stdout

    # a model DB that refuses the login: exit 1, the password never shown
    proc = cli(env, "--model-db-url", f"postgres://nobody:{secret}@127.0.0.1:1/x", "experiments", check_rc=1)
    assert "cannot read experiments from the model DB" in proc.stderr and secret not in proc.stderr


def test_model_db_from_a_postgres_connection(tmp_path, registry, pg_database):
    """AIRFLOW_CONN_MODEL_DB as Airflow writes it for postgres: a URI, or the JSON form."""
    from dataset_registry.model_db import ModelDB
    from sqlalchemy.engine import make_url

    publish_with(client_for(registry, tmp_path / "publisher"), "sales", "v1", b"id\n1\n")
    db = ModelDB(pg_database)
    model_id = db.get_or_create_model(db.get_or_create_project("sales"), "m")
    db.upsert_experiment(model_id=model_id, model_version_id="3", training_dataset="sales/v1")
    url = make_url(pg_database)
    as_json = json.dumps({"conn_type": "postgres", "host": url.host, "port": url.port, "login": url.username,
                          "password": url.password, "schema": url.database})
    as_uri = f"postgres://{url.username}:{url.password}@{url.host}:{url.port}/{url.database}"
    for conn in (as_json, as_uri):
        env = clean_env(AIRFLOW_CONN_DVC_REGISTRY=registry.conn_json(work_dir=str(tmp_path / "w")),
                        AIRFLOW_CONN_MODEL_DB=conn)
        shown = json.loads(cli(env, "show", "sales", "v1", "--json").stdout)
        assert [(e["model_name"], e["model_version_id"]) for e in shown["experiments"]] == [("m", "3")]
        rows = json.loads(cli(env, "experiments", "--project", "sales", "--model-version-id", "3", "--json").stdout)
        assert [e["training_dataset"] for e in rows] == ["sales/v1"]


def test_tags_made_by_hand(tmp_path, registry, sshd):
    """A version tagged by hand (no md5/rows in its message) is read from its .dvc file; a tag that is
    not <project>/<version> is not a version."""
    from conftest import run

    publish_with(client_for(registry, tmp_path / "publisher"), "sales", "v1", b"id\n1\n")
    by_hand = tmp_path / "by-hand"
    git_env = {**os.environ, "GIT_SSH_COMMAND": f"ssh -i {sshd.key_file} -o UserKnownHostsFile={sshd.known_hosts}"}
    run(["git", "clone", "-q", registry.repo_url, by_hand], env=git_env)
    content = b"id\n1\n2\n"
    (by_hand / "sales" / "train.csv.dvc").write_text(
        f"outs:\n- md5: {md5(content)}\n  size: {len(content)}\n  hash: md5\n  path: train.csv\n")
    who = ["-c", "user.name=x", "-c", "user.email=x@x"]
    run(["git", *who, "commit", "-qam", "by hand"], cwd=by_hand, env=git_env)
    run(["git", *who, "tag", "-a", "-m", "made by hand", "sales/v2"], cwd=by_hand, env=git_env)
    run(["git", *who, "tag", "release-1"], cwd=by_hand, env=git_env)
    run(["git", "push", "-q", "origin", "main", "sales/v2", "release-1"], cwd=by_hand, env=git_env)
    env = clean_env(AIRFLOW_CONN_DVC_REGISTRY=registry.conn_json(work_dir=str(tmp_path / "w")))
    assert json.loads(cli(env, "projects", "--json").stdout) == [{"project": "sales", "versions": 2, "latest": "v2"}]
    listed = json.loads(cli(env, "versions", "sales", "--json").stdout)
    assert [(v["version"], v["md5"], v["bytes"], v["rows"], v["created"]) for v in listed] == [
        ("v2", md5(content), len(content), None, None), ("v1", md5(b"id\n1\n"), 5, 1, listed[1]["created"])]
    assert listed[1]["created"]
