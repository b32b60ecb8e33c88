"""The training losses of the two tasks (tasks.py picks one per task): plain torch functions."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

Batch = dict[str, torch.Tensor]
Loss = Callable[[torch.Tensor, Batch], torch.Tensor]  # (model output, device batch) -> scalar


def masked_mse(pred: torch.Tensor, target: torch.Tensor, scale: float) -> torch.Tensor:
    """Mean squared error over the PRESENT coordinates only (NaN targets are skipped).

    pred, target: [B, 30] pixels. Errors are divided by `scale` (half the input size) so the loss
    is in normalized units (~1 = half a face): a 4-keypoint row trains just those 4 points.
    """
    present = ~torch.isnan(target)
    diff = torch.where(
        present, (pred.float() - torch.nan_to_num(target)) / scale, torch.zeros_like(pred, dtype=torch.float32)
    )
    return diff.pow(2).sum() / present.sum().clamp(min=1)


def keypoint_loss(scale: float) -> Loss:
    """Masked MSE against the batch's "keypoints", in units of `scale` pixels (half the input size)."""
    return lambda out, batch: masked_mse(out, batch["keypoints"], scale)


def emotion_loss(class_weights: np.ndarray | None, label_smoothing: float) -> Loss:
    """(Class-weighted, smoothed) cross-entropy against the batch's "label"; with mixup / cutmix
    (data/regularize.py) the partner's "label_mix" takes the weight 1 - "mix_lam"."""
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)

    def loss(out: torch.Tensor, batch: Batch) -> torch.Tensor:
        w = weight.to(out.device) if weight is not None else None
        ce = F.cross_entropy(out.float(), batch["label"], weight=w, label_smoothing=label_smoothing, reduction="none")
        if "mix_lam" in batch:
            lam = batch["mix_lam"]
            ce_mix = F.cross_entropy(
                out.float(), batch["label_mix"], weight=w, label_smoothing=label_smoothing, reduction="none"
            )
            ce = lam * ce + (1.0 - lam) * ce_mix
        # weighted mean as F.cross_entropy's "mean" reduction: sum of w[y] * loss / sum of w[y]
        norm = w[batch["label"]].sum() if w is not None else torch.tensor(float(len(ce)), device=ce.device)
        return ce.sum() / norm.clamp(min=1e-12)

    return loss
