"""Build dataset_registry._fastexport (the optional C export engine) in place, for this repository.

Run by scripts/bootstrap.sh when plugins/dataset_registry/_fastexport.c changed (hash stamp). The
wheel builds the same extension from pyproject.toml's ext-modules. Flags come from mariadb_config
(or pkg-config libmariadb). Exit status 0 even when no compiler is found: the export then falls
back to the Python engine (and logs so); pass --strict to fail instead.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = "plugins/dataset_registry/_fastexport.c"


def mariadb_flags() -> tuple[list[str], list[str], list[str]]:
    for cmd in (["mariadb_config", "--cflags", "--libs"], ["pkg-config", "--cflags", "--libs", "libmariadb"]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            continue
        words = shlex.split(out)
        return ([w[2:] for w in words if w.startswith("-I")], [w[2:] for w in words if w.startswith("-L")],
                [w[2:] for w in words if w.startswith("-l")])
    return ["/usr/include/mariadb", "/usr/include/mariadb/mysql"], [], ["mariadb"]


def main() -> int:
    from setuptools import Distribution, Extension

    include, libdirs, libs = mariadb_flags()
    ext = Extension("dataset_registry._fastexport", sources=[SOURCE], include_dirs=include, library_dirs=libdirs,
                    libraries=libs, extra_compile_args=["-O2", "-Wall"])
    dist = Distribution({"name": "dataset-registry-fastexport", "ext_modules": [ext], "package_dir": {"": "plugins"},
                         "script_name": "build_fastexport.py"})
    cmd = dist.get_command_obj("build_ext")
    scratch = Path(tempfile.mkdtemp(prefix="fastexport-build-"))
    cmd.build_temp = str(scratch / "temp")
    cmd.build_lib = str(scratch / "lib")
    try:
        os.chdir(REPO)
        dist.run_command("build_ext")
        built = cmd.get_ext_fullpath(ext.name)
        target = REPO / "plugins" / "dataset_registry" / Path(built).name
        # atomic: a running export keeps the old file mapped (an in-place overwrite could crash it)
        shutil.copyfile(built, target.with_name(target.name + ".tmp"))
        os.replace(target.with_name(target.name + ".tmp"), target)
    except Exception as exc:  # noqa: BLE001 - optional: the Python engine still works
        print(f"[build_fastexport] could not build the C export engine ({exc}); the Python engine will be used",
              file=sys.stderr)
        return 1 if "--strict" in sys.argv else 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"[build_fastexport] built {target.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
