"""Defaults that the command line states in its help as well as the code that uses them: kept here,
where reading them imports nothing."""

# measured on the real photos (benchmarks/README.md, "Deduplication"): every re-encode, downscale and
# PNG→JPEG is within 4 bits (the required q70 and 1/2 within 2), different photos 20 or more apart
DEDUP_MAX_DISTANCE = 4
DEDUP_EPS = 0.01  # NeMo Curator's image deduplication tutorial
DEDUP_MAX_ITER = 100  # SemDeDup's niter
# a cluster above this many rows is split into chunks compared pair by pair, so that a task holds
# pairs of chunks (~300 MB each of 768-d float32 at this size), never a whole large cluster
DEDUP_MAX_CLUSTER_ROWS = 100_000
