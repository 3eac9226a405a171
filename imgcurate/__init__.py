"""imgcurate: curate image datasets at scale on Dask dataframes over WebDataset shards."""

from ._version import __version__
from .io.reader import read_webdataset

__all__ = ["__version__", "read_webdataset"]
