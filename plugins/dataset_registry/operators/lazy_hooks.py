"""Hooks as lazy, injectable operator attributes, the way the official providers hold them.

``registry_hook = lazy_hook(REGISTRY_HOOK, "registry_conn_id")`` builds the hook on first use (the
hook module is imported then, never at DAG parse time); an operator given an already built hook
stores it under the same name, which wins over the lazy one.
"""
from __future__ import annotations

import importlib
from functools import cached_property

REGISTRY_HOOK = "dataset_registry.hooks.registry_hook.DvcRegistryHook"
MYSQL_HOOK = "dataset_registry.hooks.mysql_source_hook.MySqlSourceHook"
MODEL_DB_HOOK = "dataset_registry.hooks.model_db_hook.ModelDbHook"
MLFLOW_HOOK = "dataset_registry.hooks.mlflow_hook.MlflowHook"


def lazy_hook(hook_class: str, conn_id_attr: str) -> cached_property:
    """A cached property building ``hook_class(self.<conn_id_attr>)`` when first read."""
    def build(self):
        module, _, name = hook_class.rpartition(".")
        return getattr(importlib.import_module(module), name)(getattr(self, conn_id_attr))

    build.__doc__ = f"The {hook_class.rsplit('.', 1)[-1]} of ``{conn_id_attr}`` (or the one given to the operator)."
    return cached_property(build)


def inject_hooks(operator, **hooks) -> None:
    """Store the hooks the caller built itself (None: build lazily from the connection id)."""
    for name, hook in hooks.items():
        if hook is not None:
            setattr(operator, name, hook)
