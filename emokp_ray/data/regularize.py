"""Training-only regularizers over a batch, after the label-true augmentations: random erasing
(both tasks) and mixup / cutmix (emotion). Pure numpy, vectorized where it pays; no ray, no torch.

Batches: "image" uint8 [B, H, W], "label" int64 [B]. Mixing adds "label_mix" int64 [B] (the partner
image's label) and "mix_lam" float32 [B] (the share of the loss that goes to "label"), so the loss is
    lam * CE(logits, label) + (1 - lam) * CE(logits, label_mix)
and a batch without mixing keeps its keys unchanged (training's loss reads the two keys if present).
"""

from __future__ import annotations

import numpy as np

ERASE_AREA = (0.02, 0.25)  # erased share of the image area (Zhong et al. 2017: 0.02-0.4)
ERASE_ASPECT = (0.3, 3.3)  # height / width of the erased rectangle, log-uniform


def _rectangles(n: int, height: int, width: int, area: np.ndarray, aspect: np.ndarray) -> np.ndarray:
    """Rectangles [n, 4] (y0, y1, x0, x1), clipped to the image, of the given area shares and aspects."""
    h = np.clip(np.round(np.sqrt(area * height * width * aspect)), 1, height).astype(np.int64)
    w = np.clip(np.round(np.sqrt(area * height * width / aspect)), 1, width).astype(np.int64)
    return np.stack([h, w], axis=1)


def random_erase(images: np.ndarray, probability: float, rng: np.random.Generator) -> np.ndarray:
    """Erase one random rectangle (uniform noise) in each image with `probability`; uint8 [B, H, W]
    in, a new array out (the input is not modified)."""
    out = images.copy()
    n, height, width = images.shape
    chosen = np.flatnonzero(rng.random(n) < probability)
    if not chosen.size:
        return out
    area = rng.uniform(*ERASE_AREA, chosen.size)
    aspect = np.exp(rng.uniform(np.log(ERASE_ASPECT[0]), np.log(ERASE_ASPECT[1]), chosen.size))
    sizes = _rectangles(chosen.size, height, width, area, aspect)
    for i, (h, w) in zip(chosen, sizes):
        y0 = rng.integers(0, height - h + 1)
        x0 = rng.integers(0, width - w + 1)
        out[i, y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, (h, w), dtype=np.uint8)
    return out


def mix_batch(
    batch: dict[str, np.ndarray], mixup_alpha: float, cutmix_alpha: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Mixup or cutmix the whole batch with a random permutation of itself (one mode per batch,
    chosen with equal odds when both alphas are set); lam ~ Beta(alpha, alpha) per batch.

    mixup: image = lam * a + (1 - lam) * b (rounded to uint8).
    cutmix: a rectangle of b, of area share (1 - lam), pasted into a; lam is recomputed from the
    clipped rectangle so the loss weights match the pixels.
    """
    modes = [m for m, a in (("mixup", mixup_alpha), ("cutmix", cutmix_alpha)) if a > 0]
    images, labels = batch["image"], batch["label"]
    n = len(labels)
    if not modes:
        return batch
    if n < 2:  # nothing to mix with; the keys are still added so every batch of a run has the same columns
        return {**batch, "label_mix": labels.copy(), "mix_lam": np.ones(n, np.float32)}
    mode = modes[rng.integers(len(modes))]
    alpha = mixup_alpha if mode == "mixup" else cutmix_alpha
    lam = float(rng.beta(alpha, alpha))
    partner = rng.permutation(n)
    out = dict(batch)
    if mode == "mixup":
        mixed = lam * images.astype(np.float32) + (1.0 - lam) * images[partner].astype(np.float32)
        out["image"] = np.clip(np.round(mixed), 0, 255).astype(np.uint8)
    else:
        _, height, width = images.shape
        cut_h, cut_w = round(height * np.sqrt(1 - lam)), round(width * np.sqrt(1 - lam))
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + (cut_h + 1) // 2, height)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + (cut_w + 1) // 2, width)
        pasted = images.copy()
        pasted[:, y0:y1, x0:x1] = images[partner, y0:y1, x0:x1]
        out["image"] = pasted
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)
    out["label_mix"] = labels[partner]
    out["mix_lam"] = np.full(n, lam, np.float32)
    return out
