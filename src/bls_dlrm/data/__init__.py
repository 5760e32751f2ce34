"""Datasets for the inference runs: synthetic skew generators, Criteo preprocessing, a store.

Every source writes the same memory-mappable batch format with a sha256 manifest
(``store``), so the inference loop reads synthetic and real data alike through
``BatchStore`` and a changed or truncated file is an error, not a silent difference.
"""

from .criteo import (
    CRITEO_KINDS,
    FETCH_RECORD_SUFFIX,
    fetch,
    hash_categorical,
    log_transform,
    preprocess_criteo,
    write_criteo_sample,
)
from .store import (
    FORMAT_VERSION,
    MANIFEST,
    Batch,
    BatchStore,
    DatasetError,
    DatasetWriter,
    MissingFileError,
    sha256_file,
)
from .synthetic import (
    INDEX_DISTS,
    POOLINGS,
    affine_permutation,
    draw_lengths,
    generate_synthetic,
    zipf_pmf,
    zipf_ranks,
)

__all__ = [
    "CRITEO_KINDS",
    "FETCH_RECORD_SUFFIX",
    "FORMAT_VERSION",
    "INDEX_DISTS",
    "MANIFEST",
    "POOLINGS",
    "Batch",
    "BatchStore",
    "DatasetError",
    "DatasetWriter",
    "MissingFileError",
    "affine_permutation",
    "draw_lengths",
    "fetch",
    "generate_synthetic",
    "hash_categorical",
    "log_transform",
    "preprocess_criteo",
    "sha256_file",
    "write_criteo_sample",
    "zipf_pmf",
    "zipf_ranks",
]
