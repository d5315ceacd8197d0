"""MySqlSourceHook: the ``mysql_raw`` connection -> MySQLdb connect() arguments for streaming export.

Built on the official provider's ``MySqlHook``: its connection handling (``_get_conn_config_mysql_client``)
turns the Airflow Connection into MySQLdb arguments, so every field it honours is honoured here the
same way: login/password/host/port/schema, ``ssl`` (a dict or a JSON string), ``ssl_mode``
(``REQUIRED``, ``VERIFY_CA``, ...), ``unix_socket``, AWS IAM (``iam``). This hook adds
``connect_timeout`` from the extra; the export then overrides only what it needs (charset utf8mb4,
use_unicode, raw text converters, an unbuffered cursor: see ``mysql_export.connect``), so the
extra's ``charset`` and ``cursor`` have no effect on exports.
"""
from __future__ import annotations

from typing import Any

from airflow.providers.mysql.hooks.mysql import MySqlHook

from dataset_registry.connection_ids import MYSQL_CONN_ID


class MySqlSourceHook(MySqlHook):
    """The raw-data source, read-only and streamed (see ``mysql_export``).

    :param mysql_conn_id: a ``mysql`` connection; default ``mysql_raw``.
    """

    conn_name_attr = "mysql_conn_id"
    default_conn_name = MYSQL_CONN_ID
    conn_type = "mysql"
    hook_name = "MySQL raw-data source"

    def __init__(self, mysql_conn_id: str = default_conn_name, **kwargs):
        super().__init__(mysql_conn_id=mysql_conn_id, **kwargs)
        self.mysql_conn_id = mysql_conn_id

    def connect_params(self) -> dict[str, Any]:
        """MySQLdb.connect() keyword arguments exactly as MySqlHook builds them (plus ``connect_timeout``).

        ``mysql_export.connect`` overrides charset/use_unicode/conv/cursorclass and drops local_infile.
        """
        conn = self.get_connection(self.get_conn_id())
        extra = conn.extra_dejson or {}
        client = extra.get("client", "mysqlclient")
        if client != "mysqlclient":
            raise ValueError(
                f"connection {self.mysql_conn_id!r} asks for client {client!r}: the export streams with "
                "mysqlclient only; remove 'client' from the connection's extra"
            )
        params = self._get_conn_config_mysql_client(conn)
        if not params.get("db"):
            params.pop("db", None)
        if extra.get("connect_timeout"):
            params["connect_timeout"] = int(extra["connect_timeout"])
        return params
