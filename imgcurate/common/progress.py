"""Run Dask tasks with a progress bar, on a distributed client when one is active."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any, Sequence

import dask
from dask.base import named_schedulers
# plain text bars everywhere: tqdm.auto wants ipywidgets in Jupyter and warns without it
from tqdm.std import tqdm

log = logging.getLogger("imgcurate")


def active_client():
    """The distributed client in use (``Client(...)`` or ``with Client(...)``), or None.

    As in ``dask.compute``, an in-process scheduler chosen with ``dask.config.set(scheduler=...)``
    (``--scheduler threads``) wins over a client that merely exists in the process.
    """
    configured = dask.config.get("scheduler", None)
    if isinstance(configured, str) and configured.lower() in named_schedulers:
        return None
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return Client.current(allow_global=True)
    except ValueError:
        return None


def compute(tasks: Sequence[Any], *, desc: str, progress: bool = False, client=None) -> list[Any]:
    """Compute Dask collections/delayed objects; with ``progress``, show one bar over them.

    Runs on ``client``, else on the active distributed client, else on Dask's local scheduler.
    On a distributed client the bar counts finished tasks of ``tasks`` (local and remote
    clusters alike); on Dask's local schedulers it counts graph tasks.
    """
    tasks = list(tasks)
    if not tasks:
        return []
    if client is None:
        client = active_client()
    if client is not None:
        from distributed import as_completed

        futures = client.compute(tasks)
        try:
            with tqdm(total=len(futures), desc=desc, unit="part", disable=not progress) as bar:
                for _ in as_completed(futures, loop=client.loop):
                    bar.update()
            return client.gather(futures)
        finally:
            for future in futures:
                future.release()
    if progress:
        from tqdm.dask import TqdmCallback

        context = TqdmCallback(desc=desc, unit="task", tqdm_class=tqdm)
    else:
        context = nullcontext()
    with context:
        return list(dask.compute(*tasks))
