"""Label-preserving augmentations for keypoint and emotion batches: pure numpy, vectorized over a batch.

Two modules, one concern each; import the one you use:

- warp: the kernel. Per-sample affine matrices (output pixel -> input pixel) applied to pixels with a
  bilinear gather and to keypoints with their inverse, left/right names swapped on a flip; the
  `AugmentPlan` of a batch and `apply_plan` (outputs keep the input's size: the one resize is
  data/resize.py);
- policies: what is drawn. `KeypointAugment` and `EmotionAugment` (Keras-equivalent), their random
  geometry and intensity, the keep-keypoints-in-frame redraws, `augment_keypoint_batch` and
  `augment_emotion_batch`.
"""
