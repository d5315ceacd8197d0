"""RecordDatasetVersionOperator: write the published version (the publish task's XCom) to the
model DB's ``dataset_versions``. Idempotent: a rerun finds the row and changes nothing."""
from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk import BaseOperator


class RecordDatasetVersionOperator(BaseOperator):
    template_fields: Sequence[str] = ("publish_task_id",)
    ui_color = "#e8f8f5"

    def __init__(self, *, publish_task_id: str = "publish_version", model_db_conn_id: str = "model_db", **kwargs: Any):
        super().__init__(**kwargs)
        self.publish_task_id = publish_task_id
        self.model_db_conn_id = model_db_conn_id

    def execute(self, context) -> int:
        from dataset_registry.hooks.model_db_hook import ModelDbHook

        event = context["ti"].xcom_pull(task_ids=self.publish_task_id)
        if not event:
            raise ValueError(f"task {self.publish_task_id!r} returned nothing to record")
        db = ModelDbHook(self.model_db_conn_id).get_conn()
        row_id = db.record_dataset_version(
            project=event["project"], version=event["version"], tag=event["tag"], md5=event["md5"],
            rows=event["rows"], bytes=event["bytes"], commit=event["commit"],
        )
        self.log.info("dataset_versions row %s records %s (md5 %s)", row_id, event["tag"], event["md5"])
        return row_id
