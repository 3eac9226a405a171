"""One module per ``imgcurate`` command (or pair of related commands).

Each module has ``register(subparsers)``, which adds its parser(s) and sets ``func`` to the
function that runs the command; :data:`MODULES` is the order they appear in ``--help``. Heavy
imports (Dask, torch) happen inside the functions that run, so ``imgcurate --help`` is quick.
"""

MODULES = ("reshard", "subset", "curate", "dedup", "index", "search", "query", "inspect", "report", "sample_data", "demo")
