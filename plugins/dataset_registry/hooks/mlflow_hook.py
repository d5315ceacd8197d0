"""MlflowHook: an Airflow connection -> an MlflowTracker (``dataset_registry.mlflow_tracking``).

The connection (type ``http``): ``host`` is the tracking URI (``http://mlflow:5000``), or a bare host
name completed by ``schema`` (the scheme, default http) and ``port``; ``login``/``password`` are
MLflow's basic-auth user and password (what ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` would be), or
``extra.token`` a bearer token (``MLFLOW_TRACKING_TOKEN``). Optional extra: ``timeout`` (seconds per
HTTP request, default 30), ``max_retries`` (client-side retries per request, default 2; the task's
retries do the long waiting), ``server_cert_path`` (a CA bundle for https). Other extra keys are
refused, naming them, so a typo does not silently drop a setting. The secrets are registered with
Airflow's log masker and reach MLflow's client only during its calls (see ``mlflow_tracking``).
"""
from __future__ import annotations

from airflow.sdk import BaseHook

from dataset_registry.connection_ids import MLFLOW_CONN_ID
from dataset_registry.mlflow_tracking import (
    DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, MlflowTracker, MlflowTrackingError, TrackingSettings, build_tracking_uri,
)

EXTRA_KEYS = ("token", "timeout", "max_retries", "server_cert_path")


def _whole(conn_id: str, key: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit() \
            or not low <= int(value) <= high:
        raise MlflowTrackingError(f"connection {conn_id!r}: extra.{key} must be a whole number from {low} to {high}",
                                  retryable=False)
    return int(value)


ACCEPTED_CONN_TYPES = ("http", "https")


class MlflowHook(BaseHook):
    """An MLflow tracking server.

    :param mlflow_conn_id: an ``http`` connection whose host is the tracking URI (see the module
        docstring for the fields); default ``mlflow_default``.
    """

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = MLFLOW_CONN_ID
    conn_type = "http"
    hook_name = "MLflow tracking"

    def __init__(self, mlflow_conn_id: str = default_conn_name, **kwargs):
        super().__init__(**kwargs)
        self.mlflow_conn_id = mlflow_conn_id
        self._tracker: MlflowTracker | None = None

    def settings(self) -> TrackingSettings:
        """Read and check the connection. Raises MlflowTrackingError (not retryable) naming the field."""
        conn = self.get_connection(self.mlflow_conn_id)
        if conn.conn_type not in ACCEPTED_CONN_TYPES:  # never send another service's password to its host
            raise MlflowTrackingError(f"connection {self.mlflow_conn_id!r}: type {conn.conn_type!r} is not an MLflow "
                                      f"tracking connection: make it 'http' (host = the tracking URI)",
                                      retryable=False)
        extra = conn.extra_dejson or {}
        unknown = sorted(set(extra) - set(EXTRA_KEYS))
        if unknown:
            raise MlflowTrackingError(f"connection {self.mlflow_conn_id!r}: unknown extra key(s) {', '.join(unknown)} "
                                      f"(allowed: {', '.join(EXTRA_KEYS)})", retryable=False)
        token = extra.get("token") or None
        if token is not None and not isinstance(token, str):
            raise MlflowTrackingError(f"connection {self.mlflow_conn_id!r}: extra.token must be text", retryable=False)
        if token and conn.password:
            raise MlflowTrackingError(f"connection {self.mlflow_conn_id!r}: give either a password (basic auth) or "
                                      "extra.token (bearer), not both", retryable=False)
        from airflow.sdk.log import mask_secret

        for secret in (conn.password, token):
            if secret:
                mask_secret(secret)
        try:
            uri = build_tracking_uri(conn.host, conn.schema, conn.port)
        except ValueError as exc:
            raise MlflowTrackingError(f"connection {self.mlflow_conn_id!r}: {exc}", retryable=False) from None
        cert = extra.get("server_cert_path") or None
        if cert is not None and not isinstance(cert, str):
            raise MlflowTrackingError(f"connection {self.mlflow_conn_id!r}: extra.server_cert_path must be a path",
                                      retryable=False)
        return TrackingSettings(
            uri=uri, username=conn.login or None, password=conn.password or None, token=token,
            timeout=_whole(self.mlflow_conn_id, "timeout", extra.get("timeout", DEFAULT_TIMEOUT), 1, 3600),
            max_retries=_whole(self.mlflow_conn_id, "max_retries", extra.get("max_retries", DEFAULT_MAX_RETRIES), 0, 10),
            server_cert_path=cert,
        )

    def get_conn(self) -> MlflowTracker:
        """The tracker for this connection (built once per hook; no network call yet)."""
        if self._tracker is None:
            tracker = MlflowTracker(self.settings())
            tracker.check_client()
            self._tracker = tracker
        return self._tracker
