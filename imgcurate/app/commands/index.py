"""``imgcurate index``: embed (when needed), export the embeddings in clip-retrieval's layout, and build a faiss index."""

from __future__ import annotations

from .options import add_scheduler

DEFAULT_MODEL, DEFAULT_PRETRAINED = "ViT-L-14", "openai"


def add_model_options(parser, *, default_note: str) -> None:
    parser.add_argument("--model", help=f"open_clip model name ({default_note})")
    parser.add_argument("--pretrained", help="open_clip pretrained tag or checkpoint file; 'random' for random weights")
    parser.add_argument("--batch-size", type=int, help="images per model batch (default: 32 on CPU, 256 on GPU)")
    parser.add_argument("--device", help="torch device (default: cuda when present, else cpu)")


def run(args) -> int:
    from ...common import columns as C
    from ...common.cluster import dask_client
    from ...dataframe import embed
    from ...io.paths import filesystem
    from ...io.reader import read_webdataset
    from ...models import CLIPModel
    from ...retrieval import build_index, export_embeddings
    from ...retrieval.export import check_export_output

    check_export_output(*filesystem(args.output), args.overwrite)  # before a model is built or a shard read
    on_error = "raise" if args.strict else "report"
    progress = not args.no_progress
    named = args.model is not None or args.pretrained is not None
    model = CLIPModel(args.model or DEFAULT_MODEL, args.pretrained or DEFAULT_PRETRAINED, device=args.device,
                      batch_size=args.batch_size) if named else None
    with dask_client(args.scheduler):
        df = read_webdataset(args.input, with_images=False, on_error=on_error)
        if C.EMBEDDING not in df.columns:
            model = model or CLIPModel(DEFAULT_MODEL, DEFAULT_PRETRAINED, device=args.device, batch_size=args.batch_size)
            model.check_weights()  # before any shard is read
            df = embed(df, model, on_error=on_error)
        exported = export_embeddings(df, args.output, dtype=args.dtype, model_id=model.model_id if model else None,
                                     overwrite=args.overwrite, progress=progress)
    print(exported)
    index = build_index(args.output, kind=args.kind, max_index_memory=args.max_index_memory, progress=progress)
    print(f"built a {index.kind} index ({index.document['faiss_description']}) of {index.count} vectors in "
          f"{index.document['build_seconds']} s: {index.directory}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("index", help="export embeddings (clip-retrieval's layout) and build a search index",
                       description="Read INPUT (WebDataset shards, or an imgcurate output whose metadata has embeddings), "
                                   "embed the images with CLIP when there is no embedding column yet, export the "
                                   "embeddings as OUTPUT/img_emb/*.npy with OUTPUT/metadata/*.parquet (clip-retrieval's "
                                   "layout, read by autofaiss and embedding-reader), and build a faiss index in OUTPUT "
                                   "for `imgcurate search`.")
    p.add_argument("input", help="directory, glob, brace range or file of shards (or an imgcurate output directory)")
    p.add_argument("--output", "-o", required=True, metavar="IDX", help="the index directory to write")
    add_model_options(p, default_note=f"default {DEFAULT_MODEL} when the images must be embedded; given for existing "
                                      f"embeddings, it is recorded as their model")
    p.add_argument("--kind", choices=("auto", "flat", "ivfpq", "hnsw"), default="auto",
                   help="index kind (default auto: exact up to a measured size, IVF-PQ above)")
    p.add_argument("--max-index-memory", default="4G", metavar="SIZE", help="memory budget of the index itself (default 4G)")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                   help="type of the exported vectors (default float16, as clip-retrieval)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export and index in OUTPUT")
    p.add_argument("--strict", action="store_true", help="stop at the first bad shard, member or image instead of skipping it")
    p.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    add_scheduler(p)
    p.set_defaults(func=run)
