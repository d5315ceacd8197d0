"""The effective time window of a run: explicit ``start``/``end`` bounds win over the scheduled interval.

(The operator feeds its trigger params in as the bounds and adds that context to the errors.)"""
from __future__ import annotations

from datetime import datetime, timezone


class WindowError(ValueError):
    """Bad or missing window bounds; the message says which param and what to give."""


class SqlDateTime(datetime):
    """A UTC datetime that prints as MySQL does (``2024-01-02 03:04:05``), so
    ``'{{ data_interval_start }}'`` in a query compares correctly with DATETIME/TIMESTAMP columns.
    Filters such as ``ds_nodash`` / ``ts_nodash`` still work (it is a datetime)."""

    def __str__(self) -> str:
        fmt = "%Y-%m-%d %H:%M:%S.%f" if self.microsecond else "%Y-%m-%d %H:%M:%S"
        return self.strftime(fmt)

    __format__ = datetime.__format__

    @classmethod
    def of(cls, value: datetime) -> "SqlDateTime":
        value = value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return cls(value.year, value.month, value.day, value.hour, value.minute, value.second,
                   value.microsecond, tzinfo=timezone.utc)


def parse_bound(name: str, value: object) -> datetime | None:
    """An ISO-8601 datetime param; naive values are taken as UTC. Empty/None -> None."""
    if value is None or (isinstance(value, str) and not value.strip()) or value == "None":
        return None
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or len(value) > 64:
        raise WindowError(f"window bound {name!r}: expected an ISO datetime such as 2024-01-31T00:00:00Z, got {value!r:.80}")
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise WindowError(
            f"window bound {name!r}: {value!r} is not an ISO datetime (use e.g. 2024-01-31T00:00:00Z)"
        ) from None


def effective_window(start_param, end_param, interval_start, interval_end) -> tuple[SqlDateTime, SqlDateTime]:
    start = parse_bound("start", start_param) or interval_start
    end = parse_bound("end", end_param) or interval_end
    if start is None or end is None:
        raise WindowError(
            "no window: there is no scheduled interval (a manual run of an unscheduled project), so give both "
            "'start' and 'end' (ISO datetimes, the window is [start, end))"
        )
    start, end = SqlDateTime.of(start), SqlDateTime.of(end)
    if not start < end:
        raise WindowError(
            f"empty or inverted window [{start}, {end}): 'start' must be before 'end' "
            "(for a scheduled run with Airflow's zero-width cron interval, give start and end)"
        )
    return start, end


class TemplateError(ValueError):
    """A project template (query or version template) that cannot be rendered; says what is available."""


TEMPLATE_NAMES = ("data_interval_start", "data_interval_end", "window_start", "window_end", "params")
TEMPLATE_FILTERS = {
    "ds": lambda v: v.strftime("%Y-%m-%d"),
    "ds_nodash": lambda v: v.strftime("%Y%m%d"),
    "ts": lambda v: v.isoformat(),
    "ts_nodash": lambda v: v.strftime("%Y%m%dT%H%M%S"),
    "ts_nodash_with_tz": lambda v: v.isoformat().replace("-", "").replace(":", ""),
}


def render_window_template(text: str, start: SqlDateTime, end: SqlDateTime, params: dict | None = None,
                           what: str = "template") -> str:
    """Render a project's query or version template with ONLY the effective window and the trigger
    params, in a strict, immutable Jinja sandbox.

    Why not Airflow's task context: a project YAML is untrusted input, and the context holds ``conn``
    and ``var``, so ``SELECT '{{ conn.dvc_registry.password }}'`` would copy a secret into the
    published data or a tag name, where no log masker sees it.
    """
    from jinja2 import StrictUndefined, TemplateError as JinjaError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.filters.update(TEMPLATE_FILTERS)
    values = {"data_interval_start": start, "data_interval_end": end, "window_start": start, "window_end": end,
              "params": {k: v for k, v in (params or {}).items() if isinstance(v, (str, int, float, bool, type(None)))}}
    try:
        return env.from_string(text).render(values)
    except JinjaError as exc:
        raise TemplateError(
            f"the project's {what} cannot be rendered: {exc}. Available: {', '.join(TEMPLATE_NAMES)} and the "
            f"filters {', '.join(TEMPLATE_FILTERS)} (a project template never sees Airflow connections, "
            "variables or the task context)"
        ) from None
