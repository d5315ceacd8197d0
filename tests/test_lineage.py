"""OpenLineage: naming, SQL parsing and facets with the real OpenLineage classes and SQL parser, then
`airflow dags test` with the OpenLineage file transport for the events a real run emits."""
from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys

import pytest

from conftest import REPO
from dataset_registry import lineage
from dataset_registry.lineage import registry_namespace, sql_tables, train_lineage, version_lineage

SOURCE = {"host": "DB.Example.org", "port": 3307, "database": "raw"}
EVENT = {
    "project": "shop", "version": "v20240502T000000", "tag": "shop/v20240502T000000",
    "md5": "0123456789abcdef0123456789abcdef", "rows": 3, "bytes": 97,
    "commit": "a" * 40, "created": True,
    "window_start": "2024-05-01T00:00:00+00:00", "window_end": "2024-05-02T00:00:00+00:00",
    "output": "orders.csv", "columns": ["id", "item", "price", "at"],
    "column_types": ["INT", "VARCHAR", "DECIMAL", "DATETIME"],
}
REGISTRY = "ssh://git@registry.example.org:22/srv/registry.git"


def to_dict(obj) -> dict:
    from openlineage.client.serde import Serde

    return Serde.to_dict(obj)


def names(lineage_result) -> list[tuple[str, str]]:
    return [(d.namespace, d.name) for d in lineage_result.inputs]


# ------------------------------------------------------------------ optional dependency
def test_module_imports_and_names_without_the_openlineage_packages():
    """The provider is optional: the module must import (and name things) when it is missing."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('openlineage', 'openlineage_sql') or name.startswith('airflow.providers.openlineage'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import dataset_registry.lineage as m\n"
        "assert m.registry_namespace('/srv/r.git') == 'dvc://localhost/srv/r.git'\n"
        "assert not [k for k in sys.modules if 'openlineage' in k], [k for k in sys.modules if 'openlineage' in k]\n"
        "try:\n"
        "    m.version_lineage(sql='SELECT 1', source={}, registry_url='/r', event={})\n"
        "except ImportError:\n"
        "    print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'plugins'}"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


# ------------------------------------------------------------------ SQL -> MySQL input tables
@pytest.mark.parametrize("sql, expected", [
    ("SELECT id, price FROM raw.orders WHERE at >= '2024-05-01 00:00:00' ORDER BY id", ["raw.orders"]),
    ("SELECT o.id, c.name FROM sales.orders o JOIN crm.customers c ON c.id = o.customer_id "
     "LEFT JOIN `crm`.`regions` r ON r.id = c.region_id ORDER BY o.id",
     ["crm.customers", "crm.regions", "sales.orders"]),
    ("SELECT * FROM (SELECT id, total FROM sales.orders WHERE total > 0) big "
     "WHERE big.id IN (SELECT order_id FROM sales.refunds) ORDER BY id",
     ["sales.orders", "sales.refunds"]),
    ("WITH recent AS (SELECT * FROM `sales`.`orders` WHERE at >= NOW() - INTERVAL 1 DAY), "
     "totals AS (SELECT customer_id, SUM(total) s FROM recent GROUP BY customer_id) "
     "SELECT t.*, c.name FROM totals t JOIN customers c ON c.id = t.customer_id ORDER BY t.customer_id",
     ["raw.customers", "sales.orders"]),  # CTE names are not tables; `customers` takes the source db
    ("SELECT `id`, `weird col` FROM `odd-db`.`my table` ORDER BY `id`", ["odd-db.my table"]),
    ("SELECT * FROM Sales.Orders UNION ALL SELECT * FROM sales.orders_archive ORDER BY 1",
     ["Sales.Orders", "sales.orders_archive"]),  # the case as written: MySQL names are case-sensitive
    ("SELECT a.id FROM raw.events a JOIN raw.events b ON a.id = b.parent_id ORDER BY a.id", ["raw.events"]),
    ("-- a comment\nSELECT id FROM events /* inline */ WHERE id > 0 ORDER BY id;", ["raw.events"]),
])
def test_version_lineage_inputs_are_the_tables_the_sql_reads(sql, expected):
    result = version_lineage(sql=sql, source=SOURCE, registry_url=REGISTRY, event=EVENT)
    assert names(result) == [("mysql://db.example.org:3307", name) for name in expected]
    assert result.run_facets == {}
    assert result.job_facets["sql"].query == sql and result.job_facets["sql"].dialect == "mysql"


def test_unqualified_table_without_a_source_database_keeps_its_bare_name():
    assert sql_tables("SELECT id FROM events ORDER BY id", None) == (["events"], [])
    result = version_lineage(sql="SELECT id FROM events", source={"host": None, "port": None, "database": None},
                             registry_url=REGISTRY, event=EVENT)
    assert names(result) == [("mysql://localhost:3306", "events")]


def test_ipv6_source_host_is_bracketed():
    result = version_lineage(sql="SELECT 1 FROM t", source={"host": "::1", "port": 3306, "database": "d"},
                             registry_url=REGISTRY, event=EVENT)
    assert names(result) == [("mysql://[::1]:3306", "d.t")]


@pytest.mark.parametrize("sql", ["SELEC id FROM orders", "SELECT FROM WHERE ORDER BY", ""])
def test_unparsable_sql_gives_no_inputs_but_still_the_output(sql, caplog):
    with caplog.at_level(logging.WARNING, logger="dataset_registry.lineage"):
        result = version_lineage(sql=sql, source=SOURCE, registry_url=REGISTRY, event=EVENT)
    assert result.inputs == []
    assert [(d.namespace, d.name) for d in result.outputs] == [("dvc://registry.example.org/srv/registry.git", "shop")]
    assert result.outputs[0].facets["dvcDatasetVersion"].tag == "shop/v20240502T000000"
    error = result.run_facets["extractionError"]
    assert error.failedTasks == 1 and error.errors and error.errors[0].errorMessage
    assert any("could not parse the SQL of shop/v20240502T000000" in r.getMessage() for r in caplog.records)


def test_a_crashing_parser_is_a_warning_not_a_failure(monkeypatch, caplog):
    def boom(*_a, **_k):
        raise RuntimeError("parser exploded")

    monkeypatch.setattr(lineage, "sql_tables", boom)
    with caplog.at_level(logging.WARNING, logger="dataset_registry.lineage"):
        result = version_lineage(sql="SELECT 1 FROM t", source=SOURCE, registry_url=REGISTRY, event=EVENT)
    assert result.inputs == [] and len(result.outputs) == 1
    assert "parser exploded" in result.run_facets["extractionError"].errors[0].errorMessage


# ------------------------------------------------------------------ registry namespace
@pytest.mark.parametrize("url, expected", [
    ("ssh://git@host:22/srv/registry.git", "dvc://host/srv/registry.git"),
    ("ssh://host/srv/registry.git", "dvc://host/srv/registry.git"),
    ("git@host:/srv/registry.git", "dvc://host/srv/registry.git"),
    ("ssh://git@Host.Example.org:2222/srv/registry.git", "dvc://host.example.org:2222/srv/registry.git"),
    ("ssh://git@127.0.0.1:40022/tmp/x/registry.git/", "dvc://127.0.0.1:40022/tmp/x/registry.git"),
    ("ssh://git@[::1]:2222/srv/registry.git", "dvc://[::1]:2222/srv/registry.git"),
    ("git@github.com:org/registry.git", "dvc://github.com/org/registry.git"),
    ("https://github.com/org/registry.git", "dvc://github.com/org/registry.git"),
    ("https://github.com:443/org/registry.git", "dvc://github.com/org/registry.git"),
    ("http://git.local:8080/org/registry.git?ref=x#frag", "dvc://git.local:8080/org/registry.git"),
    ("https://git.local/a%20b/registry.git", "dvc://git.local/a%20b/registry.git"),
    ("file:///srv/registry.git", "dvc://localhost/srv/registry.git"),
    ("/srv/registry.git", "dvc://localhost/srv/registry.git"),
    ("/srv//data/../registry.git/", "dvc://localhost/srv/registry.git"),
    ("/srv/my registry.git", "dvc://localhost/srv/my%20registry.git"),
])
def test_registry_namespace_rules(url, expected):
    assert registry_namespace(url) == expected


def test_relative_local_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert registry_namespace("registry.git") == f"dvc://localhost{tmp_path}/registry.git"


def test_empty_registry_url_is_refused():
    with pytest.raises(ValueError, match="registry_url is empty"):
        registry_namespace("  ")


@pytest.mark.parametrize("url", [
    "ssh://deploy:s3cr3tT0ken@host:22/srv/registry.git",
    "ssh://s3cr3tT0ken@host/srv/registry.git",
    "https://deploy:s3cr3tT0ken@git.example.org/org/registry.git",
    "https://oauth2:s3cr3tT0ken@git.example.org:8443/org/registry.git?private_token=s3cr3tT0ken",
    "https://git.example.org/org/registry.git#s3cr3tT0ken",
    "s3cr3tT0ken@host:srv/registry.git",
])
def test_credentials_never_reach_the_lineage(url):
    for result in (version_lineage(sql="SELECT id FROM t", source=SOURCE, registry_url=url, event=EVENT),
                   train_lineage(registry_url=url, pulled=EVENT)):
        text = json.dumps([to_dict(d) for d in result.inputs + result.outputs])
        text += json.dumps({k: to_dict(v) for k, v in {**result.run_facets, **result.job_facets}.items()})
        assert "s3cr3tT0ken" not in text and "deploy" not in text and "oauth2" not in text


# ------------------------------------------------------------------ facets
def test_output_facets_carry_the_published_version():
    from openlineage.client.event_v2 import OutputDataset
    from openlineage.client.facet_v2 import DatasetFacet

    result = version_lineage(sql="SELECT id, item, price, at FROM raw.orders ORDER BY id", source=SOURCE,
                             registry_url=REGISTRY, event=EVENT)
    [output] = result.outputs
    assert isinstance(output, OutputDataset)
    assert (output.namespace, output.name) == ("dvc://registry.example.org/srv/registry.git", "shop")
    data = to_dict(output)
    assert data["facets"]["schema"]["fields"] == [
        {"name": "id", "type": "INT", "fields": []}, {"name": "item", "type": "VARCHAR", "fields": []},
        {"name": "price", "type": "DECIMAL", "fields": []}, {"name": "at", "type": "DATETIME", "fields": []},
    ]
    assert "SchemaDatasetFacet.json" in data["facets"]["schema"]["_schemaURL"]
    assert data["facets"]["version"]["datasetVersion"] == "v20240502T000000"
    assert "DatasetVersionDatasetFacet.json" in data["facets"]["version"]["_schemaURL"]
    dvc = data["facets"]["dvcDatasetVersion"]
    assert dvc.pop("_producer").startswith("https://")
    assert dvc.pop("_schemaURL") == lineage.DVC_FACET_SCHEMA_URL
    assert dvc == {k: EVENT[k] for k in lineage.DVC_FACET_FIELDS}
    assert isinstance(output.facets["dvcDatasetVersion"], DatasetFacet)
    stats = {k: v for k, v in data["outputFacets"]["outputStatistics"].items() if not k.startswith("_")}
    assert stats == {"rowCount": 3, "size": 97, "fileCount": 1}


def test_custom_facet_matches_its_published_json_schema_and_pickles():
    import jsonschema

    facet = version_lineage(sql="SELECT 1 FROM t", source=SOURCE, registry_url=REGISTRY,
                            event=EVENT).outputs[0].facets["dvcDatasetVersion"]
    body = lineage.DVC_FACET_JSON_SCHEMA["$defs"]["DvcDatasetVersionDatasetFacet"]["allOf"][1]
    jsonschema.validate(to_dict(facet), body)
    assert set(body["properties"]) == set(lineage.DVC_FACET_FIELDS)
    assert type(facet) is lineage.DvcDatasetVersionDatasetFacet
    assert pickle.loads(pickle.dumps(facet)) == facet


def test_schema_facet_tolerates_missing_types_and_is_left_out_without_columns():
    event = {**EVENT, "column_types": ["INT"]}
    fields = to_dict(version_lineage(sql="SELECT 1 FROM t", source=SOURCE, registry_url=REGISTRY,
                                     event=event).outputs[0])["facets"]["schema"]["fields"]
    assert fields == [{"name": "id", "type": "INT", "fields": []}, {"name": "item", "fields": []},
                      {"name": "price", "fields": []}, {"name": "at", "fields": []}]
    no_columns = {k: v for k, v in EVENT.items() if k not in ("columns", "column_types")}
    out = version_lineage(sql="SELECT 1 FROM t", source=SOURCE, registry_url=REGISTRY, event=no_columns).outputs[0]
    assert "schema" not in out.facets and "dvcDatasetVersion" in out.facets


def test_train_lineage_input_is_the_same_dataset_version():
    from openlineage.client.event_v2 import InputDataset

    pulled = {k: EVENT[k] for k in ("project", "version", "tag", "md5", "rows", "bytes", "commit", "output")}
    result = train_lineage(registry_url="ssh://git@registry.example.org/srv/registry.git", pulled=pulled)
    published = version_lineage(sql="SELECT 1 FROM t", source=SOURCE, registry_url=REGISTRY, event=EVENT).outputs[0]
    assert result.outputs == []
    [dataset] = result.inputs
    assert isinstance(dataset, InputDataset)
    assert (dataset.namespace, dataset.name) == (published.namespace, published.name)
    data = to_dict(dataset)
    assert data["facets"]["version"]["datasetVersion"] == "v20240502T000000"
    dvc = {k: v for k, v in data["facets"]["dvcDatasetVersion"].items() if not k.startswith("_")}
    assert dvc == {k: pulled[k] for k in lineage.DVC_FACET_FIELDS if k in pulled}  # no window: not pulled
    assert "schema" not in data["facets"]
    assert data["inputFacets"]["inputStatistics"]["rowCount"] == 3
    assert data["inputFacets"]["inputStatistics"]["size"] == 97
    # an unknown row count (older tags) is left out, not a crash
    assert to_dict(train_lineage(registry_url=REGISTRY, pulled={**pulled, "rows": None}).inputs[0]
                   )["facets"]["dvcDatasetVersion"].get("rows") is None


def test_lineage_serializes_into_a_run_event():
    """What the file/HTTP transports do with it: a complete RunEvent must serialize."""
    import datetime
    import uuid

    from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
    from openlineage.client.serde import Serde

    result = version_lineage(sql="SELECT id FROM raw.orders", source=SOURCE, registry_url=REGISTRY, event=EVENT)
    event = RunEvent(eventType=RunState.COMPLETE, eventTime=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                     run=Run(runId=str(uuid.uuid4()), facets=result.run_facets),
                     job=Job(namespace="test", name="version_shop.publish_version", facets=result.job_facets),
                     inputs=result.inputs, outputs=result.outputs)
    data = json.loads(Serde.to_json(event))
    assert data["inputs"] == [{"namespace": "mysql://db.example.org:3307", "name": "raw.orders", "facets": {}}]
    assert data["outputs"][0]["facets"]["dvcDatasetVersion"]["md5"] == EVENT["md5"]


# ------------------------------------------------------------------ end to end: airflow dags test
def read_events(path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def complete_event(events: list[dict], job_name: str) -> dict:
    found = [e for e in events if e.get("eventType") == "COMPLETE" and e["job"]["name"] == job_name]
    assert len(found) == 1, (job_name, [(e.get("eventType"), e["job"]["name"]) for e in events])
    return found[0]


@pytest.mark.slow
def test_dags_emit_openlineage_with_mysql_inputs_and_the_dataset_version(tmp_path, shop, mysql_db, registry):
    from test_dags_e2e import dags_test, model_db_rows

    db, _ = mysql_db
    ol_file = tmp_path / "ol.jsonl"
    env = {
        **shop,
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps({"type": "file", "log_file_path": str(ol_file), "append": True}),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "dsv-lineage-test",
        # the listener gives extraction + emission 10 s by default; a loaded test machine can need more
        "AIRFLOW__OPENLINEAGE__EXECUTION_TIMEOUT": "120",
    }
    proc = dags_test(env, {"start": "2024-05-01T00:00:00Z", "end": "2024-05-02T00:00:00Z"}, tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    tag = "shop/v20240502T000000"
    assert registry.tags() == [tag]
    [(version, md5, rows, size, commit)] = model_db_rows(
        shop, f"SELECT version, md5, rows, bytes, \"commit\" FROM dataset_versions WHERE tag = '{tag}'")
    assert commit == registry.git("rev-parse", f"{tag}^{{commit}}")

    events = read_events(ol_file)
    publish = complete_event(events, "version_shop.publish_version")
    assert publish["job"]["namespace"] == "dsv-lineage-test"
    assert publish["inputs"] == [{"namespace": "mysql://127.0.0.1:3306", "name": f"{db}.orders", "facets": {}}]
    [output] = publish["outputs"]
    namespace = registry_namespace(registry.repo_url)
    assert namespace.startswith("dvc://127.0.0.1:") and namespace.endswith("/registry.git")
    assert (output["namespace"], output["name"]) == (namespace, "shop")
    facets = output["facets"]
    assert [(f["name"], f.get("type")) for f in facets["schema"]["fields"]] == [
        ("id", "INT"), ("item", "VARCHAR"), ("price", "DECIMAL"), ("at", "DATETIME")]
    assert facets["version"]["datasetVersion"] == version == "v20240502T000000"
    dvc = {k: v for k, v in facets["dvcDatasetVersion"].items() if not k.startswith("_")}
    assert dvc == {"version": version, "tag": tag, "md5": md5, "rows": rows, "bytes": size, "commit": commit,
                   "window_start": "2024-05-01T00:00:00+00:00", "window_end": "2024-05-02T00:00:00+00:00",
                   "output": "orders.csv"}
    assert rows == 3
    assert facets["dvcDatasetVersion"]["_schemaURL"] == lineage.DVC_FACET_SCHEMA_URL
    assert output["outputFacets"]["outputStatistics"]["rowCount"] == 3
    assert publish["job"]["facets"]["sql"]["query"].lstrip().startswith(f"SELECT id, item, price, at FROM {db}.orders")
    text = ol_file.read_text()
    assert str(registry.conn_extra["key_file"]) not in text

    proc = dags_test(env, {"version": version}, tmp_path, "train_shop")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    train = complete_event(read_events(ol_file), "train_shop.train_model")
    assert train["outputs"] == []
    [dataset] = train["inputs"]
    assert (dataset["namespace"], dataset["name"]) == (namespace, "shop")
    assert dataset["facets"]["version"]["datasetVersion"] == version
    pulled = {k: v for k, v in dataset["facets"]["dvcDatasetVersion"].items() if not k.startswith("_")}
    assert {k: pulled.get(k) for k in ("version", "tag", "md5", "rows", "bytes", "commit", "output")} == {
        "version": version, "tag": tag, "md5": md5, "rows": rows, "bytes": size, "commit": commit,
        "output": "orders.csv"}
