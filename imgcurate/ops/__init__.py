"""Partition functions: one DataFrame partition in, one out; no Dask, no cluster."""
