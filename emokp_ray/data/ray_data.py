"""Ray Data edge: prepared Parquet -> streaming, shuffled, decoded Ray Datasets for Ray Train.

Nothing is gathered on the driver: `read_parquet` streams row groups to CPU workers, the
`BatchPreprocessor` runs there in `map_batches`, and each Train worker pulls its shard with
`iter_batches`. Shuffling is the cheap kind (RAY_NOTES): one seeded block order, and each worker
keeps a local shuffle buffer (see `train_shuffle_buffer`) seeded per epoch and rank. Nothing here is
random beyond that: augmentation runs in the workers (training/batches.py), so a run repeats.
"""

from __future__ import annotations

import os

import ray

from emokp_ray.artifacts.files import is_uri
from emokp_ray.data.pipeline import PREPROCESS_BATCH, BatchPreprocessor
from emokp_ray.data.schema import split_files

# Columns the preprocessor needs (row ids and sources stay on disk).
TRAIN_COLUMNS = ["image", "height", "width", "keypoints", "label"]


def split_path(data: str, split: str) -> str:
    """`DIR/<split>` for a local path or a URI (s3://, gs://, a shared mount)."""
    return f"{data.rstrip('/')}/{split}"


# Splits smaller than this on disk are read once and kept in the object store (spread over the
# nodes, not on the driver): each epoch then re-runs only the augmentation, not the Parquet read.
CACHE_READ_BELOW_BYTES = 1 << 30


def _local_size(data: str, split: str) -> int | None:
    """Bytes of a local split's Parquet files; None for URIs (not worth a listing round trip)."""
    if is_uri(data):
        return None
    return sum(os.path.getsize(f) for f in split_files(data, split))


def build_dataset(
    data: str, split: str, preprocess: BatchPreprocessor, shuffle_seed: int | None = None, limit_rows: int = 0
) -> ray.data.Dataset:
    """A lazy Ray Dataset of preprocessed (decoded, never augmented) batches for one split.

    Its rows come in one order on every run: blocks in file order, or in a permutation drawn from
    `shuffle_seed`, with `preserve_order` on for the read's materialization (Train's DataConfig
    must set it for the ingest too, see ray_trainer.py). The per-epoch mixing is the workers' local
    shuffle buffer, seeded per epoch and rank.
    """
    ds = ray.data.read_parquet(split_path(data, split)).select_columns(TRAIN_COLUMNS)
    ds.context.execution_options.preserve_order = True  # this data set's own context (a copy)
    if limit_rows:
        ds = ds.limit(limit_rows)
    size = _local_size(data, split)
    if size is not None and size < CACHE_READ_BELOW_BYTES:
        ds = ds.materialize()
    if shuffle_seed is not None:
        ds = ds.randomize_block_order(seed=shuffle_seed)
    return ds.map_batches(preprocess, batch_format="pyarrow", batch_size=PREPROCESS_BATCH, zero_copy_batch=True)


def train_shuffle_buffer(per_worker_batch: int) -> int:
    """Rows each worker mixes locally before batching: several batches' worth, at least 1,024."""
    return max(1024, 8 * per_worker_batch)
