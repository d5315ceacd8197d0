"""Local-disk failures, named: which path, and what to do (a bare ``OSError: [Errno 28]`` says neither)."""
from __future__ import annotations

import errno
from pathlib import Path


def disk_problem(exc: OSError, path: Path | str, doing: str) -> str | None:
    """A user-facing message for a full or unwritable local disk, or None for other OS errors."""
    if exc.errno == errno.ENOSPC:
        return (f"no space left on the device while {doing} {path}: free space on that filesystem or point the "
                "worker's folders (DATASET_WORK_DIR / extra.work_dir, DATASET_DATA_DIR) at a larger one, then rerun")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {path} ({doing} it): {exc.strerror}; check the folder's permissions and mount"
    return None
