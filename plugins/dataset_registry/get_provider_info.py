"""What Airflow's ProvidersManager reads from the ``apache_airflow_provider`` entry point.

Kept import-free (Airflow loads it without importing hooks): the ``dvc_registry`` connection form is
declared here, as the official providers declare theirs (``conn-fields`` / ``ui-field-behaviour``,
Airflow >= 3.2), and ``REGISTRY_CONN_FIELDS`` is also the list of extra keys the hook accepts, so the
form and the validation cannot drift apart.
"""
from __future__ import annotations

from dataset_registry import __version__

REGISTRY_CONN_FIELDS: dict[str, dict] = {
    "repo_url": {
        "label": "Registry git repository",
        "schema": {"type": ["string", "null"]},
        "description": "git URL or local path of the shared registry repository, "
                       "e.g. ssh://git@host:22/srv/registry.git (a token in an https URL is taken out and given "
                       "through askpass, never written to .git/config).",
    },
    "remote_url": {
        "label": "DVC remote",
        "schema": {"type": ["string", "null"]},
        "description": "where the data lives: ssh://[user@]host[:port]/path, s3://bucket/prefix or a local path.",
    },
    "remote_conn_id": {
        "label": "S3 credentials connection",
        "schema": {"type": ["string", "null"]},
        "description": "for an s3:// remote: the id of an 'aws' connection (access key id in login, secret in "
                       "password; endpoint_url, region_name, aws_session_token in its extra). Empty: the worker's "
                       "own AWS credentials (AWS_* variables, ~/.aws, instance role).",
    },
    "branch": {
        "label": "Branch",
        "schema": {"type": ["string", "null"], "default": "main"},
        "description": "registry branch that versions are committed to.",
    },
    "key_file": {
        "label": "SSH private key file",
        "schema": {"type": ["string", "null"]},
        "description": "path on the worker, e.g. /keys/id_ed25519 (the key itself never goes into the connection).",
    },
    "known_hosts": {
        "label": "known_hosts file",
        "schema": {"type": ["string", "null"]},
        "description": "path on the worker; host keys are checked against it.",
    },
    "no_host_key_check": {
        "label": "Skip SSH host-key check (unsafe)",
        "schema": {"type": ["boolean", "null"], "default": False},
        "description": "only for throwaway test hosts: accepts any host key.",
    },
    "work_dir": {
        "label": "Worker directory",
        "schema": {"type": ["string", "null"]},
        "description": "absolute path for the per-worker clone and DVC cache "
                       "(default $DATASET_WORK_DIR or $AIRFLOW_HOME/dataset-registry).",
    },
    "publish_timeout": {
        "label": "Publish timeout (seconds)",
        "schema": {"type": ["integer", "null"], "default": 900},
        "description": "how long a publish may keep losing push races to other publishers before it fails.",
    },
}

REGISTRY_FIELD_BEHAVIOUR = {
    "hidden-fields": ["host", "port", "schema"],
    "relabeling": {"login": "SSH user", "password": "SSH password"},
    "placeholders": {"login": "git (or the user in the URLs)", "password": "only for password logins"},
}


def get_provider_info() -> dict:
    return {
        "package-name": "airflow-provider-dataset-registry",
        "name": "Dataset Registry",
        "description": "Scheduled dataset versioning: a MySQL time window -> CSV -> DVC registry "
                       "(one immutable git tag per version) -> model DB lineage.",
        "versions": [__version__],
        "integrations": [{"integration-name": "DVC dataset registry", "external-doc-url": "https://dvc.org/",
                          "tags": ["software"]}],
        "hooks": [{
            "integration-name": "DVC dataset registry",
            "python-modules": [
                "dataset_registry.hooks.registry_hook",
                "dataset_registry.hooks.mysql_source_hook",
                "dataset_registry.hooks.model_db_hook",
                "dataset_registry.hooks.mlflow_hook",
            ],
        }],
        "operators": [{
            "integration-name": "DVC dataset registry",
            "python-modules": [
                "dataset_registry.operators.version_dataset",
                "dataset_registry.operators.record_version",
                "dataset_registry.operators.pull_dataset",
                "dataset_registry.operators.train_model",
            ],
        }],
        "connection-types": [{
            "hook-class-name": "dataset_registry.hooks.registry_hook.DvcRegistryHook",
            "hook-name": "DVC dataset registry",
            "connection-type": "dvc_registry",
            "conn-fields": REGISTRY_CONN_FIELDS,
            "ui-field-behaviour": REGISTRY_FIELD_BEHAVIOUR,
        }],
        "plugins": [{"name": "dataset_registry", "plugin-class": "dataset_registry.plugin.DatasetRegistryPlugin"}],
    }
