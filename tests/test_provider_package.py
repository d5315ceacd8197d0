"""The provider as another team installs it: wheel -> fresh venv -> their own Airflow 3.3.2.

One module-scoped venv (apache-airflow==3.3.2 + the wheel, with requirements.txt as constraints) and
one AIRFLOW_HOME serve every test. Nothing here imports from the repository: commands run with a cwd
outside it, with an environment built from scratch (no PYTHONPATH, an empty plugins folder, a DAG
folder holding only the two thin DAG files), so ``dataset_registry`` can only come from the wheel.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from airflow_stack import Api, Processes, airflow_env
from conftest import REPO, free_port, plain_pull, report_line

pytestmark = pytest.mark.slow


INSTALL_TIMEOUT = 600  # seconds for `pip install apache-airflow==3.3.2 <wheel>` (about 50 s here)
PACKAGE = "airflow-provider-dataset-registry"
HOOK_CLASS = "dataset_registry.hooks.registry_hook.DvcRegistryHook"
# The thin DAG files of the README's "minimal DAG folder", two lines each. The trailing comment keeps
# the word "airflow" in the file: Airflow's default DAG discovery safe mode skips a .py file that does
# not contain both "airflow" and "dag" (see test_readme_minimal_dag_folder_is_discovered).
THIN_DAG_FILES = {
    "version_dags.py": "from dataset_registry.dag_factory import register_version_dags  # airflow DAG file\n"
                       "register_version_dags(globals())\n",
    "train_dags.py": "from dataset_registry.dag_factory import register_train_dags  # airflow DAG file\n"
                     "register_train_dags(globals())\n",
}
# What the `shop` fixture sets for its project (its env also holds this process's whole environment:
# only these keys are taken over).
SHOP_KEYS = ("DATASET_PROJECTS_DIR", "DATASET_WORK_DIR", "DATASET_DATA_DIR", "MODEL_DB_PATH",
             "AIRFLOW_CONN_MYSQL_RAW")
WINDOW = {"start": "2024-05-01T00:00:00Z", "end": "2024-05-02T00:00:00Z"}
TAG = "shop/v20240502T000000"
EXPECTED_CSV = (b'id,item,price,at\n1,tea,3.50,2024-05-01 10:00:00\n2,"",0.00,2024-05-01 11:00:00\n'
                b'3,,9.99,2024-05-01 23:00:00\n')


@dataclass
class Provider:
    root: Path          # a tmp folder outside the repository: the cwd of every command
    venv: Path
    wheel: Path
    site_packages: Path
    version: str        # dataset_registry.__version__ as the venv imports it
    env: dict           # the from-scratch environment of the venv's Airflow
    install_seconds: float

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    @property
    def airflow(self) -> str:
        return str(self.venv / "bin" / "airflow")

    def run(self, *args, env: dict | None = None, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(a) for a in args], cwd=self.root, env=env or self.env, capture_output=True,
                              text=True, timeout=timeout)
        if check:
            assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        return proc

    def cli_json(self, *args, env: dict | None = None):
        """`airflow <args> -o json`: the JSON document in stdout (log lines may precede it)."""
        out = self.run(self.airflow, *args, "-o", "json", env=env).stdout
        found = _json_in(out)
        assert found is not None, f"no JSON in the output of airflow {' '.join(args)}:\n{out[-3000:]}"
        return found


def _json_in(out: str):
    """The first JSON document that starts a line of ``out`` (warnings may be printed before it)."""
    offset = 0
    for line in out.splitlines(keepends=True):
        if line[:1] in "[{":
            try:
                return json.JSONDecoder().raw_decode(out[offset:])[0]
            except json.JSONDecodeError:
                pass
        offset += len(line)
    return None


def _source_copy(dest: Path) -> Path:
    """The repository's files (tracked or not ignored) copied to ``dest``: the wheel is built there, so a
    stale ``build/`` of the checkout cannot leak into it and the checkout gets no build/ or egg-info."""
    listed = subprocess.run(["git", "-C", REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True, timeout=60).stdout
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _base_env(venv: Path) -> dict:
    """A from-scratch environment: the venv first on PATH, no repository path anywhere."""
    path = [str(venv / "bin")] + [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
                                  if p and not p.startswith(str(REPO))]
    env = {"PATH": os.pathsep.join(path), "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    for key in ("USER", "LOGNAME", "TMPDIR", "TZ"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


@pytest.fixture(scope="module")
def provider(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("provider")
    wheels = root / "wheelhouse"
    src = _source_copy(root / "src")
    pip_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # pip's own config (PIP_*) stays

    started = time.monotonic()
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, src],
                           cwd=root, env=pip_env, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    built = sorted(wheels.glob("airflow_provider_dataset_registry-*-py3-none-any.whl"))
    assert len(built) == 1, f"expected one wheel, got {os.listdir(wheels)}"
    wheel = built[0]
    build_seconds = time.monotonic() - started

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], cwd=root, env=pip_env, check=True, timeout=120)
    started = time.monotonic()
    try:
        install = subprocess.run(
            [venv / "bin" / "python", "-m", "pip", "install", "-q", "apache-airflow==3.3.2", wheel,
             "-c", REPO / "requirements.txt"],
            cwd=root, env=pip_env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"pip install of apache-airflow==3.3.2 + the wheel took more than {INSTALL_TIMEOUT}s")
    install_seconds = time.monotonic() - started
    assert install.returncode == 0, install.stdout[-4000:] + install.stderr[-4000:]
    report_line(request, f"[provider] wheel {wheel.name} built in {build_seconds:.1f}s; "
                     f"fresh venv: apache-airflow==3.3.2 + wheel installed in {install_seconds:.1f}s")

    home, dags, plugins = root / "airflow-home", root / "dags", root / "plugins"
    dags.mkdir()
    plugins.mkdir()  # empty: the plugin must come from the installed package
    for name, code in THIN_DAG_FILES.items():
        (dags / name).write_text(code)
    env = airflow_env(
        _base_env(venv), home, f"sqlite:///{home / 'airflow.db'}", free_port(), "LocalExecutor",
        AIRFLOW__CORE__DAGS_FOLDER=str(dags), AIRFLOW__CORE__PLUGINS_FOLDER=str(plugins),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
    )
    assert not any(str(REPO) in value for value in env.values()), "the environment names the repository"
    site = subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          cwd=root, env=env, capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    version = subprocess.run([venv / "bin" / "python", "-c", "import dataset_registry; print(dataset_registry.__version__)"],
                             cwd=root, env=env, capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    prov = Provider(root, venv, wheel, Path(site), version, env, install_seconds)
    started = time.monotonic()
    prov.run(prov.airflow, "db", "migrate", timeout=300)
    report_line(request, f"[provider] airflow db migrate in {time.monotonic() - started:.1f}s")
    yield prov
    shutil.rmtree(venv, ignore_errors=True)  # ~600 MB; pytest keeps the last few base temp folders


def _registry_conn(registry, **extra_overrides) -> str:
    """The registry connection as the NEW connection type, with the fixture's extra."""
    conn = json.loads(registry.conn_json(**extra_overrides))
    conn["conn_type"] = "dvc_registry"
    return json.dumps(conn)


def _project_env(provider: Provider, shop: dict, registry, **extra_overrides) -> dict:
    return {**provider.env, **{key: shop[key] for key in SHOP_KEYS},
            "AIRFLOW_CONN_DVC_REGISTRY": _registry_conn(registry, **extra_overrides)}


def _dags_test(provider: Provider, env: dict, dag_id: str, conf: dict | None = None) -> subprocess.CompletedProcess:
    args = [provider.airflow, "dags", "test", dag_id] + (["-c", json.dumps(conf)] if conf is not None else [])
    return provider.run(*args, env=env, timeout=600, check=False)


def _model_db(env: dict, sql: str) -> list:
    if not Path(env["MODEL_DB_PATH"]).exists():
        return []
    with sqlite3.connect(env["MODEL_DB_PATH"]) as db:
        return db.execute(sql).fetchall()


# ------------------------------------------------------------------ 1. the install itself
def test_wheel_installs_into_a_fresh_venv_and_is_imported_from_it(provider):
    assert provider.venv.resolve() != Path(sys.prefix).resolve()
    assert not str(provider.root.resolve()).startswith(str(REPO.resolve()))
    assert "PYTHONPATH" not in provider.env
    where = provider.run(provider.python, "-c", "import dataset_registry; print(dataset_registry.__file__)").stdout.strip()
    assert Path(where).resolve().is_relative_to(provider.site_packages.resolve()), where
    assert provider.site_packages.resolve().is_relative_to(provider.venv.resolve())
    assert provider.wheel.name == f"airflow_provider_dataset_registry-{provider.version}-py3-none-any.whl"
    shown = provider.run(provider.python, "-m", "pip", "show", PACKAGE).stdout
    assert f"Version: {provider.version}" in shown
    provider.run(provider.python, "-m", "pip", "check")  # the resolved set is consistent
    airflow_version = provider.run(provider.airflow, "version").stdout.strip().splitlines()[-1]
    assert airflow_version == "3.3.2"


# ------------------------------------------------------------------ 2. what Airflow sees
def test_providers_list_and_connection_type(provider):
    providers = {p["package_name"]: p for p in provider.cli_json("providers", "list")}
    assert PACKAGE in providers, sorted(providers)
    assert providers[PACKAGE]["version"] == provider.version

    hooks = {h["connection_type"]: h for h in provider.cli_json("providers", "hooks")}
    assert "dvc_registry" in hooks, sorted(hooks)
    assert hooks["dvc_registry"]["class"] == HOOK_CLASS
    assert hooks["dvc_registry"]["package_name"] == PACKAGE


def test_plugin_is_loaded_with_default_settings(provider):
    """`airflow plugins` in the team's Airflow (default config, empty plugins folder) lists the plugin."""
    proc = provider.run(provider.airflow, "plugins", "-o", "json")
    out = proc.stdout
    names = [p["name"] for p in _json_in(out) or []]
    assert "dataset_registry" in names, (
        "`airflow plugins` does not list dataset_registry. The provider declares it only under "
        "get_provider_info()['plugins'], which Airflow loads only when [core] lazy_discover_providers is "
        "False (default True); official providers also register an `airflow.plugins` entry point "
        f"(e.g. openlineage). Output:\n{out[-2000:]}\n{proc.stderr[-2000:]}")


# ------------------------------------------------------------------ 3. end to end
def test_version_then_train_from_a_two_file_dag_folder(provider, shop, registry, sshd, tmp_path):
    assert sorted(os.listdir(provider.env["AIRFLOW__CORE__DAGS_FOLDER"])) == sorted(THIN_DAG_FILES)
    env = _project_env(provider, shop, registry)
    assert json.loads(env["AIRFLOW_CONN_DVC_REGISTRY"])["conn_type"] == "dvc_registry"

    version = _dags_test(provider, env, "version_shop", WINDOW)
    assert version.returncode == 0, version.stdout[-4000:] + version.stderr[-4000:]
    assert registry.tags() == [TAG]
    assert plain_pull(registry, sshd, TAG, tmp_path / "pull", "shop/orders.csv") == EXPECTED_CSV
    assert _model_db(env, "SELECT project, version, tag, rows FROM dataset_versions") == [
        ("shop", "v20240502T000000", TAG, 3)]

    train = _dags_test(provider, env, "train_shop")
    assert train.returncode == 0, train.stdout[-4000:] + train.stderr[-4000:]
    assert _model_db(env, "SELECT training_dataset, status FROM experiments") == [(TAG, "succeeded")]


# ------------------------------------------------------------------ 4. a misspelled extra key
def test_misspelled_extra_key_fails_naming_it_and_publishes_nothing(provider, shop, registry):
    env = _project_env(provider, shop, registry, no_host_key_checks=True)
    proc = _dags_test(provider, env, "version_shop", WINDOW)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    assert "unknown extra key 'no_host_key_checks'" in out, out[-4000:]
    assert "did you mean 'no_host_key_check'" in out, out[-4000:]
    assert registry.tags() == [] and registry.commit_count() == 0
    assert not any(registry.store.iterdir()), "data reached the DVC remote"
    assert _model_db(env, "SELECT count(*) FROM dataset_versions") in ([], [(0,)])


# ------------------------------------------------------------------ 5. the connection form
def _status_without_valid_token(url: str, token: str | None) -> int:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_connection_form_served_by_the_api_server(provider):
    """GET /ui/connections/hook_meta as the UI's connection form does. SimpleAuthManager with a named
    admin (not all-admins: that mode authenticates every request, so 401 could not be shown)."""
    port = free_port()
    password = uuid.uuid4().hex
    passwords = provider.root / "simple_auth_passwords.json"
    passwords.write_text(json.dumps({"admin": password}))
    env = {**provider.env,
           "AIRFLOW__API__PORT": str(port),
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords)}
    api = Api(port)
    with Processes(provider.root / f"logs-{port}") as procs:
        procs.start("api-server", [provider.airflow, "api-server", "--port", port, "--host", "127.0.0.1"],
                    env, cwd=provider.root)
        api.wait("the api-server", lambda: (procs.assert_running(), api.call("GET", "/api/v2/monitor/health"))[1], 120)
        url = api.base + "/ui/connections/hook_meta"
        assert _status_without_valid_token(url, None) in (401, 403)
        assert _status_without_valid_token(url, "not-a-token") in (401, 403)
        api.token = api.call("POST", "/auth/token", {"username": "admin", "password": password})["access_token"]
        meta = {m["connection_type"]: m for m in api.call("GET", "/ui/connections/hook_meta")}

    assert "dvc_registry" in meta, sorted(meta)
    entry = meta["dvc_registry"]
    assert entry["hook_class_name"] == HOOK_CLASS
    extra = entry["extra_fields"]
    expected_types = {"repo_url": "string", "remote_url": "string", "branch": "string", "key_file": "string",
                      "known_hosts": "string", "no_host_key_check": "boolean", "work_dir": "string",
                      "publish_timeout": "integer", "remote_conn_id": "string"}
    assert set(extra) == set(expected_types), sorted(extra)
    for name, kind in expected_types.items():
        schema = extra[name]["schema"]
        assert schema.get("title"), f"{name} has no label: {extra[name]}"
        assert kind in schema["type"], f"{name}: {schema}"
    assert extra["branch"]["value"] == "main"
    assert extra["no_host_key_check"]["value"] is False
    assert extra["publish_timeout"]["value"] == 900

    standard = entry["standard_fields"]
    assert standard["login"]["title"] == "SSH user" and not standard["login"]["hidden"]
    assert standard["password"]["title"] == "SSH password" and not standard["password"]["hidden"]
    for hidden in ("host", "port", "url_schema"):
        assert standard[hidden] and standard[hidden]["hidden"] is True, f"{hidden}: {standard[hidden]}"


# ------------------------------------------------------------------ the README's minimal DAG folder
def _readme_thin_dag_files() -> dict[str, str]:
    """The files of the README's "A minimal DAG folder" block (file name, then its lines)."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"\*\*A minimal DAG folder\.\*\*.*?```text\n(.*?)```", text, re.S)
    assert block, "README.md has no 'A minimal DAG folder' text block"
    files: dict[str, list[str]] = {}
    current = None
    for line in block.group(1).splitlines():
        if line.startswith("dags/"):
            name, _, code = line.partition(" ")
            current = Path(name).name
            files[current] = [code.strip()]
        elif current and line[:1].isspace() and line.strip():
            files[current].append(line.strip())
        else:
            current = None
    return {name: "\n".join(lines) + "\n" for name, lines in files.items()}


def test_readme_minimal_dag_folder_is_discovered(provider, tmp_path):
    """The README's thin DAG files, copied as they are, give version_shop and train_shop with Airflow's
    default settings (DAG discovery safe mode on)."""
    files = _readme_thin_dag_files()
    assert set(files) == set(THIN_DAG_FILES), files
    dags, projects = tmp_path / "dags", tmp_path / "include" / "projects"
    dags.mkdir()
    projects.mkdir(parents=True)
    for name, code in files.items():
        (dags / name).write_text(code)
    (projects / "shop.yaml").write_text("project: shop\nschedule: null\noutput: orders.csv\n"
                                        "query: SELECT id FROM shop.orders ORDER BY id\n")
    env = {**provider.env, "AIRFLOW__CORE__DAGS_FOLDER": str(dags), "DATASET_PROJECTS_DIR": str(projects)}
    listed = sorted(d["dag_id"] for d in provider.cli_json("dags", "list", "--local", env=env))
    missing = [f for f, code in files.items() if not ("airflow" in code.lower() and "dag" in code.lower())]
    assert listed == ["train_shop", "version_shop"], (
        f"DAGs found: {listed}. Airflow's default [core] dag_discovery_safe_mode skips a .py file unless it "
        f"contains both 'airflow' and 'dag'; README files without 'airflow': {missing}")
