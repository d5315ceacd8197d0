"""Validation of every user-supplied name before it reaches git, DVC, a path or a shell.

The rules are the contract's; messages name the input, the rule and what to do.
"""
from __future__ import annotations

import re

PROJECT_RULE = r"^[a-z][a-z0-9_-]{0,39}$"
VERSION_RULE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# VERSION_RULE for trigger-form Params: jsonschema checks patterns with Python's re.search, where "$"
# also matches before a trailing "\n" ("v1\n" would pass); "(?![\s\S])" means end of text in both
# Python and JavaScript (the UI) regexes.
VERSION_PARAM_PATTERN = VERSION_RULE[:-1] + r"(?![\s\S])"
# What an unset value renders as in a template ("{{ params.version }}"): never a real version.
RESERVED_VERSIONS = frozenset({"None"})
# An output file name: one path component, no leading dot or dash, ends in a letter/digit.
OUTPUT_RULE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"

_PROJECT = re.compile(PROJECT_RULE)
_VERSION = re.compile(VERSION_RULE)
_OUTPUT = re.compile(OUTPUT_RULE)


class InvalidNameError(ValueError):
    """A project, version or file name that breaks its rule."""


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check(kind: str, value: object, pattern: re.Pattern, rule: str, hint: str) -> str:
    # fullmatch on a str only: rejects None, bytes, NUL bytes, unicode look-alikes, trailing "\n".
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidNameError(f"invalid {kind} {_describe(value)}: it must match {rule} ({hint})")
    return value


def validate_project(name: object) -> str:
    return _check("project name", name, _PROJECT, PROJECT_RULE,
                  "lowercase ASCII letter first, then up to 39 of a-z 0-9 _ -")


def validate_version(name: object) -> str:
    value = _check("version", name, _VERSION, VERSION_RULE,
                   "ASCII letter or digit first, then up to 63 of A-Z a-z 0-9 . _ -")
    if value in RESERVED_VERSIONS:
        raise InvalidNameError(
            f"invalid version {_describe(value)}: reserved (it is what an unset value renders as); choose another name"
        )
    if ".." in value or value.endswith((".", ".lock")):
        # git refuses these in ref names; say so before git does.
        raise InvalidNameError(
            f"invalid version {_describe(value)}: git tags may not contain '..' or end in '.' or '.lock'"
        )
    return value


def validate_output(name: object) -> str:
    value = _check("output file name", name, _OUTPUT, OUTPUT_RULE,
                   "one file name such as train.csv, no folders, no leading dot or dash")
    if ".." in value or value.endswith((".dvc", ".lock")) or value == "dvc.yaml":
        raise InvalidNameError(f"invalid output file name {_describe(value)}: reserved by git or DVC")
    return value


def tag_name(project: str, version: str) -> str:
    """The registry tag of a project version: ``<project>/<version>``."""
    return f"{validate_project(project)}/{validate_version(version)}"
