"""RecordDatasetVersionOperator: write a published version to the model DB's ``dataset_versions``.

It receives the publish task's result through its output (``published=publish.output``), so the
dependency is the data itself, not a task-id string. Idempotent: a rerun finds the row and changes nothing.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from dataset_registry.connection_ids import MODEL_DB_CONN_ID
from dataset_registry.operators.lazy_hooks import MODEL_DB_HOOK, inject_hooks, lazy_hook

if TYPE_CHECKING:
    from dataset_registry.hooks.model_db_hook import ModelDbHook

RECORD_KEYS = ("project", "version", "tag", "md5", "rows", "bytes", "commit")
OPTIONAL_KEYS = ("window_start", "window_end", "columns", "profile")  # recorded when the event has them


def version_record(event: Any) -> dict[str, Any]:
    """The ``dataset_versions`` fields of a publish result or a pulled version; missing required ones fail."""
    missing = [k for k in RECORD_KEYS if not isinstance(event, dict) or k not in event]
    if missing:
        raise AirflowFailException(f"the publish result lacks {', '.join(missing)}: got {event!r:.300}")
    return {**{k: event[k] for k in RECORD_KEYS}, **{k: event[k] for k in OPTIONAL_KEYS if event.get(k) is not None}}


class RecordDatasetVersionOperator(BaseOperator):
    """Record one published version (``project``, ``version``, ``tag``, ``md5``, ``rows``, ``bytes``, ``commit``,
    and when the result carries them ``window_start``, ``window_end``, ``columns``, ``profile``).

    :param published: the publish result, usually ``VersionDatasetOperator(...).output``. (templated)
    :param model_db_conn_id: the model DB connection; default ``model_db``.
    :param model_db_hook: an already built ModelDbHook to use instead of ``model_db_conn_id``.
    """

    template_fields: Sequence[str] = ("published",)
    ui_color = "#e8f8f5"

    def __init__(self, *, published: Any, model_db_conn_id: str = MODEL_DB_CONN_ID,
                 model_db_hook: ModelDbHook | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.published = published
        self.model_db_conn_id = model_db_conn_id
        inject_hooks(self, model_db_hook=model_db_hook)

    model_db_hook = lazy_hook(MODEL_DB_HOOK, "model_db_conn_id")

    def execute(self, context) -> int:
        event = self.published
        row_id = self.model_db_hook.get_conn().record_dataset_version(**version_record(event))
        self.log.info("dataset_versions row %s records %s (md5 %s)", row_id, event["tag"], event["md5"])
        return row_id
