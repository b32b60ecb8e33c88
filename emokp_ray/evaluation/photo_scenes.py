"""Photos with known truth: real test-split face crops pasted into larger scenes, and the scoring of
a detector + predictor on them (benchmarks/photo_faces.py and tests/test_photo_faces.py share it).

Pure numpy/PIL: no Ray, no torch.

A scene is a grey uint8 photo [H, W] holding 1..N faces that do not overlap (their rotated
footprints' bounding rectangles are apart), on one background (flat, gradient, noise or texture),
under one lighting change (gamma, brightness, contrast) applied to the whole photo. Each face is a
test crop (Kaggle 96x96 with 15 keypoints, or FER 48x48 with an emotion label) scaled to a side of
`size` photo px, turned by `angle` degrees (counter-clockwise as seen, about the crop's centre) and
blended in with a feathered (soft) edge.

Geometry (labels.py's pixel-centre convention for keypoints, corner coordinates for boxes, as in
inference/predictor.py): a crop of S px placed with centre c (corner coordinates), side s and angle a
maps a crop keypoint k (pixel centres) to the photo point

    p = c + (s / S) R(a) (k + 0.5 - S / 2) - 0.5

with R(a) the rotation by a counter-clockwise on screen (y points down). The truth box is the
upright square of side s centred at c (the crop's framing, as a detector would box the face).

Matching (`match_faces`): a truth face is found by the detection whose box centre lies inside the
truth box and whose IoU with it is above MATCH_IOU, the highest such IoU first (greedy, one
detection per face); a detection that finds no face is a false positive.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from emokp_ray.labels import KEYPOINT_NAMES

MATCH_IOU = 0.3
ROTATION_BINS = (0, 15, 30, 45)  # |angle| rounded to the nearest bin; "±15" holds -15 and 15
SIZE_BINS = ((24, 40), (40, 80), (80, 160), (160, 100_000))  # face side in photo px, [lo, hi)
BACKGROUNDS = ("flat", "gradient", "noise", "texture")
SCENE_SIZES = ((640, 480), (480, 640), (800, 600), (1024, 768))  # (width, height)
FEATHER = 0.08  # soft edge: alpha ramps from 0 to 1 over this fraction of the crop side
ANGLE_JITTER = 2.5  # degrees around each rotation bin's angle


@dataclass
class FacePool:
    """Test-split crops of one data set: uint8 [N, S, S]; keypoints [N, 15, 2] (crop px) or labels [N]."""

    kind: str  # "keypoints" | "emotion"
    crops: np.ndarray
    keypoints: np.ndarray | None = None
    labels: np.ndarray | None = None
    scheme: str | None = None  # the labels' emotion scheme (labels.py), emotion pools


@dataclass
class TruthFace:
    """One pasted face and what the photo should give back for it."""

    kind: str  # the pool it came from: "keypoints" | "emotion"
    index: int  # row in that pool
    box: tuple[float, float, float, float]  # (x, y, s, s) photo corner coordinates, upright
    angle: float  # degrees, counter-clockwise on screen
    keypoints: np.ndarray | None = None  # [15, 2] photo px (pixel centres), keypoint faces
    label: int | None = None  # the pool's class index, emotion faces

    @property
    def size(self) -> float:
        return self.box[2]


@dataclass
class Scene:
    image: np.ndarray  # uint8 [H, W]
    faces: list[TruthFace]
    background: str
    lighting: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Loading test crops
# --------------------------------------------------------------------------------------------------


def load_pool(data_dir: str, task: str, split: str = "test", limit: int | None = None) -> FacePool:
    """The `split` rows of a prepared data set that carry `task`'s labels (keypoints: all 15 points)."""
    from emokp_ray.data.pipeline import select_task_rows
    from emokp_ray.data.schema import images_from_column, iter_split, keypoints_from_column, read_info

    info = read_info(data_dir)
    crops, keypoints, labels = [], [], []
    for table in iter_split(data_dir, split):
        table = select_task_rows(table, task, drop_incomplete=task == "keypoints")
        for (h, w), part in _by_size(table):
            crops.append(images_from_column(part["image"], h, w))
            if task == "keypoints":
                keypoints.append(keypoints_from_column(part["keypoints"]).reshape(-1, 15, 2))
            else:
                labels.append(part["label"].to_numpy().astype(np.int64))
        if limit is not None and sum(len(c) for c in crops) >= limit:
            break
    if not crops:
        raise ValueError(f"{data_dir}: no {split} rows with {task} labels")
    sides = {c.shape[1:] for c in crops}
    if len(sides) != 1:
        raise ValueError(f"{data_dir}: {split} crops of several sizes {sorted(sides)}")
    n = limit if limit is not None else None
    if task == "keypoints":
        return FacePool("keypoints", np.concatenate(crops)[:n], keypoints=np.concatenate(keypoints)[:n])
    return FacePool("emotion", np.concatenate(crops)[:n], labels=np.concatenate(labels)[:n], scheme=info.scheme)


def _by_size(table: pa.Table) -> Iterator[tuple[tuple[int, int], pa.Table]]:
    import pyarrow.compute as pc

    heights, widths = table["height"].to_numpy(), table["width"].to_numpy()
    for h, w in sorted({(int(a), int(b)) for a, b in zip(heights, widths)}):
        yield (h, w), table.filter(pc.and_(pc.equal(table["height"], h), pc.equal(table["width"], w)))


# --------------------------------------------------------------------------------------------------
# Composing scenes
# --------------------------------------------------------------------------------------------------


def _rotation(angle: float) -> np.ndarray:
    """R(a): counter-clockwise on screen, y down."""
    t = math.radians(angle)
    return np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])


def crop_to_photo(points: np.ndarray, crop_side: int, centre: Sequence[float], size: float, angle: float) -> np.ndarray:
    """Crop keypoints [..., 2] (pixel centres) -> photo px (pixel centres), see the module docstring."""
    q = np.asarray(points, np.float64) + 0.5 - crop_side / 2.0
    return np.asarray(centre) + (size / crop_side) * q @ _rotation(angle).T - 0.5


def footprint(size: float, angle: float) -> float:
    """Half the side of the upright rectangle around a square of side `size` turned by `angle`."""
    t = math.radians(angle)
    return size / 2.0 * (abs(math.cos(t)) + abs(math.sin(t)))


def background(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [H, W] in 0..255."""
    if kind == "flat":
        return np.full((height, width), rng.uniform(20, 235), np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "gradient":
        t = rng.uniform(0, 2 * math.pi)
        ramp = xx * math.cos(t) + yy * math.sin(t)
        ramp = (ramp - ramp.min()) / max(1e-6, float(np.ptp(ramp)))
        lo, hi = sorted(rng.uniform(0, 255, 2))
        return (lo + (hi - lo) * ramp).astype(np.float32)
    if kind == "noise":  # smoothed noise: blotches a few px to tens of px across
        small = rng.uniform(0, 255, (max(2, height // 8), max(2, width // 8))).astype(np.float32)
        blotch = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC), np.float32)
        return np.clip(blotch + rng.normal(0, 12, (height, width)), 0, 255).astype(np.float32)
    if kind == "texture":  # a few oriented sine gratings (stripes, checks, weaves)
        out = np.full((height, width), 128.0, np.float32)
        for _ in range(3):
            t, period = rng.uniform(0, math.pi), rng.uniform(6, 60)
            phase = rng.uniform(0, 2 * math.pi)
            out += rng.uniform(15, 45) * np.sin(2 * math.pi * (xx * math.cos(t) + yy * math.sin(t)) / period + phase)
        return np.clip(out, 0, 255)
    raise ValueError(f"unknown background {kind!r} (known: {', '.join(BACKGROUNDS)})")


def paste(photo: np.ndarray, crop: np.ndarray, centre: Sequence[float], size: float, angle: float) -> None:
    """Blend `crop` (uint8 [S, S]) into `photo` (float32 [H, W], in place) at centre/size/angle, with a
    feathered edge. Downscaling goes through Pillow's area-aware resize first (no aliasing), then one
    bilinear rotation by inverse mapping at pixel centres."""
    crop_side = crop.shape[0]
    side = max(2, min(crop_side, round(size)))  # resample down once, never up (bilinear does the rest)
    src = (
        crop if side == crop_side else np.asarray(Image.fromarray(crop).resize((side, side), Image.Resampling.BILINEAR))
    )
    src = src.astype(np.float32)
    half = footprint(size, angle) + 1.0
    cx, cy = centre
    height, width = photo.shape
    x0, x1 = max(0, math.floor(cx - half)), min(width, math.ceil(cx + half))
    y0, y1 = max(0, math.floor(cy - half)), min(height, math.ceil(cy + half))
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    # Photo pixel centres (corner coordinates) -> source corner coordinates: R(-a), scale, recentre.
    d = np.stack([xx + 0.5 - cx, yy + 0.5 - cy], axis=-1) @ _rotation(angle)  # R(a)^T = R(-a)
    u = d * (side / size) + side / 2.0  # [h, w, 2], corner coordinates on src
    # Feathered alpha: distance (in crop sides) to the crop's nearest edge.
    edge = np.minimum(u, side - u).min(axis=-1) / side
    alpha = np.clip(edge / FEATHER, 0.0, 1.0)
    # Bilinear sample at pixel-centre coordinates u - 0.5, edge pixels replicated.
    sx = np.clip(u[..., 0] - 0.5, 0, side - 1)
    sy = np.clip(u[..., 1] - 0.5, 0, side - 1)
    ix, iy = np.minimum(sx.astype(int), side - 2), np.minimum(sy.astype(int), side - 2)
    fx, fy = sx - ix, sy - iy
    value = (
        src[iy, ix] * (1 - fx) * (1 - fy)
        + src[iy, ix + 1] * fx * (1 - fy)
        + src[iy + 1, ix] * (1 - fx) * fy
        + src[iy + 1, ix + 1] * fx * fy
    )
    region = photo[y0:y1, x0:x1]
    region += alpha * (value - region)


def light(photo: np.ndarray, gamma: float, brightness: float, contrast: float) -> np.ndarray:
    """float [H, W] 0..255 -> uint8: gamma, then contrast about mid-grey, then a brightness offset."""
    out = 255.0 * (np.clip(photo, 0, 255) / 255.0) ** gamma
    out = (out - 128.0) * contrast + 128.0 + brightness
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _place(
    rng: np.random.Generator, taken: list[tuple[float, float, float]], size: float, angle: float, wh: tuple[int, int]
) -> tuple[float, float] | None:
    """A centre where the face's footprint lies inside the photo and apart from the `taken` ones."""
    width, height = wh
    half = footprint(size, angle)
    if 2 * half > min(width, height):
        return None
    for _ in range(60):
        cx, cy = rng.uniform(half, width - half), rng.uniform(half, height - half)
        # Upright rectangles apart (2 px gap): along x or along y.
        if all(max(abs(cx - x), abs(cy - y)) > half + h + 2 for x, y, h in taken):
            return cx, cy
    return None


def compose_scene(
    pools: Sequence[FacePool],
    rng: np.random.Generator,
    faces: int = 4,
    scene_size: tuple[int, int] | None = None,
    background_kind: str | None = None,
    rotations: Sequence[int] = ROTATION_BINS,
    sizes: Sequence[tuple[int, int]] = SIZE_BINS,
) -> Scene:
    """One scene: up to `faces` faces (fewer when they do not fit), each drawn from a random pool,
    a random size bin of `sizes` (then a log-uniform side in it, capped by the frame), a random
    rotation bin of `rotations` (then its sign and a jitter of ±ANGLE_JITTER degrees)."""
    width, height = scene_size or SCENE_SIZES[int(rng.integers(len(SCENE_SIZES)))]
    kind = background_kind or BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    photo = background(kind, height, width, rng)
    taken: list[tuple[float, float, float]] = []
    truth: list[TruthFace] = []
    plans = []
    for _ in range(faces):
        lo, hi = sizes[int(rng.integers(len(sizes)))]
        top = min(float(hi), min(width, height) * 0.9)
        bin_angle = rotations[int(rng.integers(len(rotations)))] * rng.choice((-1, 1))
        angle = float(bin_angle + rng.uniform(-ANGLE_JITTER, ANGLE_JITTER))
        size = float(math.exp(rng.uniform(math.log(lo), math.log(max(lo + 1.0, top)))))
        plans.append((size, angle))
    for size, angle in sorted(plans, reverse=True):  # larger faces first: they are the hardest to fit
        centre = _place(rng, taken, size, angle, (width, height))
        if centre is None:
            continue
        pool = pools[int(rng.integers(len(pools)))]
        index = int(rng.integers(len(pool.crops)))
        crop = pool.crops[index]
        paste(photo, crop, centre, size, angle)
        taken.append((centre[0], centre[1], footprint(size, angle)))
        box = (centre[0] - size / 2.0, centre[1] - size / 2.0, size, size)
        kp = None
        if pool.keypoints is not None:
            kp = crop_to_photo(pool.keypoints[index], crop.shape[0], centre, size, angle)
        label = None if pool.labels is None else int(pool.labels[index])
        truth.append(TruthFace(pool.kind, index, box, angle, keypoints=kp, label=label))
    lighting = {
        "gamma": float(rng.uniform(0.6, 1.6)),
        "brightness": float(rng.uniform(-30, 30)),
        "contrast": float(rng.uniform(0.6, 1.3)),
    }
    return Scene(light(photo, **lighting), truth, kind, lighting)


def compose_scenes(pools: Sequence[FacePool], n: int, seed: int = 0, faces: int = 4) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [compose_scene(pools, rng, faces=faces) for _ in range(n)]


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def match_faces(truth: Sequence[Sequence[float]], found: Sequence[Sequence[float]]) -> list[int | None]:
    """For each truth box, the index of the detection that finds it, or None (rule: module docstring)."""
    pairs = []
    for t, tb in enumerate(truth):
        for d, db in enumerate(found):
            cx, cy = db[0] + db[2] / 2.0, db[1] + db[3] / 2.0
            inside = tb[0] <= cx <= tb[0] + tb[2] and tb[1] <= cy <= tb[1] + tb[3]
            score = iou(tb, db)
            if inside and score > MATCH_IOU:
                pairs.append((score, t, d))
    matched: list[int | None] = [None] * len(truth)
    used: set[int] = set()
    for _, t, d in sorted(pairs, reverse=True):
        if matched[t] is None and d not in used:
            matched[t], used = d, used | {d}
    return matched


def rotation_bin(angle: float) -> int:
    return min(ROTATION_BINS, key=lambda b: abs(abs(angle) - b))


def size_bin(size: float) -> str:
    for lo, hi in SIZE_BINS:
        if lo <= size < hi:
            return f"{lo}-{hi - 1}" if hi < 100_000 else f"{lo}+"
    return f"<{SIZE_BINS[0][0]}" if size < SIZE_BINS[0][0] else "?"


def label_in_scheme(label: int, data_scheme: str, model_scheme: str) -> int | None:
    """A data set's emotion label as the model scheme's class index (through FER's 7 classes), or
    None where the model's scheme has no such class."""
    from emokp_ray.labels import emotion_scheme

    to_fer7 = {v: k for k, v in emotion_scheme(data_scheme).from_fer7.items()}
    return emotion_scheme(model_scheme).from_fer7.get(to_fer7[label])


def keypoint_rmse_96(predicted: np.ndarray, truth: np.ndarray, size: float) -> float:
    """RMSE over the 30 coordinates in the face's 96-px units (photo px / (size / 96))."""
    error = (np.asarray(predicted, np.float64) - truth) / (size / 96.0)
    return float(np.sqrt(np.mean(error**2)))


@dataclass
class FaceOutcome:
    """One truth face under one detector: found or not, and what the predictor said."""

    kind: str
    rotation: int  # rotation bin
    size: str  # size bin
    side: float
    found: bool
    rmse_96: float | None = None  # keypoint faces found
    correct: bool | None = None  # emotion faces found (truth class in the model's scheme)
    crop_rmse_96: float | None = None  # the same face's crop-level figure
    crop_correct: bool | None = None


def summarize(outcomes: Sequence[FaceOutcome], false_positives: Sequence[int]) -> dict:
    """Per condition (rotation bin, size bin, pool kind, rotation bin of faces >= 40 px, all): recall, and for the found faces keypoint RMSE
    (photo vs crop, pooled as sqrt of mean squared error) and emotion accuracy (photo vs crop)."""

    def figures(rows: list[FaceOutcome]) -> dict:
        out: dict = {"faces": len(rows), "found": sum(r.found for r in rows)}
        out["recall"] = round(out["found"] / len(rows), 4) if rows else None
        kp = [r for r in rows if r.rmse_96 is not None and r.crop_rmse_96 is not None]
        if kp:
            out["keypoint_faces"] = len(kp)
            out["rmse_96"] = round(math.sqrt(np.mean([(r.rmse_96 or 0.0) ** 2 for r in kp])), 3)
            out["crop_rmse_96"] = round(math.sqrt(np.mean([(r.crop_rmse_96 or 0.0) ** 2 for r in kp])), 3)
        em = [r for r in rows if r.correct is not None and r.crop_correct is not None]
        if em:
            out["emotion_faces"] = len(em)
            out["accuracy"] = round(float(np.mean([r.correct for r in em])), 4)
            out["crop_accuracy"] = round(float(np.mean([r.crop_correct for r in em])), 4)
        return out

    report: dict = {"all": figures(list(outcomes))}
    report["false_positives_per_scene"] = round(float(np.mean(false_positives)), 3) if false_positives else 0.0
    report["rotation"] = {
        f"±{b}" if b else "0": figures([r for r in outcomes if r.rotation == b]) for b in ROTATION_BINS
    }
    sizes = [size_bin(lo) for lo, _ in SIZE_BINS]
    report["size"] = {s: figures([r for r in outcomes if r.size == s]) for s in sizes}
    report["kind"] = {k: figures([r for r in outcomes if r.kind == k]) for k in sorted({r.kind for r in outcomes})}
    report["rotation_min40"] = {
        f"±{b}" if b else "0": figures([r for r in outcomes if r.rotation == b and r.side >= 40]) for b in ROTATION_BINS
    }
    return report


# --------------------------------------------------------------------------------------------------
# Scoring a predictor (its detector) on scenes
# --------------------------------------------------------------------------------------------------


def crop_level(predictor: Any, pools: dict, used: dict[str, set[int]], model_scheme: str) -> dict:
    """The crop-level figure of every face used: keypoint RMSE (crop px = 96-px units) or emotion correctness."""
    out: dict[tuple[str, int], Any] = {}
    kp, em = pools.get("keypoints"), pools.get("emotion")
    if kp is not None and used["keypoints"]:
        rows = sorted(used["keypoints"])
        for i, face in zip(rows, predictor.predict_crops(kp.crops[rows])):
            pred = np.array([face.keypoints[n] for n in KEYPOINT_NAMES])
            out["keypoints", i] = keypoint_rmse_96(pred, kp.keypoints[i], kp.crops.shape[1])
    if em is not None and used["emotion"]:
        rows = sorted(used["emotion"])
        classes = predictor.labels()["emotion"]
        for i, face in zip(rows, predictor.predict_crops(em.crops[rows])):
            truth = label_in_scheme(int(em.labels[i]), em.scheme, model_scheme)
            out["emotion", i] = None if truth is None else face.emotion == classes[truth]
    return out


def score(predictor: Any, scenes: list, pools: dict, crops: dict, model_scheme: str) -> dict:
    """Run the predictor on every scene; per-condition figures (summarize) and the median time per photo."""
    classes = predictor.labels()["emotion"]
    outcomes, false_positives, times = [], [], []
    for scene in scenes:
        start = time.perf_counter()
        result = predictor.predict([scene.image], mode="detect")[0]
        times.append(time.perf_counter() - start)
        matched = match_faces([f.box for f in scene.faces], [f.box for f in result.faces])
        false_positives.append(len(result.faces) - sum(m is not None for m in matched))
        for truth, m in zip(scene.faces, matched):
            row = FaceOutcome(truth.kind, rotation_bin(truth.angle), size_bin(truth.size), truth.size, m is not None)
            face = result.faces[m] if m is not None else None
            if face is not None and truth.kind == "keypoints" and face.keypoints is not None:
                pred = np.array([face.keypoints[n] for n in KEYPOINT_NAMES])
                row.rmse_96 = keypoint_rmse_96(pred, truth.keypoints, truth.size)
                row.crop_rmse_96 = crops["keypoints", truth.index]
            if face is not None and truth.kind == "emotion" and truth.label is not None:
                label = label_in_scheme(truth.label, pools["emotion"].scheme, model_scheme)
                if label is not None:
                    row.correct = face.emotion == classes[label]
                    row.crop_correct = crops["emotion", truth.index]
            outcomes.append(row)
    report = summarize(outcomes, false_positives)
    report["ms_per_photo_median"] = round(statistics.median(times) * 1e3, 1)
    return report
