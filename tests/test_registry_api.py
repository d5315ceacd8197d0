"""The registry page's JSON API on a real api-server (the plugin's FastAPI app under /dataset-registry).

One module-scoped stack: a bare registry over the test sshd with versions published by the real
publish protocol (profiles and windows in the tag messages), a SQLite model DB with experiments, a
projects folder declaring `key`, and `airflow api-server` with SimpleAuthManager and a named admin
(not all-admins: that mode authenticates every request, so 401 could not be shown), and a
dag-processor parsing the repository's DAG folder (for the "Dataset versions" tab on DAG pages). The registry
connection lives in the metadata DB (`airflow connections add`), the model DB one in an
AIRFLOW_CONN_ variable: the api-server reads both through the package's hooks.
"""
from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from airflow_stack import AIRFLOW, Api, Processes, airflow_env, migrate
from conftest import REPO, free_port, make_registry
from test_integrity import client_for, md5

pytestmark = pytest.mark.slow

PREFIX = "/dataset-registry"
ROUTES = ["/", "/static/registry.js", "/static/registry.css", "/static/icon.svg", "/api/projects",
          "/api/projects/shop/versions", "/api/projects/shop/versions/v1",
          "/api/projects/shop/diff?base=v1&target=v3", "/api/experiments", "/api/experiments?project=shop",
          "/api/projects/nope/versions"]

# shop: three versions (sorted by the key `id`, as the query's ORDER BY would give them).
SHOP = {
    "v1": b"id,name,price\n1,tea,3.50\n2,mug,12.00\n3,,1.00\n",
    # row 3 removed, row 2 changed, rows 4 and 5 added
    "v2": b"id,name,price\n1,tea,3.50\n2,mug,13.00\n4,pot,20.00\n5,cup,2.00\n",
    # a column added (qty), row 1 changed through it only
    "v3": b"id,name,price,qty\n1,tea,3.50,1\n2,mug,13.00,\n4,pot,20.00,2\n5,cup,2.00,1\n6,jar,4.00,3\n",
}
WINDOWS = {"v1": ("2024-05-01T00:00:00+00:00", "2024-05-02T00:00:00+00:00"),
           "v2": ("2024-05-02T00:00:00+00:00", "2024-05-03T00:00:00+00:00"),
           "v3": ("2024-05-03T00:00:00+00:00", "2024-05-04T00:00:00+00:00")}
TYPES = {"id": "INT", "name": "VARCHAR", "price": "DECIMAL", "qty": "INT", "url": "VARCHAR"}


def profile_of(content: bytes) -> tuple[list[str], dict]:
    """A profile as the export computes it (nulls, empties, min/max as printed, distinct), by hand."""
    lines = content.decode().splitlines()
    columns = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:]]
    profile = {}
    for i, column in enumerate(columns):
        values = [r[i] for r in rows if r[i] != ""]
        numeric = TYPES[column] in ("INT", "DECIMAL")
        ordered = sorted(values, key=float if numeric else str)
        profile[column] = {"type": TYPES[column], "nulls": len(rows) - len(values), "empty": 0,
                           "min": ordered[0] if ordered else None, "max": ordered[-1] if ordered else None,
                           "distinct": len(set(values))}
    return columns, profile


def publish(client, project: str, version: str, content: bytes, window: tuple[str, str] | None = None):
    columns, profile = profile_of(content)
    staged = client.staging_file(project, "train.csv")
    staged.write_bytes(content)
    return client.publish(project, "train.csv", version, staged, md5(content), content.count(b"\n") - 1,
                          window_start=window[0] if window else None, window_end=window[1] if window else None,
                          columns=columns, profile=profile)


def seed_model_db(path: Path) -> None:
    from dataset_registry.model_db import ModelDB

    db = ModelDB(f"sqlite:///{path}")
    project = db.get_or_create_project("shop")
    model = db.get_or_create_model(project, "shop_model")
    first = db.upsert_experiment(model_id=model, model_version_id="run-1", training_dataset="shop/v1",
                                 parameters={"kind": "mean"}, airflow_dag_id="train_shop", airflow_run_id="r1")
    db.update_experiment(first, evaluations={"rmse": 0.25, "rows": 3}, status="succeeded")
    second = db.upsert_experiment(model_id=model, model_version_id="run-2", training_dataset="shop/v3",
                                  parameters={"kind": "median"}, airflow_dag_id="train_shop", airflow_run_id="r2")
    db.update_experiment(second, evaluations={"rmse": 0.125, "rows": 5}, status="succeeded")
    other = db.get_or_create_model(project, "shop_other")
    db.upsert_experiment(model_id=other, model_version_id="run-9", training_dataset="shop/v3",
                         airflow_dag_id="train_other", airflow_run_id="r9", status="failed")


class Client:
    """HTTP against the api-server: status and decoded body, with or without a bearer token."""

    def __init__(self, base: str, token: str | None = None):
        self.base, self.token = base, token

    def get(self, path: str, token: str | None = None, accept: str = "application/json", cookie: str | None = None):
        req = urllib.request.Request(self.base + path, headers={"Accept": accept})
        token = token if token is not None else self.token
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if cookie:
            req.add_header("Cookie", cookie)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, _decoded(resp.read(), resp.headers.get("Content-Type", "")), resp.headers
        except urllib.error.HTTPError as exc:
            return exc.code, _decoded(exc.read(), exc.headers.get("Content-Type", "")), exc.headers


def _decoded(body: bytes, content_type: str):
    return json.loads(body) if "json" in content_type and body else body.decode(errors="replace")


@pytest.fixture(scope="module")
def registry_ui(tmp_path_factory, sshd):
    """The stack; yields (base URL, admin token, admin password, env, processes, registry)."""
    root = tmp_path_factory.mktemp("registry-ui")
    registry = make_registry(root, sshd)
    client = client_for(registry, work_dir=root / "publisher")
    for version, content in SHOP.items():
        publish(client, "shop", version, content, WINDOWS[version])
    publish(client, "web", "2024-06-01", b"id,url\n1,/a\n2,/b\n")  # no window: a manual version

    projects = root / "projects"
    projects.mkdir()
    (projects / "shop.yaml").write_text("project: shop\nschedule: null\noutput: train.csv\nkey: [id]\n"
                                        "query: SELECT id, name, price FROM shop.items ORDER BY id\n")
    (projects / "web.yaml").write_text("project: web\nschedule: null\noutput: train.csv\n"
                                       "query: SELECT id, url FROM web.pages ORDER BY id\n")
    model_db = root / "model_db.sqlite"
    seed_model_db(model_db)

    port = free_port()
    password = uuid.uuid4().hex
    passwords = root / "simple_auth_passwords.json"
    passwords.write_text(json.dumps({"admin": password, "viewer": password}))
    env = airflow_env(
        {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")},
        root / "airflow-home", f"sqlite:///{root / 'airflow.db'}", port, "LocalExecutor",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="False",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin,viewer:viewer",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords),
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),  # version_shop and version_web, for the DAG tab
        AIRFLOW__CORE__PLUGINS_FOLDER=str(REPO / "plugins"),
        DATASET_PROJECTS_DIR=str(projects),
        DATASET_WORK_DIR=str(root / "api-worker"),
        AIRFLOW_CONN_MODEL_DB=json.dumps({"conn_type": "sqlite", "host": str(model_db)}),
    )
    migrate(env)
    # The registry connection in the metadata DB (the api-server must read it from there).
    added = subprocess.run([AIRFLOW, "connections", "add", "dvc_registry", "--conn-json",
                            json.dumps({"conn_type": "dvc_registry", "extra": registry.conn_extra})],
                           env=env, capture_output=True, text=True, timeout=120)
    assert added.returncode == 0, added.stdout[-2000:] + added.stderr[-2000:]
    with Processes(root / "logs") as procs:
        procs.start_airflow(env, components=("api-server", "dag-processor"))
        api = Api(port)
        api.wait("the api-server", lambda: (procs.assert_running(), api.call("GET", "/api/v2/monitor/health"))[1], 180)
        token = api.call("POST", "/auth/token", {"username": "admin", "password": password})["access_token"]
        yield {"base": api.base, "token": token, "password": password, "env": env, "procs": procs,
               "registry": registry}


@pytest.fixture(scope="module")
def http(registry_ui) -> Client:
    return Client(registry_ui["base"] + PREFIX, registry_ui["token"])


# ------------------------------------------------------------------ access
@pytest.mark.parametrize("route", ROUTES)
def test_every_route_refuses_requests_without_a_valid_airflow_token(http, route):
    assert http.get(route, token="")[0] == 401, route
    assert http.get(route, token="not-a-token")[0] in (401, 403), route
    assert http.get(route, token="", cookie="_token=not-a-token")[0] in (401, 403), route


def test_the_page_without_a_session_links_to_airflows_login(http):
    status, body, _ = http.get("/", token="", accept="text/html")
    assert status == 401
    assert "/auth/login" in body and "Log in to Airflow" in body, body


def test_no_unprotected_openapi_or_docs(http):
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert http.get(path)[0] == 404, path


def test_a_viewer_may_read(registry_ui, http):
    api = Api(int(registry_ui["base"].rsplit(":", 1)[1]))
    token = api.call("POST", "/auth/token", {"username": "viewer", "password": registry_ui["password"]})["access_token"]
    status, body, _ = http.get("/api/projects", token=token)
    assert status == 200 and [p["project"] for p in body] == ["shop", "web"]


def test_the_plugin_is_listed_with_its_app_and_ui_entries(registry_ui, http):
    status, body, _ = Client(registry_ui["base"], registry_ui["token"]).get("/api/v2/plugins")
    assert status == 200, body
    plugin = next(p for p in body["plugins"] if p["name"] == "dataset_registry")
    assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == [PREFIX]
    views = {v["destination"]: v for v in plugin["external_views"]}
    assert views["nav"]["href"] == f"{PREFIX}/" and views["nav"]["url_route"]
    assert views["dag"]["href"] == f"{PREFIX}/?dag={{DAG_ID}}"


# ------------------------------------------------------------------ JSON
def test_projects(http):
    status, body, _ = http.get("/api/projects")
    assert status == 200, body
    assert body == [{"project": "shop", "versions": 3, "latest": "v3"},
                    {"project": "web", "versions": 1, "latest": "2024-06-01"}]


def test_versions_newest_first_with_the_contract_fields(http, registry_ui):
    status, body, _ = http.get("/api/projects/shop/versions")
    assert status == 200, body
    assert [v["version"] for v in body] == ["v3", "v2", "v1"]
    fields = {"version", "tag", "md5", "rows", "bytes", "commit", "created", "window_start", "window_end"}
    for record in body:
        assert fields <= set(record), record
        content = SHOP[record["version"]]
        assert record["tag"] == f"shop/{record['version']}"
        assert record["md5"] == md5(content)
        assert record["rows"] == content.count(b"\n") - 1
        assert record["bytes"] == len(content)
        assert record["commit"] == registry_ui["registry"].git("rev-parse", f"{record['tag']}^{{commit}}")
        assert record["created"]
        start, end = WINDOWS[record["version"]]
        assert (record["window_start"][:19], record["window_end"][:19]) == (start[:19], end[:19])
    status, web, _ = http.get("/api/projects/web/versions")
    assert status == 200 and web[0]["window_start"] is None and web[0]["rows"] == 2


def test_one_version_with_profile_experiments_and_pull_commands(http, registry_ui):
    status, body, _ = http.get("/api/projects/shop/versions/v1")
    assert status == 200, body
    assert body["tag"] == "shop/v1" and body["md5"] == md5(SHOP["v1"])
    assert body["columns"] == ["id", "name", "price"]
    assert body["profile"]["name"] == {"type": "VARCHAR", "nulls": 1, "empty": 0, "min": "mug", "max": "tea",
                                       "distinct": 2}
    assert body["profile"]["price"]["min"] == "1.00" and body["profile"]["price"]["max"] == "12.00"
    assert [(e["model_name"], e["model_version_id"], e["evaluations"]) for e in body["experiments"]] == [
        ("shop_model", "run-1", {"rmse": 0.25, "rows": 3})]
    pull = body["pull"]
    repo_url = registry_ui["registry"].repo_url
    assert pull["tag"] == "shop/v1" and pull["path"] == "shop/train.csv"
    assert pull["clone"][0] == f"git clone {repo_url} registry && cd registry"
    assert "git checkout shop/v1" in pull["clone"] and pull["clone"][-1] == "dvc pull"
    assert pull["get"].startswith(f"dvc get {repo_url} shop/train.csv --rev shop/v1 --remote-config keyfile=")
    assert str(registry_ui["registry"].conn_extra["key_file"]) not in json.dumps(body), "a server key path is shown"


def test_the_pull_commands_work_as_printed(http, registry_ui, tmp_path, sshd):
    """`dvc get` exactly as the page prints it, with the placeholder replaced by a key."""
    _, body, _ = http.get("/api/projects/shop/versions/v2")
    command = body["pull"]["get"].replace("<your SSH private key>", str(sshd.key_file))
    env = {**os.environ, "GIT_SSH_COMMAND": f"ssh -i {sshd.key_file} -o UserKnownHostsFile={sshd.known_hosts} "
                                            "-o IdentitiesOnly=yes"}
    env.pop("PYTHONPATH", None)
    dvc = str(Path(AIRFLOW).parent / "dvc")
    argv = [dvc if word == "dvc" else word for word in command.split()]
    done = subprocess.run(argv, cwd=tmp_path, env={**env, "HOME": str(tmp_path)}, capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0 and "known_hosts" in (done.stderr + done.stdout).lower():
        pytest.skip("dvc's SSH client does not read the test sshd's known_hosts here")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (tmp_path / argv[argv.index("-o") + 1]).read_bytes() == SHOP["v2"]


def test_diff_with_key_counts(http):
    status, body, _ = http.get("/api/projects/shop/diff?base=v1&target=v2")
    assert status == 200, body
    assert body["schema"] == {"added": [], "removed": [], "changed": {}}
    assert body["rows"] == {"base": 3, "target": 4}
    assert body["keys"] == {"added": 2, "removed": 1, "changed": 1}
    assert body["columns"]["name"]["nulls"] == {"base": 1, "target": 0}

    status, body, _ = http.get("/api/projects/shop/diff?base=v2&target=v3")
    assert status == 200, body
    assert body["schema"]["added"] == ["qty"] and body["schema"]["removed"] == []
    assert body["keys"] == {"added": 1, "removed": 0, "changed": 0}


def test_diff_without_a_declared_key_has_no_key_counts(http):
    status, body, _ = http.get("/api/projects/web/diff?base=2024-06-01&target=2024-06-01")
    assert status == 200, body
    assert "keys" not in body and body["rows"] == {"base": 2, "target": 2}


def test_experiments_filters(http):
    def ids(query):
        status, body, _ = http.get("/api/experiments" + query)
        assert status == 200, body
        return [e["model_version_id"] for e in body]

    assert ids("") == ["run-9", "run-2", "run-1"]
    assert ids("?project=shop") == ["run-9", "run-2", "run-1"]
    assert ids("?model=shop_model") == ["run-2", "run-1"]
    assert ids("?model_version_id=run-2") == ["run-2"]
    assert ids("?training_dataset=" + urllib.parse.quote("shop/v3", safe="")) == ["run-9", "run-2"]
    assert ids("?project=shop&model=shop_other&training_dataset=shop/v3") == ["run-9"]
    assert ids("?project=web") == []


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("route, fragment", [
    ("/api/projects/nope/versions", "nope"),
    ("/api/projects/nope/versions/v1", "nope"),
    ("/api/projects/shop/versions/v9", "v9"),
    ("/api/projects/shop/diff?base=v1&target=v9", "v9"),
    ("/api/projects/nope/diff?base=v1&target=v2", "nope"),
])
def test_unknown_project_or_version_is_404_with_a_message(http, route, fragment):
    status, body, _ = http.get(route)
    assert status == 404, body
    assert fragment in body["detail"], body


@pytest.mark.parametrize("route, rule", [
    ("/api/projects/Shop/versions", "project name"),
    ("/api/projects/shop/versions/v..1", "version"),
    ("/api/projects/shop/versions/-v1", "version"),
    ("/api/projects/shop/diff?base=v1&target=" + urllib.parse.quote("v1;rm -rf /"), "version"),
    ("/api/experiments?training_dataset=shop", "<project>/<version>"),
    ("/api/experiments?training_dataset=" + urllib.parse.quote("../x/v1", safe=""), "project name"),
    ("/api/experiments?model=" + "m" * 300, "model"),
])
def test_invalid_names_are_refused_naming_the_rule(http, route, rule):
    status, body, _ = http.get(route)
    assert status == 400, body
    assert rule in body["detail"], body


def test_diff_needs_both_versions(http):
    assert http.get("/api/projects/shop/diff?base=v1")[0] == 422


# ------------------------------------------------------------------ the page
def test_the_page_and_its_files_are_served_by_the_plugin(http):
    status, body, headers = http.get("/", accept="text/html")
    assert status == 200 and "<title>Dataset registry</title>" in body
    assert "http://" not in body and "https://" not in body, "the page loads something from the network"
    assert "frame-ancestors 'self'" in headers["Content-Security-Policy"]
    for name, kind in (("registry.js", "javascript"), ("registry.css", "css"), ("icon.svg", "svg")):
        status, text, headers = http.get(f"/static/{name}")
        assert status == 200 and kind in headers["Content-Type"], (name, headers)
        assert "https://" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", ""), name
    assert http.get("/static/../../etc/passwd")[0] == 404
    assert http.get("/static/nothing.js")[0] == 404


# ------------------------------------------------------------------ packaging
def test_loading_the_plugin_imports_no_web_framework():
    """Every Airflow component loads the plugin: only the api-server builds the app."""
    code = ("import sys, dataset_registry.plugin as p\n"
            "before = sorted(m for m in ('fastapi', 'dataset_registry.web', 'dataset_registry.catalog') if m in sys.modules)\n"
            "apps = p.DatasetRegistryPlugin.fastapi_apps\n"
            "after = sorted(m for m in ('dvc', 'pandas', 'MySQLdb') if m in sys.modules)\n"
            "print(before, [a['url_prefix'] for a in apps], after)\n")
    done = subprocess.run([str(Path(AIRFLOW).parent / "python"), "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO / "plugins")})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[] ['/dataset-registry'] []", done.stdout


def test_the_wheel_ships_the_page_files(tmp_path):
    import zipfile

    from test_provider_package import _source_copy

    src = _source_copy(tmp_path / "src")
    build = subprocess.run([str(Path(AIRFLOW).parent / "python"), "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                            tmp_path / "wheels", src], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    wheel, = (tmp_path / "wheels").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    static = REPO / "plugins" / "dataset_registry" / "web" / "static"
    for path in static.iterdir():
        assert f"dataset_registry/web/static/{path.name}" in names, f"{path.name} is not in {wheel.name}"
