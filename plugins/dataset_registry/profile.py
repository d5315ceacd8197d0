"""Default training callable for projects without ``train``: a dataset profile, not a model.

It records what was trained on (rows, columns, NULL share per column) so every project still gets a
traceable experiment row. Projects set ``train: module:function`` for real training.
"""
from __future__ import annotations

import json
from pathlib import Path


def profile(data_path: str, *, artifacts_dir: str, **_: object) -> dict:
    import pandas as pd

    frame = pd.read_csv(data_path, keep_default_na=False, na_values=[""], dtype=str)
    nulls = {c: round(float(frame[c].isna().mean()), 6) for c in frame.columns}
    out = Path(artifacts_dir) / "profile.json"
    out.write_text(json.dumps({"rows": len(frame), "columns": list(frame.columns), "null_share": nulls}, indent=2))
    return {"parameters": {"kind": "profile"},
            "evaluations": {"rows": int(len(frame)), "columns": len(frame.columns), "null_share": nulls},
            "artifact_file_paths": {"profile": str(out)}}
