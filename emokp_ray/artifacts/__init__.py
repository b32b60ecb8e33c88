"""Everything the project writes and reads back as a model file or folder (where and how files are
written whole is `emokp_ray/storage.py`, shared with the data sets and the labels).

checkpoint.py  self-describing checkpoints (a folder, or one exported .pt file): `save_checkpoint`,
               `read_meta`, `load_checkpoint` (the one loader for resume, evaluation and inference),
               and `weights_version` (the weights' digest every answer names)
onnx.py        ONNX, all of it: export, read back, int8 quantization, the ONNX Runtime session and
               the export-once cache
export.py      a checkpoint exported for deployment (TorchScript, ONNX fp32 / int8, the project's .pt
               file), and `load_model`: any of those forms, or a checkpoint, loaded for inference
"""
