"""MySqlSourceHook: the ``mysql_raw`` connection -> MySQLdb connect() arguments for streaming export.

MySqlHook's own connection factory sets converters and a buffered cursor; the export needs raw
text values and an unbuffered cursor, so this hook only translates the Connection.
"""
from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook


class MySqlSourceHook(BaseHook):
    conn_name_attr = "mysql_conn_id"
    default_conn_name = "mysql_raw"
    conn_type = "mysql"
    hook_name = "MySQL raw-data source"

    def __init__(self, mysql_conn_id: str = default_conn_name, **kwargs):
        super().__init__(**kwargs)
        self.mysql_conn_id = mysql_conn_id

    def connect_params(self) -> dict[str, Any]:
        conn = self.get_connection(self.mysql_conn_id)
        extra = conn.extra_dejson or {}
        params: dict[str, Any] = {"host": conn.host or "localhost", "user": conn.login or "", "passwd": conn.password or ""}
        if conn.port:
            params["port"] = int(conn.port)
        if conn.schema:
            params["db"] = conn.schema
        if extra.get("unix_socket"):
            params["unix_socket"] = extra["unix_socket"]
        if isinstance(extra.get("ssl"), dict):
            params["ssl"] = extra["ssl"]
        if extra.get("connect_timeout"):
            params["connect_timeout"] = int(extra["connect_timeout"])
        return params
