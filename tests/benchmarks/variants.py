"""One measured variant per process: `python variants.py VARIANT TABLE OUT [extra...]`.

The parent (bench.py) times it and reads its peak RSS from os.wait4, so every figure is one
process doing one way of exporting, nothing else loaded.
"""
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins"))
sys.path.insert(0, str(REPO / "include"))

MYSQL = {"host": "127.0.0.1", "port": 3306, "user": os.environ.get("DEMO_MYSQL_USER", "dataset_demo"),
         "passwd": os.environ.get("DEMO_MYSQL_PASSWORD", "dataset_demo")}


def sql(table: str) -> str:
    return f"SELECT * FROM dsv_bench.{table} ORDER BY id"


def demo_style_preprocess(chunk):
    """Like the demo's: normalise a text column and add a derived one, per chunk."""
    out = chunk.copy()
    out["city"] = out["city"].str.strip()
    out["has_note"] = (out["note"].notna() & (out["note"] != "")).map({True: "1", False: "0"})
    return out


def demo_style_arrow(batch):
    """The same on a pyarrow RecordBatch, with Arrow compute kernels (preprocess_api: arrow)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = dict(zip(batch.schema.names, batch.columns))
    columns["city"] = pc.utf8_trim_whitespace(columns["city"])
    columns["has_note"] = pc.fill_null(pc.greater(pc.binary_length(columns["note"]), 0), False)
    return pa.RecordBatch.from_pydict(columns)


def main(variant: str, table: str, out: str) -> None:
    dest = Path(out)
    if variant.startswith("pandas"):
        # The replaced pipelines as they ran before pyarrow was a dependency: pandas 3 backs `str`
        # columns with Arrow when pyarrow is importable, which makes read_sql + to_csv ~1.5x slower
        # here; measuring that would flatter this product's ratios.
        import pandas as pd

        pd.set_option("mode.string_storage", "python")
    if variant == "ours":
        from dataset_registry.mysql_export import export_query

        export_query(MYSQL, sql(table), dest)
    elif variant == "ours_preprocess":
        from dataset_registry.mysql_export import export_query

        export_query(MYSQL, sql(table), dest, preprocess=demo_style_preprocess)
    elif variant == "pandas_full":  # what SqlToS3Operator-style code does
        import MySQLdb
        import pandas as pd
        import warnings

        warnings.simplefilter("ignore")
        conn = MySQLdb.connect(**MYSQL, charset="utf8mb4")
        pd.read_sql(sql(table), conn).to_csv(dest, index=False)
    elif variant == "pandas_chunked":
        import MySQLdb
        import MySQLdb.cursors
        import pandas as pd
        import warnings

        warnings.simplefilter("ignore")
        conn = MySQLdb.connect(**MYSQL, charset="utf8mb4", cursorclass=MySQLdb.cursors.SSCursor)
        first = True
        for chunk in pd.read_sql(sql(table), conn, chunksize=50_000):
            chunk.to_csv(dest, index=False, header=first, mode="w" if first else "a")
            first = False
    else:
        raise SystemExit(f"unknown variant {variant}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
