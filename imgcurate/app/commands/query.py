"""``imgcurate query``: one read-only SQL SELECT over a dataset's metadata."""

from __future__ import annotations

import sys

from ...common.cluster import dask_client
from .options import add_scheduler


def run(args) -> int:
    from ...dataframe.sql import sql

    with dask_client(args.scheduler, work="read"):
        result = sql(args.sql, args.dataset)
    if args.format == "csv":
        result.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        print(result.to_json(orient="records", lines=False, force_ascii=False, default_handler=str))
    else:
        import pandas as pd

        with pd.option_context("display.max_rows", args.max_rows, "display.max_columns", None, "display.width", 200,
                               "display.max_colwidth", 60):
            print(result.to_string(index=False, max_rows=args.max_rows) if len(result) else "(no rows)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("query", help="run a read-only SQL query over a dataset's metadata",
                       description="Run one SELECT over the metadata of DATASET, visible as the table 'samples' "
                                   "(and 'failures' / 'dropped' for an imgcurate output). DuckDB SQL; nothing can be "
                                   "written, attached or read besides the dataset.")
    p.add_argument("dataset", help="an imgcurate output directory, a Parquet file, or WebDataset shards")
    p.add_argument("sql", help="e.g. \"SELECT caption, aesthetic_score FROM samples ORDER BY aesthetic_score DESC LIMIT 10\"")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--max-rows", type=int, default=50, help="rows shown in table format (default 50)")
    add_scheduler(p, "read")
    p.set_defaults(func=run)
