"""Demo preprocess step: runs on each chunk of rows (a pandas DataFrame) before it is written.

Values arrive as MySQL prints them (strings; NULL as a missing value). Return a DataFrame; its
columns become the CSV header. Keep it row-local: it sees one chunk at a time.
"""
import pandas as pd


def clean(chunk: pd.DataFrame) -> pd.DataFrame:
    out = chunk.copy()
    # Normalise whitespace in the city name but keep NULL as NULL and '' as ''.
    out["city"] = out["city"].str.strip()
    # A derived feature: was a note written?
    out["has_note"] = out["note"].notna() & (out["note"] != "")
    out["has_note"] = out["has_note"].map({True: "1", False: "0"})
    return out
