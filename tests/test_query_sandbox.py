"""The query never reaches Airflow's own Jinja renderer (whose context holds ``conn`` and ``var``), on
every path Airflow renders by: a plain task, a mapped task (``.partial().expand()``, rendered through
``_do_render_template_fields`` of the unmapped task), and ``.sql`` file loading of other fields."""
from datetime import datetime, timezone

from airflow.sdk import DAG

from dataset_registry.operators.sandboxed_query import SandboxedQuery
from dataset_registry.operators.version_dataset import VersionDatasetOperator

HOSTILE = "SELECT '{{ conn_secret }}' AS leak"
CONTEXT = {"conn_secret": "s3cr3t-password", "params": {}}


def _dag(tmp_path):
    return DAG("sandbox_probe", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
               template_searchpath=[str(tmp_path)])


def test_plain_task_leaves_the_query_to_the_sandbox(tmp_path):
    with _dag(tmp_path):
        op = VersionDatasetOperator(task_id="p", project="p", output_file="o.csv", query=HOSTILE, version="{{ 'v' ~ 1 }}")
    op.render_template_fields(dict(CONTEXT))
    assert isinstance(op.query, SandboxedQuery) and str(op.query) == HOSTILE
    assert op.version == "v1"  # the other fields are Airflow templates as before


def test_mapped_task_leaves_the_query_to_the_sandbox(tmp_path):
    with _dag(tmp_path):
        mapped = VersionDatasetOperator.partial(task_id="m", project="p", output_file="o.csv", query=HOSTILE).expand(
            version=["v1", "v2"])
    unmapped = mapped.unmap({"version": "v1"})
    unmapped._do_render_template_fields(unmapped, mapped.template_fields, dict(CONTEXT), unmapped.get_template_env(), set())
    assert str(unmapped.query) == HOSTILE and "s3cr3t" not in str(unmapped.query)


def test_mapped_query_values_are_sandboxed_too(tmp_path):
    with _dag(tmp_path):
        mapped = VersionDatasetOperator.partial(task_id="m", project="p", output_file="o.csv").expand(query=[HOSTILE])
    unmapped = mapped.unmap({"query": HOSTILE})
    unmapped._do_render_template_fields(unmapped, mapped.template_fields, dict(CONTEXT), unmapped.get_template_env(), set())
    assert str(unmapped.query) == HOSTILE


def test_a_field_ending_in_sql_is_not_loaded_or_rendered_as_a_file(tmp_path):
    (tmp_path / "x.sql").write_text("{{ conn_secret | reverse }}")
    with _dag(tmp_path) as dag:
        op = VersionDatasetOperator(task_id="o", project="p", output_file="x.sql", query="sql/q.sql")
    dag.resolve_template_files()
    op.render_template_fields(dict(CONTEXT))
    assert op.output_file == "x.sql"


def test_a_sql_query_file_comes_from_template_searchpath_only(tmp_path):
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "q.sql").write_text("SELECT 1 -- {{ data_interval_end }}\n")
    with _dag(tmp_path) as dag:
        op = VersionDatasetOperator(task_id="q", project="p", output_file="o.csv", query="sql/q.sql")
        outside = VersionDatasetOperator(task_id="r", project="p", output_file="o.csv", query="../etc/passwd.sql")
    dag.resolve_template_files()
    assert str(op.query) == "SELECT 1 -- {{ data_interval_end }}\n"  # loaded, not rendered
    assert str(outside.query) == "../etc/passwd.sql"  # jinja's loader refuses to leave the searchpath
