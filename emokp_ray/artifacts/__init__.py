"""Everything the project writes and reads back as a file or folder.

files.py       where things live (a local path or a pyarrow filesystem URI: s3://, gs://, file://,
               ...) and how they are written whole or not at all: `atomic_dir` for folders
               (checkpoints, RUN_DIR/best, data sets), `write_file` for files (exports, label parts,
               caches)
checkpoint.py  self-describing checkpoints (a folder, or one exported .pt file): `save_checkpoint`,
               `read_meta`, and `load_checkpoint`, the one loader for resume, evaluation and
               inference
export.py      a checkpoint exported for deployment (TorchScript, ONNX fp32 / int8, the project's .pt
               file), and `load_model`: any of those forms, or a checkpoint, loaded for inference
"""
