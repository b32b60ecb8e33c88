"""Procedural grey faces with exact keypoints and a visible emotion: the built-in data source.

Three stages, one module each, plus the two products made from them:

- geometry: face parameters (identity + seed5 expression) and their keypoints in the canonical frame,
  and the pose matrices that map that frame to output pixels;
- render: the faces drawn through their poses as soft masks evaluated in the canonical frame, then
  blurred and given sensor noise;
- crops: the keypoint/emotion data set of 96x96 crops (SynthConfig, synthesize, write_synth_dataset,
  face_grid);
- photos: several faces on a textured background, with their truth (synthesize_photos,
  write_synth_photos).
"""
