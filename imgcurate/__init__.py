"""imgcurate: curate image datasets at scale on Dask dataframes over WebDataset shards."""

from ._version import __version__
from .dataframe import mark_where, where
from .io.reader import read_webdataset
from .io.writer import WriteResult, write_webdataset

__all__ = ["__version__", "read_webdataset", "write_webdataset", "WriteResult", "where", "mark_where"]
