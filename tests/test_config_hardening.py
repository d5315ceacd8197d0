"""Hostile or broken project YAMLs: each becomes that file's config error, never hides other projects,
never breaks the DAG files' import; every problem of a file is reported at once; callables must be
project code under the include root; the version Param refuses a trailing newline.

DagBag checks run in a subprocess (a fresh Airflow import, an address-space limit so a YAML bomb
fails instead of swapping the machine)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dataset_registry.project_config import MAX_FILE_BYTES, ProjectConfigError, load_project, load_projects
from dataset_registry.user_code import UserCodeError, load_user_callable, resolve_user_callable_file

REPO = Path(__file__).resolve().parents[1]
GOOD = 'project: {name}\nschedule: "@daily"\nquery: SELECT 1 AS x ORDER BY 1\noutput: train.csv\n'
# 585 bytes that expand to 10^9 "lol"s when walked: PyYAML shares the nodes, str() expands them.
BILLION_LAUGHS = "project: bomb\nschedule: null\nquery: SELECT 1\noutput: t.csv\n" + "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]" for p, c in zip("abcdefgh", "bcdefghi")]
) + "\nowner: *i\n"


def include_tree(tmp_path: Path) -> Path:
    """``<tmp>/include/projects`` with preprocess/clean.py and training/fit.py beside it."""
    projects = tmp_path / "include" / "projects"
    projects.mkdir(parents=True)
    (tmp_path / "include" / "preprocess").mkdir()
    (tmp_path / "include" / "preprocess" / "__init__.py").write_text("")
    (tmp_path / "include" / "preprocess" / "clean.py").write_text("def clean(frame):\n    return frame\n")
    (tmp_path / "include" / "trainer.py").write_text("def fit(path, **_):\n    return {}\n")
    return projects


def write(folder: Path, filename: str, text: str) -> Path:
    path = folder / filename
    path.write_text(text)
    return path


def dagbag(projects: Path, timeout: float = 180) -> dict:
    """Build a real DagBag of dags/ over ``projects``: dag ids -> description and doc_md, and the
    import errors per file."""
    code = textwrap.dedent(f"""
        import json, os, resource
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        os.environ["DATASET_PROJECTS_DIR"] = {str(projects)!r}
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag({str(REPO / 'dags')!r})
        dags = {{d: {{"description": bag.dags[d].description or "", "doc_md": bag.dags[d].doc_md or "",
                      "tags": sorted(bag.dags[d].tags)}} for d in bag.dag_ids}}
        print(json.dumps({{"dags": dags, "errors": {{k: str(v)[-2000:] for k, v in bag.import_errors.items()}}}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ A: one file never hides the others
def test_hostile_files_become_config_errors_and_hide_nothing(tmp_path):
    projects = include_tree(tmp_path)
    write(projects, "good.yaml", GOOD.format(name="good"))
    write(projects, "sd.yaml", GOOD.format(name="sd") + 'start_date: "2024-01-01garbage"\n')
    write(projects, "cron.yaml", GOOD.format(name="cron").replace('"@daily"', '"99 99 * * *"'))
    write(projects, "bomb.yaml", BILLION_LAUGHS)
    write(projects, "bigint.yaml", GOOD.format(name="bigint") + "retries: " + "1" * 5000 + "\n")
    with open(projects / "huge.yaml", "w") as big:  # 25 MB: must be refused by size, not parsed
        big.write(GOOD.format(name="huge") + "description: '" + "x" * (25 << 20) + "'\n")
    os.mkfifo(projects / "pipe.yaml")  # must not block the parser
    write(projects, "nest.yaml", GOOD.format(name="nest") + "tags: " + "[" * 30_000 + "]" * 30_000 + "\n")
    assert len(BILLION_LAUGHS.encode()) < 600

    started = time.monotonic()
    result = dagbag(projects, timeout=120)
    assert time.monotonic() - started < 60
    assert result["errors"] == {}, "a DAG file failed to import"
    dags = result["dags"]
    assert {"version_good", "train_good"} <= set(dags)
    for name in ("sd", "cron", "bomb", "bigint", "huge", "pipe", "nest"):
        assert f"config_error_{name}" in dags and f"version_{name}" not in dags and f"train_{name}" not in dags
    assert "key 'start_date': '2024-01-01garbage' is not an ISO date" in dags["config_error_sd"]["description"]
    assert "key 'schedule': '99 99 * * *' is not a valid cron expression" in dags["config_error_cron"]["description"]
    assert "anchors and aliases" in dags["config_error_bomb"]["doc_md"]
    assert "a value cannot be converted (ValueError: Exceeds the limit" in dags["config_error_bigint"]["doc_md"]
    assert f"over the limit of {MAX_FILE_BYTES // 1024} KiB ({MAX_FILE_BYTES} bytes)" in dags["config_error_huge"]["doc_md"]
    assert "not a regular file" in dags["config_error_pipe"]["doc_md"]
    assert "nested too deeply" in dags["config_error_nest"]["doc_md"]


def test_two_files_of_one_project_are_both_errors_with_unique_ids(tmp_path):
    projects = include_tree(tmp_path)
    write(projects, "a.yaml", GOOD.format(name="a"))
    write(projects, "a.yml", GOOD.format(name="a").replace("train.csv", "other.csv"))
    write(projects, "b.yaml", GOOD.format(name="b"))
    dags = dagbag(projects)["dags"]
    assert not {"version_a", "train_a", "config_error_a"} & set(dags)
    assert {"config_error_a_yaml", "config_error_a_yml", "version_b", "train_b"} <= set(dags)
    assert "also declared by a.yml" in dags["config_error_a_yaml"]["description"]
    assert "also declared by a.yaml" in dags["config_error_a_yml"]["description"]


def test_file_size_is_capped_before_parsing(tmp_path):
    projects = include_tree(tmp_path)
    path = write(projects, "big.yaml", GOOD.format(name="big") + "#" * MAX_FILE_BYTES + "\n")
    with pytest.raises(ProjectConfigError, match=rf"over the limit of 64 KiB \({MAX_FILE_BYTES} bytes\)"):
        load_project(path)
    write(projects, "big.yaml", GOOD.format(name="big") + "#" * (MAX_FILE_BYTES // 2) + "\n")
    assert load_project(path).project == "big"


def test_billion_laughs_is_refused_without_expanding(tmp_path):
    code = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from pathlib import Path
        from dataset_registry.project_config import ProjectConfigError, load_project
        try:
            load_project(Path({str(write(tmp_path, 'bomb.yaml', BILLION_LAUGHS))!r}))
        except ProjectConfigError as exc:
            print("REFUSED", exc)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "REFUSED" in proc.stdout and "anchors and aliases (&name, *name) are not allowed" in proc.stdout


def test_values_yaml_cannot_convert_are_config_errors(tmp_path):
    projects = include_tree(tmp_path)
    with pytest.raises(ProjectConfigError, match=r"a value cannot be converted \(ValueError: month must be in 1..12\)"):
        load_project(write(projects, "p.yaml", GOOD.format(name="p") + "start_date: 2024-13-45\n"))


@pytest.mark.parametrize("line,key,says", [
    ('start_date: "2024-01-01garbage"', "start_date", "not an ISO date"),
    ("start_date: 1900-01-01", "start_date", "out of range"),
    ('schedule: "99 99 * * *"', "schedule", "not a valid cron expression"),
    ('schedule: "0 0 31 2 *"', "schedule", "never fires"),
    ("owner: [a, b]", "owner", "invalid owner"),
    ("owner: " + "o" * 1000, "owner", "short name"),
    ("tags: " + json.dumps([f"t{i}" for i in range(21)]), "tags", "at most 20"),
    ("tags: [" + "x" * 51 + "]", "tags", "1-50 characters"),
    ('tags: ["a\\nb"]', "tags", "1-50 characters"),
    ("description: " + "d" * 2001, "description", "at most 2000 characters"),
    ("description: [1]", "description", "must be text"),
    ("query_timeout: 1.5", "query_timeout", "whole number"),
])
def test_every_value_is_type_and_range_checked(tmp_path, line, key, says):
    projects = include_tree(tmp_path)
    k = line.split(":")[0]
    text = "".join(l + "\n" for l in GOOD.format(name="p").splitlines() if not l.startswith(k + ":")) + line + "\n"
    with pytest.raises(ProjectConfigError) as err:
        load_project(write(projects, "p.yaml", text))
    assert f"key '{key}': " in str(err.value) and says in str(err.value)


def test_duplicate_keys_in_one_file_are_refused(tmp_path):
    projects = include_tree(tmp_path)
    with pytest.raises(ProjectConfigError, match="duplicate key 'schedule'"):
        load_project(write(projects, "p.yaml", GOOD.format(name="p") + "schedule: '@hourly'\n"))


def test_yaml_dates_and_datetimes_still_work(tmp_path):
    projects = include_tree(tmp_path)
    for value in ("2024-03-01", "2024-03-01 06:00:00", "'2024-03-01T06:00:00+02:00'"):
        cfg = load_project(write(projects, "p.yaml", GOOD.format(name="p") + f"start_date: {value}\n"))
        from dataset_registry.project_config import parse_start_date

        assert parse_start_date(cfg.start_date).year == 2024


# ------------------------------------------------------------------ B: all problems at once, in full
THREE_MISTAKES = "project: shop\nschedule: '99 99 * * *'\nquery: SELECT 1\noutput: o.csv\nretries: -1\nschedul: x\n"


def test_every_problem_of_a_file_is_reported_at_once(tmp_path):
    projects = include_tree(tmp_path)
    path = write(projects, "shop.yaml", THREE_MISTAKES)
    with pytest.raises(ProjectConfigError) as err:
        load_project(path)
    lines = str(err.value).splitlines()
    assert len(err.value.problems) == 3 and len(lines) == 3
    assert all(line.startswith(f"{path}: key '") for line in lines)
    assert [line.split("key '")[1].split("'")[0] for line in lines] == ["schedul", "schedule", "retries"]
    assert "did you mean 'schedule'?" in lines[0] and "model_db_conn_id" in lines[0]  # the allowed list survives


def test_config_error_dag_shows_the_whole_text(tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    from dataset_registry.dag_factory import build_error_dag

    projects = include_tree(tmp_path)
    write(projects, "shop.yaml", THREE_MISTAKES)
    _, errors = load_projects(projects)
    full = str(errors[0])
    assert len(full) > 400  # more than the old 200-character cut
    dag = build_error_dag(errors[0])
    assert dag.dag_id == "config_error_shop"
    assert dag.description.startswith("3 problems in shop.yaml: see DAG docs / task log")
    assert full in dag.doc_md
    task = dag.get_task("config_error")
    with pytest.raises(AirflowFailException) as failure:
        task.python_callable(*task.op_args)
    assert str(failure.value) == full

    dags = dagbag(projects)["dags"]
    assert dags["config_error_shop"]["description"].startswith("3 problems in shop.yaml: see DAG docs / task log")
    assert full in dags["config_error_shop"]["doc_md"]


# ------------------------------------------------------------------ C: callables are project code only
@pytest.mark.parametrize("line", ["preprocess: subprocess:call", "preprocess: os:system", "train: os:system",
                                  "train: dataset_registry.registry:publish", "preprocess: preprocess.missing:clean"])
def test_callables_outside_the_include_root_are_config_errors(tmp_path, line):
    projects = include_tree(tmp_path)
    with pytest.raises(ProjectConfigError) as err:
        load_project(write(projects, "p.yaml", GOOD.format(name="p") + line + "\n"))
    text = str(err.value)
    assert f"key '{line.split(':')[0]}'" in text
    assert f"callables must be defined in a module under {(tmp_path / 'include').resolve()}" in text
    assert "preprocess/demo.py -> preprocess.demo:clean" in text


def test_callables_under_the_include_root_are_accepted(tmp_path):
    projects = include_tree(tmp_path)
    cfg = load_project(write(projects, "p.yaml", GOOD.format(name="p")
                             + "preprocess: preprocess.clean:clean\ntrain: trainer:fit\n"))
    assert (cfg.preprocess, cfg.train) == ("preprocess.clean:clean", "trainer:fit")
    assert cfg.include_root == (tmp_path / "include").resolve()


def test_symlink_out_of_the_include_root_is_refused(tmp_path):
    projects = include_tree(tmp_path)
    outside = tmp_path / "outside.py"
    outside.write_text("def run(frame):\n    return frame\n")
    (tmp_path / "include" / "sneaky.py").symlink_to(outside)
    with pytest.raises(ProjectConfigError, match="outside the include root"):
        load_project(write(projects, "p.yaml", GOOD.format(name="p") + "preprocess: sneaky:run\n"))


def test_allow_list_from_the_environment(tmp_path, monkeypatch):
    projects = include_tree(tmp_path)
    path = write(projects, "p.yaml", GOOD.format(name="p") + "preprocess: json.decoder:JSONDecoder\n")
    with pytest.raises(ProjectConfigError, match="DATASET_ALLOWED_CALLABLE_MODULES"):
        load_project(path)
    monkeypatch.setenv("DATASET_ALLOWED_CALLABLE_MODULES", "csv, json.")
    assert load_project(path).preprocess == "json.decoder:JSONDecoder"


# ------------------------------------------------------------------ user_code: the run-time half
def test_user_code_has_no_airflow_import():
    code = "import sys, dataset_registry.user_code; print(sorted(m for m in sys.modules if m.startswith('airflow')))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


def test_load_user_callable_imports_that_exact_file(tmp_path):
    root = tmp_path / "inc"
    (root / "ucpkg_a" / "sub").mkdir(parents=True)
    (root / "ucpkg_a" / "__init__.py").write_text("")
    (root / "ucpkg_a" / "sub" / "__init__.py").write_text("def f(x):\n    return x + 1\n")
    (root / "ucmod_a.py").write_text("def g(x):\n    return x * 2\n")
    assert load_user_callable("ucpkg_a.sub:f", root)(1) == 2
    assert load_user_callable("ucmod_a:g", root)(4) == 8
    assert resolve_user_callable_file("ucpkg_a.sub:f", root) == (root / "ucpkg_a" / "sub" / "__init__.py").resolve()


def test_same_module_name_from_two_include_roots(tmp_path):
    for n in (1, 2):
        (tmp_path / f"r{n}").mkdir()
        (tmp_path / f"r{n}" / "uc_twice.py").write_text(f"def which():\n    return {n}\n")
    assert load_user_callable("uc_twice:which", tmp_path / "r1")() == 1
    assert load_user_callable("uc_twice:which", tmp_path / "r2")() == 2


@pytest.mark.parametrize("source,spec,says", [
    (None, "uc_missing:f", "callables must be defined in a module under"),
    ("raise RuntimeError('boom at import')\n", "uc_boom:f", "importing uc_boom failed: RuntimeError: boom at import"),
    ("import sys\nsys.exit(3)\n", "uc_exit:f", "importing uc_exit failed: SystemExit: 3"),
    ("def g():\n    pass\n", "uc_noattr:f", "defines no 'f'"),
    ("f = 42\n", "uc_notcallable:f", "'f' is a int, not a function"),
    ("def dumps(x):\n    return 'mine'\n", "json:dumps", "standard-library module"),
    (None, "os:system", "callables must be defined in a module under"),
    (None, "not a spec", "is not 'module:function'"),
])
def test_load_user_callable_failures_are_user_code_errors(tmp_path, source, spec, says):
    if source is not None:
        (tmp_path / (spec.split(":")[0] + ".py")).write_text(source)
    with pytest.raises(UserCodeError) as err:
        load_user_callable(spec, tmp_path)
    assert says in str(err.value)
    assert isinstance(err.value, ValueError)


def test_load_user_callable_allow_list_imports_by_name(tmp_path):
    import json

    assert load_user_callable("json:dumps", tmp_path, allow=["json"]) is json.dumps
    with pytest.raises(UserCodeError):
        load_user_callable("json:dumps", tmp_path, allow=["jsonx", "js."])
    with pytest.raises(UserCodeError, match="no include root"):
        load_user_callable("json:dumps", None)


# ------------------------------------------------------------------ D: the version Param
def test_version_param_refuses_a_trailing_newline(tmp_path):
    from airflow.sdk import Param
    from airflow.sdk.exceptions import ParamValidationError

    from dataset_registry.dag_factory import build_train_dag, build_version_dag
    from dataset_registry.names import VERSION_PARAM_PATTERN, VERSION_RULE

    param = Param(None, type=["null", "string"], pattern=VERSION_PARAM_PATTERN)
    assert param.resolve("v1") == "v1" and param.resolve(None) is None
    for bad in ("v1\n", "v1\n\n", "\nv1", "x" * 65):
        with pytest.raises(ParamValidationError):
            Param(None, type=["null", "string"], pattern=VERSION_PARAM_PATTERN).resolve(bad)
    assert Param(None, type=["null", "string"], pattern=VERSION_RULE).resolve("v1\n") == "v1\n"  # why it exists

    cfg = load_project(write(include_tree(tmp_path), "p.yaml", GOOD.format(name="p")))
    for dag in (build_version_dag(cfg), build_train_dag(cfg)):
        with pytest.raises(ParamValidationError):
            dag.params.get_param("version").resolve("v1\n")
        assert dag.params.get_param("version").resolve("v1") == "v1"


def test_version_param_pattern_in_javascript():
    import shutil

    from dataset_registry.names import VERSION_PARAM_PATTERN

    if not shutil.which("node"):
        pytest.skip("node is not installed")
    script = (f"const r = new RegExp({json.dumps(VERSION_PARAM_PATTERN)}, 'u');"
              "console.log(JSON.stringify([r.test('v1'), r.test('v1\\n'), r.test('\\nv1')]))")
    proc = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=30)
    assert json.loads(proc.stdout) == [True, False, False], proc.stderr


def test_a_file_of_many_keys_is_refused_cheaply_and_reports_a_bounded_text(tmp_path):
    import time

    from dataset_registry.project_config import MAX_KEYS, MAX_PROBLEMS

    projects = tmp_path / "projects"
    projects.mkdir()
    many = write(projects, "many.yaml", "".join(f"k{i}x: 1\n" for i in range(5000)))
    started = time.monotonic()
    with pytest.raises(ProjectConfigError) as err:
        load_project(many)
    assert time.monotonic() - started < 5
    assert f"5000 top-level keys, over the limit of {MAX_KEYS}" in str(err.value) and len(str(err.value)) < 2000
    bad = write(projects, "bad.yaml", "".join(f"k{i}x: 1\n" for i in range(MAX_KEYS - 4)))
    with pytest.raises(ProjectConfigError) as err:
        load_project(bad)
    assert len(err.value.problems) == MAX_PROBLEMS + 1 and err.value.problems[-1].startswith("... and ")


def test_project_modules_that_would_be_shadowed_or_planted_are_refused(tmp_path):
    from dataset_registry.user_code import UserCodeError, resolve_user_callable_file

    root = tmp_path / "include"
    for rel in ("email/evil.py", "json/__init__.py", "yaml/x.py", "mine/ok.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("def f(*a, **k):\n    return None\n")
    for spec, words in (("email.evil:f", "standard-library"), ("json:f", "standard-library"),
                        ("yaml.x:f", "installed module 'yaml'")):
        with pytest.raises(UserCodeError, match=words):
            resolve_user_callable_file(spec, root, allow=())
    assert resolve_user_callable_file("mine.ok:f", root, allow=()) == (root / "mine" / "ok.py").resolve()
    (root / "mine").chmod(0o777)
    with pytest.raises(UserCodeError, match="writable by every user"):
        resolve_user_callable_file("mine.ok:f", root, allow=())
