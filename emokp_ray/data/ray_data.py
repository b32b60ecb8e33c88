"""Ray Data edge: prepared Parquet -> streaming, shuffled, decoded Ray Datasets for Ray Train.

Nothing is gathered on the driver: `read_parquet` streams row groups to CPU workers, the
`BatchPreprocessor` runs there in `map_batches` (once, for a split that fits the cache below), and
each Train worker pulls its shard with `iter_batches`. Shuffling is the cheap kind (RAY_NOTES): one
seeded block order, and each worker keeps a local shuffle buffer (see `train_shuffle_buffer`)
seeded per epoch and rank. Nothing here is random beyond that: augmentation runs in the workers
(training/batches.py), so a run repeats.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import ray

from emokp_ray.data.pipeline import PREPROCESS_BATCH, BatchPreprocessor
from emokp_ray.data.schema import split_files
from emokp_ray.storage import is_uri

# Columns the preprocessor needs (row ids and sources stay on disk).
TRAIN_COLUMNS = ["image", "height", "width", "keypoints", "label"]


def split_path(data: str, split: str) -> str:
    """`DIR/<split>` for a local path or a URI (s3://, gs://, a shared mount)."""
    return f"{data.rstrip('/')}/{split}"


# Splits whose decoded rows (uint8 images at the input size) take less than this are decoded once and
# kept in the object store (spread over the nodes, not on the driver): the decode is deterministic
# (augmentation runs in the workers), so each epoch then only streams the cached blocks, and no Ray
# Data task takes a core from the training step's torch threads. FER2013 at 96x96 is ~0.3 GB decoded.
CACHE_DECODED_BELOW_BYTES = 1 << 30


def decoded_bytes(data: str, split: str, input_size: int, limit_rows: int = 0) -> int | None:
    """An upper bound on a local split's decoded size (rows x input_size^2 bytes, from the Parquet
    footers); None for URIs (not worth a listing and footer round trips)."""
    if is_uri(data):
        return None
    rows = sum(pq.read_metadata(f).num_rows for f in split_files(data, split))
    if limit_rows:
        rows = min(rows, limit_rows)
    return rows * input_size * input_size


def build_dataset(
    data: str, split: str, preprocess: BatchPreprocessor, shuffle_seed: int | None = None, limit_rows: int = 0
) -> ray.data.Dataset:
    """A Ray Dataset of preprocessed (decoded, never augmented) batches for one split.

    Its rows come in one order on every run: blocks in file order, or in a permutation drawn from
    `shuffle_seed`, with `preserve_order` on for the read's materialization (Train's DataConfig
    must set it for the ingest too, see ray_trainer.py). The per-epoch mixing is the workers' local
    shuffle buffer, seeded per epoch and rank. A split small enough (`CACHE_DECODED_BELOW_BYTES`) is
    decoded here, once; a larger one streams and decodes every epoch.
    """
    ds = ray.data.read_parquet(split_path(data, split)).select_columns(TRAIN_COLUMNS)
    ds.context.execution_options.preserve_order = True  # this data set's own context (a copy)
    if limit_rows:
        ds = ds.limit(limit_rows)
    size = decoded_bytes(data, split, preprocess.input_size, limit_rows)
    if shuffle_seed is not None:
        ds = ds.randomize_block_order(seed=shuffle_seed)
    ds = ds.map_batches(preprocess, batch_format="pyarrow", batch_size=PREPROCESS_BATCH, zero_copy_batch=True)
    if size is not None and size < CACHE_DECODED_BELOW_BYTES:
        ds = ds.materialize()  # in the seeded block order, kept for every epoch
    return ds


def train_shuffle_buffer(per_worker_batch: int) -> int:
    """Rows each worker mixes locally before batching: several batches' worth, at least 1,024."""
    return max(1024, 8 * per_worker_batch)
