"""The synthetic keypoint/emotion data set: 96x96 crops of posed faces, written as a prepared data set.

Output is a pure function of (config, chunk index): same seed, same bytes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from emokp_ray.data.schema import SPLITS, DatasetInfo, DatasetWriter, count_summary, make_table, merge_counts
from emokp_ray.data.synth.geometry import CANONICAL_SIZE, apply_pose, canonical_keypoints, pose_matrices, sample_faces
from emokp_ray.data.synth.render import degrade, render_faces
from emokp_ray.errors import UserError
from emokp_ray.labels import NUM_KEYPOINTS, SEED5

# ---------------------------------------------------------------------------------------------
# Configuration and results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthConfig:
    """Everything that decides the synthetic faces; the output is a pure function of it."""

    n: int = 10_000
    seed: int = 0
    image_size: int = 96  # output crops are image_size x image_size grey
    max_shift_px: float = 4.0  # uniform shift in [-max, max] px (at 96 px), both axes
    scale_range: tuple[float, float] = (0.9, 1.1)
    max_rotation_deg: float = 12.0  # uniform in-plane rotation in [-max, max] degrees
    noise_std_range: tuple[float, float] = (0.0, 8.0)  # per-face sensor noise std, grey levels
    blur_range: tuple[float, float] = (0.0, 1.6)  # per-face blur: 0 none, 1 = [1,2,1], 2 = twice
    intensity_range: tuple[float, float] = (0.4, 1.2)  # per-face expression strength (1 = typical)
    class_probabilities: tuple[float, ...] | None = None  # seed5 order; None = uniform
    chunk_size: int = 32  # faces per random stream and per render (part of the output's identity)

    def __post_init__(self) -> None:
        def bad(what: str) -> UserError:
            return UserError(f"invalid synth config: {what}")

        if self.n < 0:
            raise bad(f"n must be >= 0, got {self.n}")
        if self.image_size < 16:
            raise bad(f"image_size must be >= 16, got {self.image_size}")
        if self.chunk_size < 1:
            raise bad(f"chunk_size must be >= 1, got {self.chunk_size}")
        for name in ("scale_range", "noise_std_range", "blur_range", "intensity_range"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise bad(f"{name} must satisfy 0 <= low <= high, got {(lo, hi)}")
        if self.scale_range[0] <= 0 or self.scale_range[1] > 1.3:
            raise bad(f"scale_range must lie in (0, 1.3], got {self.scale_range}")
        if self.blur_range[1] > 2:
            raise bad(f"blur_range must lie in [0, 2], got {self.blur_range}")
        if not 0 <= self.max_rotation_deg <= 45 or not 0 <= self.max_shift_px <= 12:
            raise bad("max_rotation_deg must lie in [0, 45] and max_shift_px in [0, 12]")
        if self.class_probabilities is not None:
            p = np.asarray(self.class_probabilities, dtype=float)
            if p.shape != (SEED5.num_classes,) or (p < 0).any() or p.sum() <= 0:
                raise bad(
                    f"class_probabilities needs {SEED5.num_classes} non-negative values, got {self.class_probabilities}"
                )

    def probabilities(self) -> np.ndarray:
        p = (
            np.ones(SEED5.num_classes)
            if self.class_probabilities is None
            else np.asarray(self.class_probabilities, float)
        )
        return p / p.sum()


@dataclass(frozen=True)
class SynthBatch:
    """Synthetic faces: images uint8 [N, S, S], keypoints float32 [N, 30] (Kaggle order, crop
    pixels), labels int64 [N] (seed5)."""

    images: np.ndarray
    keypoints: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def as_batch(self) -> dict[str, np.ndarray]:
        """The pipeline's batch dict: {"image", "keypoints", "label"}."""
        return {"image": self.images, "keypoints": self.keypoints, "label": self.labels}


def make_config(n: int, seed: int = 0, **options: Any) -> SynthConfig:
    """SynthConfig(n, seed, **options); an unknown option is a UserError naming it."""
    known = {f.name for f in fields(SynthConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(
            f"unknown synth option(s) {', '.join(unknown)}; known: {', '.join(sorted(known - {'n', 'seed'}))}"
        )
    tuples = {k: tuple(v) for k, v in options.items() if isinstance(v, list)}  # JSON/CLI lists -> tuples
    return SynthConfig(n=n, seed=seed, **{**options, **tuples})


# ---------------------------------------------------------------------------------------------
# Crops: the keypoint/emotion data set
# ---------------------------------------------------------------------------------------------


def _keep_keypoints_inside(
    points: np.ndarray, scale: np.ndarray, angle: np.ndarray, shift: np.ndarray, size: int
) -> np.ndarray:
    """Clip shifts [B, 2] so every keypoint lands at least 1.5 px (at 96) inside the crop; a face too
    large for that is centred on its keypoints instead."""
    placed = apply_pose(points, pose_matrices(scale, angle, np.zeros_like(shift), size))  # [B, K, 2], no shift
    margin = 1.5 * size / CANONICAL_SIZE
    low = margin - placed.min(axis=1)  # [B, 2] smallest allowed shift
    high = (size - 1 - margin) - placed.max(axis=1)
    return np.where(low <= high, np.clip(shift, low, high), (low + high) / 2)


def _chunk(config: SynthConfig, index: int, count: int) -> SynthBatch:
    """The first count faces of chunk `index` of the config's stream. Every random draw is made for
    the whole chunk and then cut to count, so a face never depends on how many were asked for."""
    size = config.chunk_size
    rng = np.random.default_rng([config.seed, index])
    labels = rng.choice(SEED5.num_classes, size=size, p=config.probabilities()).astype(np.int64)
    p = sample_faces(rng, labels, config.intensity_range)
    scale = rng.uniform(*config.scale_range, size)
    angle = np.deg2rad(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg, size))
    shift = rng.uniform(-config.max_shift_px, config.max_shift_px, (size, 2)) * (config.image_size / CANONICAL_SIZE)
    blur = rng.uniform(*config.blur_range, size).astype(np.float32)
    noise = rng.uniform(*config.noise_std_range, size).astype(np.float32)
    keep = slice(0, count)
    p = {k: v[keep] for k, v in p.items()}
    shift = _keep_keypoints_inside(canonical_keypoints(p), scale[keep], angle[keep], shift[keep], config.image_size)
    m = pose_matrices(scale[keep], angle[keep], shift, config.image_size)
    images, _ = render_faces(p, m, config.image_size, config.image_size)
    keypoints = apply_pose(canonical_keypoints(p), m).reshape(count, 2 * NUM_KEYPOINTS)
    # The noise stream is a byte stream in face order, so its first faces are the same for any count.
    return SynthBatch(degrade(images, blur[keep], noise[keep], rng), keypoints, labels[keep])


def _keep_temporaries_on_the_heap() -> None:
    """Rendering makes many ~1 MB temporaries. glibc serves blocks over its mmap threshold (128 KiB at
    start) with fresh mmaps and page faults, costing ~30 % of the time, until a block of that size
    has been freed once: freeing an mmapped block raises the threshold to its size (glibc's dynamic
    M_MMAP_THRESHOLD, up to 32 MiB; see mallopt(3)). So free one 30 MiB block, untouched. Elsewhere
    (other libcs) this is a harmless allocation."""
    np.empty(30 * 2**20, np.uint8)


def iter_synth(config: SynthConfig, start: int = 0, stop: int | None = None) -> Iterator[SynthBatch]:
    """Faces [start, stop) of the config's stream (stop defaults to config.n), a chunk at a time."""
    _keep_temporaries_on_the_heap()
    stop = config.n if stop is None else min(stop, config.n)
    cs = config.chunk_size
    for index in range(start // cs, (stop + cs - 1) // cs):
        lo, hi = index * cs, min((index + 1) * cs, config.n)
        batch = _chunk(config, index, hi - lo)
        a, b = max(start, lo) - lo, min(stop, hi) - lo
        if b > a:
            yield (
                batch
                if (a, b) == (0, hi - lo)
                else SynthBatch(batch.images[a:b], batch.keypoints[a:b], batch.labels[a:b])
            )


def synthesize(n: int, seed: int = 0, **options: Any) -> SynthBatch:
    """n synthetic faces for a seed; options are any other SynthConfig fields. Face i is the same
    whatever n is (for the same seed, options and chunk_size)."""
    config = make_config(n, seed, **options)
    s = config.image_size
    images = np.empty((n, s, s), np.uint8)
    keypoints = np.empty((n, 2 * NUM_KEYPOINTS), np.float32)
    labels = np.empty(n, np.int64)
    at = 0
    for batch in iter_synth(config):
        images[at : at + len(batch)], keypoints[at : at + len(batch)], labels[at : at + len(batch)] = (
            batch.images,
            batch.keypoints,
            batch.labels,
        )
        at += len(batch)
    return SynthBatch(images, keypoints, labels)


def seeded_split(n: int, seed: int, val_fraction: float, test_fraction: float) -> np.ndarray:
    """A seeded split of n rows with exact rounded counts: int8 [n], indices into schema.SPLITS
    (0 train, 1 val, 2 test)."""
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise UserError(f"split fractions must be >= 0 and sum below 1, got val={val_fraction} test={test_fraction}")
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    order = np.random.default_rng([seed, 0x5D1]).permutation(n)
    codes = np.zeros(n, np.int8)
    codes[order[:n_val]] = SPLITS.index("val")
    codes[order[n_val : n_val + n_test]] = SPLITS.index("test")
    return codes


def write_synth_dataset(
    out_dir: str | os.PathLike,
    n: int = 10_000,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    rows_per_write: int = 4096,
    **options: Any,
) -> dict[str, Any]:
    """Write n synthetic faces as a prepared data set (unified Parquet schema, atomic), a few thousand
    rows at a time. Returns a summary: out_dir, n, counts per split, seconds, faces_per_s, config."""
    config = make_config(n, seed, **options)
    split_names = np.asarray(SPLITS, dtype=object)
    splits = seeded_split(n, seed, val_fraction, test_fraction)
    counts: dict[str, dict[str, int]] = {}
    started = time.perf_counter()
    step = max(rows_per_write // config.chunk_size, 1) * config.chunk_size
    with DatasetWriter(out_dir) as writer:
        for lo in range(0, n, step):
            parts = list(iter_synth(config, lo, lo + step))
            images = np.concatenate([b.images for b in parts])
            table = make_table(
                images,
                np.concatenate([b.keypoints for b in parts]),
                np.concatenate([b.labels for b in parts]),
                split_names[splits[lo : lo + len(images)]],
                source="synth",
                row_ids=np.arange(lo, lo + len(images)),
            )
            writer.write(table)
            counts = merge_counts(counts, count_summary(table, SEED5.classes))
        config_dict = asdict(config)
        writer.info = DatasetInfo(
            tasks=["keypoints", "emotion"],
            scheme=SEED5.name,
            counts=counts,
            sources=["synth"],
            image_sizes=[[config.image_size, config.image_size]] if n else [],
            extra={"synth": {"config": config_dict, "val_fraction": val_fraction, "test_fraction": test_fraction}},
        )
    seconds = time.perf_counter() - started
    return {
        "out_dir": str(Path(out_dir).resolve()),
        "n": n,
        "counts": counts,
        "seconds": round(seconds, 3),
        "faces_per_s": round(n / seconds, 1) if seconds > 0 else None,
        "config": config_dict,
    }


def face_grid(per_class: int = 5, seed: int = 0, draw_keypoints: bool = False, **options: Any) -> np.ndarray:
    """A preview: per_class faces of each seed5 class, one class per row (seed5 order), as one uint8
    grey image [5 * S, per_class * S]; with draw_keypoints, keypoints are marked white-on-black."""
    config = make_config(per_class * SEED5.num_classes * 20, seed, **options)
    rows: list[list[np.ndarray]] = [[] for _ in range(SEED5.num_classes)]
    for batch in iter_synth(config):
        for image, kp, label in zip(batch.images, batch.keypoints, batch.labels):
            if len(rows[label]) < per_class:
                image = image.copy()
                if draw_keypoints:
                    for x, y in np.rint(kp.reshape(-1, 2)).astype(int):
                        image[max(y - 1, 0) : y + 2, x] = 0
                        image[y, max(x - 1, 0) : x + 2] = 0
                        image[y, x] = 255
                rows[label].append(image)
        if all(len(r) == per_class for r in rows):
            break
    blank = np.zeros((config.image_size, config.image_size), np.uint8)  # a class the options left out
    rows = [r + [blank] * (per_class - len(r)) for r in rows]
    return np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
