"""SandboxedQuery: a query template that Airflow's own renderer leaves alone.

Airflow renders strings, collections and objects that declare ``template_fields``; anything else
it keeps as it is and shows with ``str()``. Holding the query in this object (not a ``str``) keeps
it out of Airflow's renderer on every path: plain tasks, mapped tasks (``.partial().expand()``,
which render through the MappedOperator, not the operator's own ``render_template_fields``), and
``template_ext`` file loading. The operator renders it itself, with the window-only sandbox.
"""
from __future__ import annotations


class SandboxedQuery:
    """The query text; ``str()`` gives it back (the Rendered Template tab and DAG serialization use that)."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"SandboxedQuery({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SandboxedQuery) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)
