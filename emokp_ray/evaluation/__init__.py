"""How good a checkpoint is: `emokp evaluate`'s report and its figures.

- evaluate: a checkpoint on a prepared split or a Kaggle CSV, with the predictor's flip test-time
  augmentation and temperature -> REPORT_DIR/report.json and the PNGs (evaluate_checkpoint), and the
  logits a temperature is fitted on (collect_logits);
- figures: the report's PNGs (learning curves, confusion matrix, reliability diagram, face grids,
  per-keypoint RMSE), drawn without pyplot or the global backend.
"""
