"""From prepared Parquet rows to training batches: select the task's rows, decode, batch, augment.

`BatchPreprocessor` is the deterministic transform, a plain callable over a pyarrow table. It runs
inside Ray Data's `map_batches` on CPU workers (see `ray_data.py`) and, unchanged, in the plain
in-process iterator `local_batches` used by `--no-ray` runs and by machines without Ray.
`TrainAugment` is the training split's random part, applied per batch in the worker's loop with a
generator derived from the seed, epoch, rank and batch index (training/batches.py).

Output batches: {"image": uint8 [B, S, S], "keypoints": float32 [B, 30] (keypoints task),
"label": int64 [B] (emotion task)}, S = the model's input size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from emokp_ray.data.resize import resize_image
from emokp_ray.data.schema import split_files
from emokp_ray.data.task_data import task_data
from emokp_ray.errors import UserError
from emokp_ray.tasks import task_spec

# Rows decoded together; also Ray Data's map_batches batch size.
PREPROCESS_BATCH = 256


def select_task_rows(table: pa.Table, task: str, drop_incomplete: bool = False) -> pa.Table:
    """Keep the rows that carry labels for `task` (keypoints: any point, or all with drop_incomplete;
    emotion: a label)."""
    return table.filter(pa.array(task_data(task).table_rows(table, drop_incomplete)))


def decode_images(table: pa.Table, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode the `image` column to uint8 [N, size, size] and per-row scale factors [N].

    Rows of another size (e.g. FER's 48x48 mixed with 96x96 synthetic faces) go through the one
    resize (`data/resize.py`); the returned factor (size / original width) lets callers rescale
    keypoints. When every row is already at `size` the bytes are decoded in one go.
    """
    heights = table["height"].to_numpy()
    widths = table["width"].to_numpy()
    raw = table["image"].to_pylist()
    n = len(raw)
    if n and (heights == size).all() and (widths == size).all():
        return np.frombuffer(b"".join(raw), np.uint8).reshape(n, size, size).copy(), np.ones(n, np.float32)
    out = np.empty((n, size, size), np.uint8)
    for i, (buf, h, w) in enumerate(zip(raw, heights, widths)):
        out[i] = resize_image(np.frombuffer(buf, np.uint8).reshape(int(h), int(w)), size)
    return out, (size / widths.astype(np.float32)) if n else np.ones(0, np.float32)


@dataclass(frozen=True)
class BatchPreprocessor:
    """pyarrow table (prepared schema) -> batch of numpy arrays: the task's rows, decoded and resized
    to `input_size` (keypoints scaled with them). Picklable for Ray Data, and deterministic: the same
    rows give the same batch wherever it runs. The training split's random transforms come after
    batching, in the worker (`TrainAugment`)."""

    task: str
    input_size: int
    drop_incomplete: bool = False

    def __call__(self, table: pa.Table) -> dict[str, np.ndarray]:
        table = select_task_rows(table, self.task, self.drop_incomplete)
        images, scale = decode_images(table, self.input_size)
        return {"image": images, task_spec(self.task).target: task_data(self.task).table_targets(table, scale)}


@dataclass(frozen=True)
class TrainAugment:
    """The training split's random transforms of one batch, all drawn from the generator passed in
    (training/batches.py derives it from the seed, epoch, rank and batch index), in this order:

    sampling_weights (emotion, --imbalance sampling): rows resampled within the batch with probability
        proportional to their class weight, so rare classes (disgust) are seen as often as common
        ones while the batch size and epoch length stay the same;
    augment: the label-true augmentation (augment/policies.py defaults), then random erasing and
        (emotion) mixup / cutmix (data/regularize.py); augment=False turns these three off.
    """

    task: str
    augment: bool = True
    sampling_weights: tuple[float, ...] | None = None
    random_erasing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0

    def __call__(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        return task_data(self.task).augment(batch, rng, self)


def task_columns(task: str) -> list[str]:
    """The columns a task's training reads (the other label column stays on disk)."""
    return ["image", "height", "width", task_spec(task).target]


def read_split_table(data_dir: str, split: str, limit_rows: int = 0, columns: list[str] | None = None) -> pa.Table:
    """One split as a pyarrow table (the plain path: data sets here are tens of MB)."""
    files = split_files(data_dir, split)
    if not files:
        raise UserError(f"{data_dir} has no {split!r} split")
    table = pa.concat_tables(pq.read_table(f, columns=columns) for f in files)
    return table.slice(0, limit_rows) if limit_rows else table


def local_batches(
    table: pa.Table,
    preprocess: BatchPreprocessor,
    batch_size: int,
    shuffle_seed: int | None = None,
    drop_last: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """The no-Ray iterator: rows in a permutation drawn from `shuffle_seed` (file order when None),
    preprocessed, yielded as batches.

    `table` is a split's rows (any task mix); batches hold at most `batch_size` of the task's rows.
    """
    order = np.arange(table.num_rows)
    if shuffle_seed is not None:
        np.random.default_rng(shuffle_seed).shuffle(order)
    pending: list[dict[str, np.ndarray]] = []
    pending_rows = 0
    for start in range(0, len(order), PREPROCESS_BATCH):
        part = preprocess(table.take(pa.array(order[start : start + PREPROCESS_BATCH])))
        pending.append(part)
        pending_rows += len(part["image"])
        while pending_rows >= batch_size:
            merged = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
            yield {k: v[:batch_size] for k, v in merged.items()}
            pending = [{k: v[batch_size:] for k, v in merged.items()}]
            pending_rows -= batch_size
    if pending_rows and not drop_last:
        yield {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
