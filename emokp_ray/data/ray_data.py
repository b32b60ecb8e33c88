"""Ray Data edge: prepared Parquet -> streaming, shuffled, augmented Ray Datasets for Ray Train.

Nothing is gathered on the driver: `read_parquet` streams row groups to CPU workers, the
`BatchPreprocessor` runs there in `map_batches`, and each Train worker pulls its shard with
`iter_torch_batches`. Shuffling is the cheap kind (RAY_NOTES): block order is randomized per epoch
and each worker keeps a local shuffle buffer (see `train_shuffle_buffer`).
"""

from __future__ import annotations

import ray

from emokp_ray.data.pipeline import PREPROCESS_BATCH, BatchPreprocessor

# Columns the preprocessor needs (row ids and sources stay on disk).
TRAIN_COLUMNS = ["image", "height", "width", "keypoints", "label"]


def split_path(data: str, split: str) -> str:
    """`DIR/<split>` for a local path or a URI (s3://, gs://, a shared mount)."""
    return f"{data.rstrip('/')}/{split}"


def build_dataset(data: str, split: str, preprocess: BatchPreprocessor, shuffle: bool, limit_rows: int = 0) -> "ray.data.Dataset":
    """A lazy Ray Dataset of preprocessed batches for one split; re-executed (re-augmented) per epoch."""
    ds = ray.data.read_parquet(split_path(data, split)).select_columns(TRAIN_COLUMNS)
    if limit_rows:
        ds = ds.limit(limit_rows)
    if shuffle:
        ds = ds.randomize_block_order()
    return ds.map_batches(preprocess, batch_format="pyarrow", batch_size=PREPROCESS_BATCH, zero_copy_batch=True)


def train_shuffle_buffer(per_worker_batch: int) -> int:
    """Rows each worker mixes locally before batching: several batches' worth, at least 1,024."""
    return max(1024, 8 * per_worker_batch)
