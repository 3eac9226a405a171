"""Plumbing shared along the data path: backend choice, failure policy, column names, where Dask runs, progress bars."""
