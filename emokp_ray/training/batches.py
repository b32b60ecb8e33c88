"""Every random stream of a training run, derived from (seed, stream, epoch, rank, batch index) only,
and the per-worker augmentation that draws from them.

The data pipelines (Ray Data's `map_batches`, the local iterator) only decode: a Ray Data task
cannot know the epoch or the worker it serves, and the order in which its tasks finish is the
cluster's. The random training transforms therefore run here, in the worker's own loop, on batches
that arrive in a deterministic order: batch i of epoch e on rank r draws from
`batch_rng(seed, e, r, i)`, so the same data, seed, worker count and machine give the same run.

Streams (the second seed word keeps them apart: numpy pads a short seed list with zeros, so
[s, e, r] and [s, e, r, 0] would otherwise be the same stream):
    AUGMENT  one generator per training batch (resampling, augmentation, erasing, mixing)
    TORCH    torch's global generator, reseeded per epoch and rank (dropout); model init uses the
             plain seed, so every rank starts from the same weights
    SHUFFLE  the row order: the local iterator's per-epoch permutation and Ray Data's local shuffle
             buffer in each worker
(Ray Data's block order is one permutation drawn from the plain seed, the same every epoch:
data/ray_data.py.)

Throughput: `augmented_batches` runs the augmentation in a small thread pool ahead of the training
step, in order, so it overlaps the step instead of adding to it (as Ray Data's tasks did), and
numpy releases the GIL for its array work, so the threads share out a node's free cores. Nothing
here imports Ray: a GPU box without Ray runs the same function.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

AUGMENT, TORCH, SHUFFLE = 1, 2, 3

# Batches augmented in parallel: one core augments ~16k 96x96 keypoint images/s
# (benchmarks/augment_speed.py); a few threads leave the other cores to torch and the data readers.
AUGMENT_THREADS = max(1, min(4, (os.cpu_count() or 1) // 2))

Batch = dict[str, np.ndarray]


def batch_rng(seed: int, epoch: int, rank: int, batch_index: int) -> np.random.Generator:
    """The generator of one training batch's random transforms."""
    return np.random.default_rng([seed, AUGMENT, epoch, rank, batch_index])


def stream_seed(seed: int, stream: int, epoch: int, rank: int = 0) -> int:
    """One 32-bit integer seed for a library that takes an int (torch, Ray Data's local shuffle)."""
    return int(np.random.SeedSequence([seed, stream, epoch, rank]).generate_state(1)[0])


def augmented_batches(
    batches: Iterable[Batch],
    augment: Callable[[Batch, np.random.Generator], Batch],
    seed: int,
    epoch: int,
    rank: int,
    threads: int = AUGMENT_THREADS,
) -> Iterator[Batch]:
    """`augment(batch, batch_rng(seed, epoch, rank, i))` for the i-th batch, yielded in order.

    Up to 2 x `threads` batches are augmented ahead of the consumer; the result does not depend on
    `threads` or on timing (each batch's draws depend only on its index and its contents).
    """
    if threads < 1:
        for i, batch in enumerate(batches):
            yield augment(batch, batch_rng(seed, epoch, rank, i))
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="emokp-augment")
    pending: deque[Future[Batch]] = deque()
    try:
        for i, batch in enumerate(batches):
            pending.append(pool.submit(augment, batch, batch_rng(seed, epoch, rank, i)))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # also when the consumer stops early (--max-steps-per-epoch)
        pool.shutdown(wait=True, cancel_futures=True)
