"""Which ``module:function`` a project YAML may name, and importing it from exactly that file.

A YAML file alone must not be able to run arbitrary code on workers: ``preprocess: os:system`` or
``train: subprocess:call`` name importable callables, but not *project* code. So a callable must be
defined in a ``.py`` file under the include root (the parent folder of the projects folder), found
without importing anything: ``a.b`` is ``<include>/a/b/__init__.py`` or ``<include>/a/b.py``, and
its real path (symlinks resolved) stays inside the include root. Modules installed elsewhere are
allowed only when listed in ``$DATASET_ALLOWED_CALLABLE_MODULES`` (comma-separated names, or
prefixes ending in ``.``). The same rule runs at DAG parse time (a config error) and at run time
(before importing). No Airflow here: the operators and the config validator both use it.

``train`` may instead name a Jupyter notebook (``training/flights.ipynb``): a path relative to the
include root that must stay inside it (``resolve_notebook_file``), for the same reason.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

ALLOW_ENV = "DATASET_ALLOWED_CALLABLE_MODULES"
CALLABLE_RULE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
_CALLABLE = re.compile(CALLABLE_RULE)
NOTEBOOK_RULE = ("a notebook is a .ipynb path relative to the include root (e.g. 'training/flights.ipynb'), "
                 "without '..', and must stay inside the include root (no absolute path, no link out of it)")
MAX_NOTEBOOK_BYTES = 16 * 1024 * 1024

# Top-level modules this module imported from a project file, by name: lets one process load
# `shoptrain` from two include roots (tests) without reusing the first copy. Only entries made here
# are ever dropped from sys.modules, and only single-file top-level modules.
_LOADED: dict[str, Path] = {}


class UserCodeError(ValueError):
    """A ``module:function`` that breaks the rule or cannot be loaded; the message says why."""


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_callable_spec(spec: object) -> tuple[str, str]:
    """``"a.b:f"`` -> ``("a.b", "f")``; anything else raises UserCodeError naming the format."""
    if not isinstance(spec, str) or len(spec) > 300 or not _CALLABLE.fullmatch(spec):
        raise UserCodeError(f"{_describe(spec)} is not 'module:function' (e.g. 'preprocess.demo:clean')")
    module, _, func = spec.partition(":")
    return module, func


def allowed_modules(environ: dict | None = None) -> tuple[str, ...]:
    """The explicit allow-list from ``$DATASET_ALLOWED_CALLABLE_MODULES`` (default: empty)."""
    raw = (os.environ if environ is None else environ).get(ALLOW_ENV) or ""
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def is_allowed_module(module: str, allow: Iterable[str]) -> bool:
    """True if ``module`` is listed exactly, or starts with a listed prefix that ends in ``.``."""
    return any(module == item or (item.endswith(".") and module.startswith(item)) for item in allow)


def _module_file(module: str, root: Path) -> Path | None:
    """Where the import system would find ``module`` under ``root`` (package first), or None."""
    base = root.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_name(base.name + ".py")):
        if candidate.is_file():
            return candidate
    return None


def resolve_user_callable_file(spec: str, include_root: str | Path,
                               allow: Iterable[str] | None = None) -> Path | None:
    """The real path of the file that must define ``spec``, without importing anything.

    Returns None when the module is not under the include root but is on the allow-list (it is then
    imported by name). ``allow`` defaults to ``$DATASET_ALLOWED_CALLABLE_MODULES``. Raises
    UserCodeError with the rule otherwise.
    """
    module, _ = parse_callable_spec(spec)
    if not include_root:
        raise UserCodeError(f"callable {spec!r}: no include root given to look for it in")
    allow = allowed_modules() if allow is None else tuple(allow)
    root = Path(include_root).resolve()
    found = _module_file(module, root)
    if found is not None:
        real = found.resolve()
        if real.is_relative_to(root):
            _refuse_unsafe(spec, module, root, real)
            return real
        if not is_allowed_module(module, allow):
            raise UserCodeError(
                f"callable {spec!r}: {found} is a link to {real}, outside the include root {root}; "
                "keep project code as real files under the include root"
            )
    if is_allowed_module(module, allow):
        return None
    example = "preprocess/demo.py -> preprocess.demo:clean"
    raise UserCodeError(
        f"callable {spec!r}: no file {root / Path(*module.split('.'))}.py (or .../__init__.py); callables "
        f"must be defined in a module under {root}, e.g. {example} (installed modules only if listed "
        f"in ${ALLOW_ENV})"
    )


def _refuse_unsafe(spec: str, module: str, root: Path, real: Path) -> None:
    """A project module that would not be the one imported, or that anybody could have written."""
    import importlib.util

    top = module.split(".")[0]
    if top in sys.stdlib_module_names:
        raise UserCodeError(f"callable {spec!r}: the top-level name {top!r} is a Python standard-library module; "
                            "Python would import that instead of the project file: rename the project folder/file")
    try:
        other = importlib.util.find_spec(top)  # a top-level lookup imports nothing
    except (ImportError, ValueError):
        other = None
    origin = Path(other.origin).resolve() if other is not None and other.origin not in (None, "built-in", "frozen") \
        else None
    installed = origin is None or bool({"site-packages", "dist-packages"} & set(origin.parts))
    if other is not None and installed and not (origin and origin.is_relative_to(root)):
        raise UserCodeError(f"callable {spec!r}: an installed module {top!r} ({origin or 'built-in'}) has the same "
                            "name as the project's; it would shadow the project file: rename the project module")
    _refuse_world_writable(f"callable {spec!r}", root, real)


def _refuse_world_writable(what: str, root: Path, real: Path) -> None:
    for folder in (root, *[p for p in real.parents if p.is_relative_to(root) and p != root], real):
        if folder.stat().st_mode & 0o002:
            raise UserCodeError(f"{what}: {folder} is writable by every user of the machine, so anyone "
                                "could plant code there; make the include folder writable only by the deployment")


def looks_like_path(spec: object) -> bool:
    """True for a ``train`` value meant as a file (``training/x.ipynb``, ``x.ipynb``, ``a/b.py``), not
    ``module:function``."""
    return isinstance(spec, str) and ("/" in spec or "\\" in spec or spec.endswith(".ipynb")
                                      or (":" not in spec and bool(re.search(r"\.[A-Za-z0-9]+$", spec))))


def resolve_notebook_file(spec: object, include_root: str | Path) -> Path:
    """The real path of the notebook ``spec`` names, checked without running anything.

    The rule (``NOTEBOOK_RULE``): a path relative to the include root ending in ``.ipynb``, without
    ``..``, that stays inside the root after symlinks are resolved, names a regular file of at most
    16 MiB holding a version-4 Jupyter notebook, in folders not writable by every user. The same
    check runs at DAG parse time and before the notebook is executed. Raises UserCodeError.
    """
    shown = _describe(spec)
    if not isinstance(spec, str) or not spec or len(spec) > 300 or re.search(r"[\x00-\x1f\x7f]", spec):
        raise UserCodeError(f"{shown} is not a notebook path: {NOTEBOOK_RULE}")
    if not include_root:
        raise UserCodeError(f"notebook {shown}: no include root given to look for it in")
    path = Path(spec)
    if spec.startswith(("/", "~")) or "\\" in spec or path.is_absolute():
        raise UserCodeError(f"notebook {shown}: absolute paths are refused: {NOTEBOOK_RULE}")
    if ".." in path.parts:
        raise UserCodeError(f"notebook {shown}: '..' is refused: {NOTEBOOK_RULE}")
    if not spec.endswith(".ipynb") or path.name == ".ipynb":
        raise UserCodeError(f"notebook {shown}: not a notebook file name (must end in .ipynb; or write "
                            f"'module:function' for Python code): {NOTEBOOK_RULE}")
    root = Path(include_root).resolve()
    candidate = root / path
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise UserCodeError(f"notebook {shown}: no file {candidate} (the path is relative to the include "
                            f"root {root})") from None
    if not real.is_relative_to(root):
        raise UserCodeError(f"notebook {shown}: {candidate} is a link to {real}, outside the include root "
                            f"{root}: {NOTEBOOK_RULE}")
    try:
        info = real.stat()
    except OSError as exc:
        raise UserCodeError(f"notebook {shown}: cannot read {real}: {exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise UserCodeError(f"notebook {shown}: {real} is not a regular file")
    if info.st_size > MAX_NOTEBOOK_BYTES:
        raise UserCodeError(f"notebook {shown}: {info.st_size} bytes, over the limit of {MAX_NOTEBOOK_BYTES} "
                            "(clear the outputs before committing it)")
    _refuse_world_writable(f"notebook {shown}", root, real)
    try:
        document = json.loads(real.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise UserCodeError(f"notebook {shown}: {real} is not a Jupyter notebook (not JSON: "
                            f"{str(exc)[:200]})") from None
    if not (isinstance(document, dict) and isinstance(document.get("cells"), list)
            and document.get("nbformat") == 4):
        raise UserCodeError(f"notebook {shown}: {real} is not a Jupyter notebook (expected nbformat 4 JSON "
                            "with a 'cells' list)")
    return real


def _file_of(module) -> Path | None:
    file = getattr(module, "__file__", None)
    return Path(file).resolve() if file else None


def _import_from(module_name: str, root: Path, expected: Path):
    if "." not in module_name and _LOADED.get(module_name) not in (None, expected):
        sys.modules.pop(module_name, None)  # our own copy from another include root
    if str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    module = importlib.import_module(module_name)
    actual = _file_of(module)
    if actual != expected:
        raise UserCodeError(
            f"module {module_name!r} was imported from {actual or 'a built-in'}, not from {expected}: "
            "an installed or already imported module of that name shadows the project file; rename it"
        )
    if "." not in module_name:
        _LOADED[module_name] = expected
    return module


def load_user_callable(spec: str, include_root: str | Path, allow: Iterable[str] | None = None) -> Callable:
    """Apply the rule, import the module from exactly that file and return the callable.

    Any failure (rule, missing file, import error, missing attribute, not callable) raises
    UserCodeError with the spec and the reason.
    """
    module_name, func_name = parse_callable_spec(spec)
    expected = resolve_user_callable_file(spec, include_root, allow)
    try:
        if expected is None:
            module = importlib.import_module(module_name)
        else:
            module = _import_from(module_name, Path(include_root).resolve(), expected)
    except UserCodeError:
        raise
    except (Exception, SystemExit) as exc:  # a sys.exit() in user code is reported, not obeyed
        raise UserCodeError(f"callable {spec!r}: importing {module_name} failed: {type(exc).__name__}: {exc}") from exc
    try:
        func = getattr(module, func_name)
    except AttributeError:
        where = _file_of(module) or module_name
        raise UserCodeError(f"callable {spec!r}: {where} defines no {func_name!r}") from None
    if not callable(func):
        raise UserCodeError(f"callable {spec!r}: {func_name!r} is a {type(func).__name__}, not a function")
    return func
