"""Run a project's training notebook with papermill and read the metrics it reports (no Airflow here).

Data scientists keep their training in Jupyter; the train task executes that notebook as it is:

* **Parameters** are injected by papermill after the cell tagged ``parameters`` (or at the top when
  there is none): ``data_path``, ``project``, ``version``, ``tag``, ``md5``, ``artifacts_dir`` (all
  strings) — the same values a ``module:function`` train callable gets.
* **Metrics**: the notebook writes ``metrics.json`` into ``artifacts_dir`` with the shape a train
  callable returns, ``{"parameters": {...}, "evaluations": {...}, "artifact_file_paths": {...}}``
  (each optional, each an object). A plain file, because it survives a failed save, needs no extra
  library in the notebook and is itself an artifact. Anything else (missing, not JSON, NaN, other
  keys, over 1 MiB) fails the run like a failing cell: it is the notebook's mistake.
* **The executed notebook** (outputs, and the traceback of a failing cell) is written to
  ``artifacts_dir/<name>.executed.ipynb`` cell by cell, so it is kept whatever happens.
* **Kernel**: ``python3`` is always the worker's own interpreter with ipykernel (a ``python3``
  kernelspec installed elsewhere is ignored), so the notebook sees the worker's packages. Its
  environment is the worker's minus Airflow's connections, variables and configuration
  (``AIRFLOW_CONN_*``, ``AIRFLOW_VAR_*``, ``AIRFLOW__*``) and MLflow credentials.
* **Bounded**: every cell has a timeout (``cell_timeout`` seconds); kernel start-up has its own.

Every failure of the notebook itself (a cell raises, a cell times out, the kernel dies, the file is
not a notebook, bad metrics) is a ``NotebookFailed``: deterministic user-code failures that a retry
does not fix. papermill, nbclient and jupyter_client are imported only when a notebook runs.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from dataset_registry.mlflow_tracking import CREDENTIAL_ENV

METRICS_FILE = "metrics.json"
MAX_METRICS_BYTES = 1024 * 1024
RESULT_KEYS = ("parameters", "evaluations", "artifact_file_paths")
KERNEL_NAME = "python3"
DEFAULT_CELL_TIMEOUT = 3600
KERNEL_START_TIMEOUT = 60
_HIDDEN_ENV_PREFIXES = ("AIRFLOW_CONN_", "AIRFLOW_VAR_", "AIRFLOW__")


class NotebookSetupError(RuntimeError):
    """This worker cannot run notebooks at all (papermill or ipykernel missing)."""


class NotebookFailed(RuntimeError):
    """The notebook failed; ``executed_notebook`` is the kept copy with outputs and error (or None)."""

    def __init__(self, message: str, executed_notebook: Path | None = None):
        super().__init__(message)
        self.executed_notebook = executed_notebook

    @property
    def artifact_file_paths(self) -> dict[str, str]:
        return {"executed_notebook": str(self.executed_notebook)} if self.executed_notebook else {}


def check_runtime() -> None:
    """Raise NotebookSetupError unless papermill and ipykernel can be imported here."""
    missing = []
    for module in ("papermill", "ipykernel", "nbclient", "jupyter_client"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise NotebookSetupError(f"notebooks need {', '.join(missing)} on the worker "
                                 "(pip install 'airflow-provider-dataset-registry[notebooks]')")


def kernel_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The kernel's environment: this process's, minus Airflow secrets/config and MLflow credentials."""
    env = dict(os.environ if environ is None else environ)
    return {k: v for k, v in env.items() if not k.startswith(_HIDDEN_ENV_PREFIXES) and k not in CREDENTIAL_ENV}


@lru_cache(maxsize=1)
def worker_kernel_manager_class():
    """An AsyncKernelManager whose ``python3`` is this interpreter and whose env is ``kernel_environment()``."""
    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import AsyncKernelManager

    class WorkerKernelManager(AsyncKernelManager):
        @property
        def kernel_spec(self):
            if self._kernel_spec is None:
                from ipykernel.kernelspec import RESOURCES, get_kernel_dict

                spec = get_kernel_dict()
                self._kernel_spec = KernelSpec(resource_dir=RESOURCES, argv=spec["argv"],
                                               display_name=spec["display_name"], language=spec["language"],
                                               metadata=spec.get("metadata", {}))
            return self._kernel_spec

        async def start_kernel(self, **kw):
            kw["env"] = kernel_environment()
            return await AsyncKernelManager.start_kernel(self, **kw)

    return WorkerKernelManager


def executed_path(notebook: Path, artifacts_dir: Path) -> Path:
    return Path(artifacts_dir) / f"{Path(notebook).stem}.executed.ipynb"


def _no_constants(name: str):
    raise ValueError(f"{name} is not a JSON number (write null, or leave the value out)")


def read_metrics(path: Path) -> dict[str, dict]:
    """The notebook's ``metrics.json`` as ``{parameters, evaluations, artifact_file_paths}``.
    Raises ValueError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"the notebook wrote no {METRICS_FILE} into artifacts_dir: write "
                         '{"evaluations": {...}} (optionally "parameters", "artifact_file_paths") to '
                         f"os.path.join(artifacts_dir, {METRICS_FILE!r})")
    size = path.stat().st_size
    if size > MAX_METRICS_BYTES:
        raise ValueError(f"{METRICS_FILE} is {size} bytes, over the limit of {MAX_METRICS_BYTES}; "
                         "put large results in artifacts")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{METRICS_FILE} is not valid JSON: {str(exc)[:300]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{METRICS_FILE} must hold a JSON object with {', '.join(RESULT_KEYS)}, "
                         f"not {type(data).__name__}")
    unknown = sorted(set(data) - set(RESULT_KEYS))
    if unknown:
        raise ValueError(f"{METRICS_FILE} has unknown key(s) {', '.join(map(repr, unknown))[:300]} "
                         f"(allowed: {', '.join(RESULT_KEYS)})")
    result: dict[str, dict] = {}
    for key in RESULT_KEYS:
        value = data.get(key)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ValueError(f"{METRICS_FILE}: {key!r} must be a JSON object, not {type(value).__name__}")
        result[key] = value
    bad = [k for k, v in result["artifact_file_paths"].items() if not isinstance(v, str)]
    if bad:
        raise ValueError(f"{METRICS_FILE}: artifact_file_paths values must be paths (text): {bad[:5]}")
    return result


def run_notebook(notebook: str | Path, data_path: str, *, project: str, version: str, tag: str, md5: str,
                 artifacts_dir: str | Path, cell_timeout: int = DEFAULT_CELL_TIMEOUT,
                 log_output: bool = True) -> dict[str, Any]:
    """Execute ``notebook`` with the run's parameters; return the reported metrics (a train result).

    The executed notebook is always under ``artifacts_dir`` and listed in ``artifact_file_paths``.
    Raises NotebookFailed (the notebook's fault) or NotebookSetupError (the worker's).
    """
    check_runtime()
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    notebook, artifacts = Path(notebook), Path(artifacts_dir)
    artifacts.mkdir(parents=True, exist_ok=True)
    metrics = artifacts / METRICS_FILE
    metrics.unlink(missing_ok=True)  # a previous attempt's numbers must never be reported again
    output = executed_path(notebook, artifacts)
    output.unlink(missing_ok=True)
    parameters = {"data_path": str(data_path), "project": project, "version": version, "tag": tag, "md5": md5,
                  "artifacts_dir": str(artifacts)}
    where = f"notebook {notebook.name}"

    def failed(message: str) -> NotebookFailed:
        kept = output if output.is_file() else None
        suffix = f"; the executed notebook is kept at {kept}" if kept else ""
        return NotebookFailed(f"{where}: {message}{suffix}", kept)

    try:
        papermill.execute_notebook(
            str(notebook), str(output), parameters=parameters, kernel_name=KERNEL_NAME, language="python",
            progress_bar=False, log_output=log_output, start_timeout=KERNEL_START_TIMEOUT, cwd=str(notebook.parent),
            execution_timeout=cell_timeout, kernel_manager_class=worker_kernel_manager_class(),
        )
    except PapermillExecutionError as exc:
        raise failed(f"cell [{exc.exec_count}] raised {exc.ename}: {exc.evalue}") from None
    except CellTimeoutError:
        raise failed(f"a cell ran longer than the cell timeout of {cell_timeout} s (notebook_cell_timeout)") from None
    except DeadKernelError as exc:
        raise failed(f"the kernel died while running a cell (killed, out of memory, or exited): {exc}") from None
    except Exception as exc:  # noqa: BLE001 - not a notebook, kernel did not start, ...: the notebook's run failed
        raise failed(f"could not be executed: {type(exc).__name__}: {str(exc)[:1000]}") from None
    try:
        result = read_metrics(metrics)
    except ValueError as exc:
        raise failed(str(exc)) from None
    result["artifact_file_paths"] = {**result["artifact_file_paths"], "executed_notebook": str(output)}
    return result
