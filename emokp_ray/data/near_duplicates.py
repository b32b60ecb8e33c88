"""Near-duplicate faces and a split that keeps them on one side.

Kaggle's keypoint file holds several frames of the same video (the same person, background and
light, a few frames apart). A random row split puts some of those frames in train and their twins in
val/test, so a model is scored partly on faces it has already seen: optimistic figures. Here:

1. `fingerprints`: each image -> 32x32 box-filtered grey values, standardized per image (zero mean,
   unit variance), float32 [N, 1024]: robust to the JPEG noise and small brightness changes between
   frames, blind to fine detail.
2. `near_duplicate_groups`: two images are near-duplicates when the RMS difference of their
   fingerprints is below `NEAR_DUPLICATE_RMS` (in standard deviations); groups are the connected
   components of that relation (union-find over the pairs).
3. `group_split`: whole groups go to train, val or test (seeded, stratified by complete / partial
   keypoint rows), so no test face has a near-duplicate in train. To MEASURE what leaking costs, a
   seeded share of the train groups that have two or more members lend one member each to test
   (`holdout`): evaluation reports test RMSE on the clean rows (the headline) and on these rows apart.

Measured on ../shared/data/facial-keypoints/training.csv.gz (3,383 faces, 5.7M pairs): the RMS
difference of two faces' fingerprints is 1.28 at the median and above 0.48 for all but 0.01% of the
pairs; below 0.45 lie 448 pairs, which link 18% of the rows to at least one other row (3,014 groups,
251 of them with 2-6 members).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

FINGERPRINT_SIDE = 32
NEAR_DUPLICATE_RMS = 0.45  # fingerprint RMS difference (standard deviations) below which two faces are near-duplicates
_BLOCK = 2048  # rows per block of the pairwise distance matrix (2048 x N float32)


def fingerprints(images: np.ndarray, side: int = FINGERPRINT_SIDE) -> np.ndarray:
    """uint8 [N, H, W] grey images -> float32 [N, side*side], each row zero-mean, unit-variance."""
    out = np.empty((len(images), side * side), np.float32)
    for i, image in enumerate(images):
        small = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BOX), np.float32).ravel()
        std = small.std()
        out[i] = (small - small.mean()) / (std if std > 1e-6 else 1.0)
    return out


def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def near_duplicate_groups(fp: np.ndarray, threshold: float = NEAR_DUPLICATE_RMS) -> np.ndarray:
    """Group id per row, int64 [N] (0..G-1, in order of first appearance): connected components of
    "fingerprint RMS difference < threshold"."""
    n, dim = fp.shape
    parent = np.arange(n)
    sq = (fp.astype(np.float64) ** 2).sum(axis=1)
    limit = threshold**2 * dim  # squared distance below which two rows are linked
    for lo in range(0, n, _BLOCK):
        block = fp[lo : lo + _BLOCK]
        d2 = sq[lo : lo + _BLOCK, None] + sq[None, :] - 2.0 * (block @ fp.T)
        rows, cols = np.nonzero(d2 < limit)
        for a, b in zip(rows + lo, cols):
            if a < b:
                ra, rb = _find(parent, int(a)), _find(parent, int(b))
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([_find(parent, i) for i in range(n)])
    _, ids = np.unique(roots, return_inverse=True)
    # renumber by first appearance so ids do not depend on union order
    order: dict[int, int] = {}
    return np.array([order.setdefault(g, len(order)) for g in ids], np.int64)


def group_split(
    groups: np.ndarray,
    strata: np.ndarray,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    holdout_fraction: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Assign whole groups to train / val / test; returns (split names object [N], holdout bool [N]).

    Per stratum (a group's stratum is its first row's), groups are drawn in a seeded order and filled
    into test, then val, until each holds round(fraction * rows of the stratum) rows; the rest is
    train. Then `holdout_fraction * test rows` rows come from train groups of size >= 2 (one member
    each, seeded): they move to test with holdout=True, so the test split also measures faces whose
    near-duplicate WAS trained on.
    """
    n = len(groups)
    splits = np.full(n, "train", dtype=object)
    holdout = np.zeros(n, bool)
    rng = np.random.default_rng([seed, 7919])
    group_ids, first = np.unique(groups, return_index=True)
    group_stratum = strata[first]
    sizes = np.bincount(groups, minlength=len(group_ids))
    for stratum in np.unique(group_stratum):
        members = group_ids[group_stratum == stratum]
        members = members[rng.permutation(len(members))]
        rows = int(sizes[members].sum())
        quotas = [("test", round(rows * test_fraction)), ("val", round(rows * val_fraction))]
        filled = {"test": 0, "val": 0}
        for g in members:
            for name, quota in quotas:
                if filled[name] < quota:
                    splits[groups == g] = name
                    filled[name] += int(sizes[g])
                    break
    n_holdout = round(holdout_fraction * (splits == "test").sum())
    if n_holdout:
        train_groups = np.unique(groups[splits == "train"])
        multi = train_groups[sizes[train_groups] >= 2]
        for g in multi[rng.permutation(len(multi))][:n_holdout]:
            member = rng.choice(np.flatnonzero(groups == g))
            splits[member] = "test"
            holdout[member] = True
    return splits, holdout
