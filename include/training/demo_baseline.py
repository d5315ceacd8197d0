"""Demo training: an honest baseline for predicting `amount` in the demo events.

Deterministic split on `id` (every 4th row is test), predict the training mean, report MAE/RMSE of
that on the test rows (and on train when the window is too small for a test split). Real numbers
from the CSV, computed with pandas/numpy; the "model" (the mean) is saved as an artifact.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def train(data_path: str, *, artifacts_dir: str, tag: str, **_: object) -> dict:
    frame = pd.read_csv(data_path, keep_default_na=False, na_values=[""], dtype={"id": "int64"})
    frame["amount"] = pd.to_numeric(frame["amount"], errors="coerce")
    usable = frame.dropna(subset=["amount"])
    test_mask = usable["id"] % 4 == 0
    train_rows, test_rows = usable[~test_mask], usable[test_mask]
    if test_rows.empty:
        test_rows = train_rows
    mean = float(train_rows["amount"].mean()) if len(train_rows) else 0.0
    errors = test_rows["amount"].to_numpy(dtype=float) - mean
    model_path = Path(artifacts_dir) / "mean_model.json"
    model_path.write_text(json.dumps({"predict_amount": mean, "trained_on": tag}))
    return {
        "parameters": {"model": "mean-baseline", "target": "amount", "split": "id % 4 == 0 is test"},
        "evaluations": {
            "mae": round(float(np.abs(errors).mean()), 6) if len(errors) else None,
            "rmse": round(float(np.sqrt((errors ** 2).mean())), 6) if len(errors) else None,
            "train_rows": int(len(train_rows)), "test_rows": int(len(test_rows)),
            "rows_in_file": int(len(frame)),
        },
        "artifact_file_paths": {"model": str(model_path)},
    }
