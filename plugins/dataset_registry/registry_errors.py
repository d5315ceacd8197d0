"""The registry's errors, shared by all its parts.

They speak of the registry itself (its repository, remote, settings and versions); whoever reads
the settings from somewhere (an Airflow connection, in the hook) adds where they came from.
"""
from __future__ import annotations


class RegistryError(RuntimeError):
    """Publishing or reading the registry failed; nothing half-published is left visible."""


class VersionConflictError(RegistryError):
    """The tag exists with different content; tags are immutable."""


class VersionNotFoundError(RegistryError):
    """No such tag in the registry."""


class PublishDeadlineError(RegistryError):
    """The publish kept losing push races until its deadline; its proposal stays and may still land."""
