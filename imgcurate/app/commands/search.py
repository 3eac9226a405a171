"""``imgcurate search``: query an index by text or example images; print, write a WebDataset, or a report page."""

from __future__ import annotations

import json
import os
import sys

from .index import add_model_options
from .options import add_scheduler

TABLE_COLUMNS = ("similarity", "key", "caption", "source_shard", "source_index")


def _model(args, index):
    if args.model is None and args.pretrained is None:
        return None  # the index's own model
    from ...models import CLIPModel

    config, _, weights = (index.model_id or "/").rpartition("/")
    return CLIPModel(args.model or config, args.pretrained or weights or None, device=args.device,
                     batch_size=args.batch_size)


def _print_table(results) -> None:
    import pandas as pd

    if not len(results):
        print("(no results)")
        return
    shown = results[[name for name in TABLE_COLUMNS if name in results.columns]].copy()
    if "source_shard" in shown.columns:
        shown["source_shard"] = shown["source_shard"].map(lambda url: os.path.basename(str(url)))
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                           "display.max_colwidth", 60, "display.float_format", "{:.4f}".format):
        print(shown.to_string(index=False))


def run(args) -> int:
    from ...common.cluster import dask_client
    from ...io.paths import filesystem, full_url
    from ...retrieval import open_index, search, write_matches

    if not args.text and not args.image:
        raise ValueError("give a query: --text TEXT or --image PATH (repeatable)")
    if args.text and args.image:
        raise ValueError("give --text or --image, not both")
    for image in args.image:  # a path or a URL, as the query reads it
        fs, path = filesystem(image)
        if not fs.isfile(path):
            raise ValueError(f"--image {image!r}: no such file")
    index = open_index(args.index)
    if args.output:  # before the model is built and the query run
        from ...io.outputdir import check_output_dir
        from ...io.writer import check_images_per_tar

        check_images_per_tar(args.images_per_tar)
        check_output_dir(*filesystem(args.output), args.overwrite)
    query = {"text": args.text or None, "images": [full_url(*filesystem(image)) for image in args.image] or None, "k": args.k,
             "min_similarity": args.min_similarity, "combine": args.combine, "index": index.directory,
             "model_id": index.model_id}
    results = search(index, text=args.text or None, images=args.image or None, k=args.k,
                     min_similarity=args.min_similarity, combine=args.combine, model=_model(args, index))
    if args.json:
        records = json.loads(results.to_json(orient="records", force_ascii=False, default_handler=str))
        json.dump(records, sys.stdout, ensure_ascii=False, indent=1)
        print()
    else:
        _print_table(results)
    if args.report:
        from ..report_search import write_search_report

        write_search_report(results, args.report, query, index)
        print(f"wrote {args.report}", file=sys.stderr if args.json else sys.stdout)
    if args.output:
        with dask_client(args.scheduler):
            written = write_matches(results, args.output, images_per_tar=args.images_per_tar, query=query,
                                    overwrite=args.overwrite, progress=not args.no_progress)
        print(written, file=sys.stderr if args.json else sys.stdout)
    return 0


def register(sub) -> None:
    p = sub.add_parser("search", help="search an index by text or example images",
                       description="Search an index written by `imgcurate index`: by --text (CLIP's text tower) or by "
                                   "--image (the dataset's decode and image tower), top -k or every match at or above "
                                   "--min-similarity (exact on every index kind). Prints a table (or --json); --output "
                                   "copies the matched samples into a new WebDataset (original bytes, exact shard "
                                   "sizes, the query in _manifest.json); --report writes an HTML page of thumbnails.")
    p.add_argument("index", help="an index directory (imgcurate index --output)")
    p.add_argument("--text", action="append", default=[], metavar="TEXT", help="a text query (repeatable)")
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="an example image (repeatable)")
    p.add_argument("-k", type=int, help="results wanted (default 100; with --min-similarity: every match)")
    p.add_argument("--min-similarity", type=float, metavar="S", help="only results with similarity >= S, all of them")
    p.add_argument("--combine", choices=("mean", "union"), default="mean",
                   help="several queries: search with their mean embedding (default) or merge each one's results")
    p.add_argument("--json", action="store_true", help="print the results as JSON records")
    p.add_argument("--report", metavar="PAGE.html", help="write an HTML page with thumbnails of the results")
    p.add_argument("--output", "-o", metavar="DIR", help="write the matched samples as a new WebDataset")
    p.add_argument("--images-per-tar", type=int, default=1000, metavar="N", help="samples per output shard (default 1000)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory written by imgcurate")
    p.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    add_model_options(p, default_note="default: the model the index records")
    add_scheduler(p)
    p.set_defaults(func=run)
