"""The `emokp` command. Each subcommand parses flags and calls one library function.

User errors (bad files, flags, checkpoints) print ONE line `emokp: error: ...` and exit 2; Ctrl-C
exits 130 after the command's own cleanup; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import sys
import textwrap
import tokenize
from collections.abc import Callable, Sequence
from typing import Any, get_type_hints

from emokp_ray.errors import UserError
from emokp_ray.training.config import CHOICES, NON_NEGATIVE, POSITIVE, TASKS, TrainConfig
from emokp_ray.training.recipes import DEFAULT_RECIPE, config_from_recipe, recipe_names, recipe_values


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see --help)")


def _bounded(kind: Callable[[str], float], positive: bool) -> Callable[[str], float]:
    """An argparse type: a number of `kind` (int or float) > 0 (`positive`) or >= 0."""
    expected = f"expected a {'positive' if positive else 'non-negative'} {'integer' if kind is int else 'number'}"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
        if not (value > 0 if positive else value >= 0):  # NaN fails both
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}")
        return value

    return parse


_positive_int = _bounded(int, positive=True)
_non_negative_int = _bounded(int, positive=False)
_non_negative_float = _bounded(float, positive=False)
_seed = _bounded(int, positive=False)  # a random seed: numpy's generators take only non-negative ones


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def _open_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def _actors(text: str) -> int | tuple[int, int]:
    """`N` actors, or `MIN-MAX` for an autoscaling pool (both positive, MIN <= MAX)."""
    try:
        low, dash, high = text.partition("-")
        count = (int(low), int(high)) if dash else int(low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX, got {text!r}") from None
    bounds = count if isinstance(count, tuple) else (count, count)
    if min(bounds) < 1 or bounds[0] > bounds[1]:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX with 1 <= MIN <= MAX, got {text!r}")
    return count


def _add_detector(parser: argparse.ArgumentParser) -> None:
    from emokp_ray.inference.detect import DEFAULT_DETECTOR, DETECTORS, MTCNN_THRESHOLD

    parser.add_argument(
        "--detector",
        default=DEFAULT_DETECTOR,
        choices=DETECTORS,
        help="face detector for photos: mtcnn (default; finds tilted and small faces, 5 landmarks that "
        "align each face) or haar (OpenCV's frontal-face cascade, axis-aligned crops)",
    )
    parser.add_argument(
        "--detector-threshold",
        type=_open_fraction,
        default=None,
        metavar="F",
        help=f"MTCNN's final score threshold in (0, 1) (default {MTCNN_THRESHOLD}); higher: fewer, surer faces",
    )


def _fps(text: str) -> float | None:
    """--fps: frames sampled per second of video (a number > 0), or `all` for every frame (None)."""
    if text.strip().lower() == "all":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected frames per second > 0 or 'all', got {text!r}")
    return value


def _add_fps(parser: argparse.ArgumentParser) -> None:
    from emokp_ray.inference.video import DEFAULT_FPS

    parser.add_argument(
        "--fps",
        type=_fps,
        default=DEFAULT_FPS,
        metavar="F",
        help=f"videos (.mp4 .mov .webm .mkv .avi; the `video` extra): frames sampled per second "
        f"(default {DEFAULT_FPS:g}), or 'all' for every frame",
    )


def _add_backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnx", "onnx-int8"],
        help="where the networks run: torch (eager PyTorch), onnx (ONNX Runtime, fp32), onnx-int8 "
        "(ONNX Runtime, int8); auto (default): onnx where the onnx extra is installed, else torch",
    )


# ----------------------------------------------------------------------------- data


def _cmd_data_prepare(args: argparse.Namespace) -> None:
    from emokp_ray.inference.folders import prepare_images
    from emokp_ray.labels import custom_scheme_name

    if args.classes is not None and args.scheme is not None:
        raise UserError("--classes declares the class set: leave --scheme out")
    scheme = custom_scheme_name(args.classes.split(",")) if args.classes is not None else args.scheme or "seed5"
    result = prepare_images(
        args.inputs,
        args.out,
        scheme=scheme,
        strict=args.strict,
        seed=args.seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        group_near_duplicates=not args.keep_near_duplicates,
        people=args.people,
        detect_mode=args.detect,
        detector_name=args.detector,
    )
    print(result.summary())


def _cmd_data_synth(args: argparse.Namespace) -> None:
    from emokp_ray.data.schema import format_counts, read_info
    from emokp_ray.data.synth.crops import write_synth_dataset

    summary = write_synth_dataset(
        args.out, n=args.n, seed=args.seed, val_fraction=args.val_fraction, test_fraction=args.test_fraction
    )
    print(
        f"synthesized {summary['n']:,} faces into {summary['out_dir']} in {summary['seconds']:.1f} s "
        f"({summary['faces_per_s']:,.0f} faces/s, keypoints exact, emotions seed5)"
    )
    print("\n".join(format_counts(read_info(summary["out_dir"]))))


# ----------------------------------------------------------------------------- train / evaluate

# `emokp train` has one flag per TrainConfig field (_add_train_options) but for these: the command's
# own arguments (TASK, --data, --out) and --recipe, the preset the flags override.
_TRAIN_ARGUMENTS = ("task", "data", "out", "recipe")
# Flags not named after their field: --gpu / --no-gpu is what the README, the jobs and users know.
_TRAIN_FLAG_NAMES = {"use_gpu": "--gpu"}


def _train_flag_fields() -> list[dataclasses.Field]:
    """The TrainConfig fields `emokp train` generates a flag for, in the class's order."""
    return [f for f in dataclasses.fields(TrainConfig) if f.name not in _TRAIN_ARGUMENTS]


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The recipe's values (default: release), then the flags given (a flag's None = not given)."""
    given = {f.name: getattr(args, f.name) for f in _train_flag_fields()}
    return config_from_recipe(args.task, args.data, args.out, recipe=args.recipe or DEFAULT_RECIPE, **given)


def _cmd_train(args: argparse.Namespace) -> None:
    cfg = _train_config(args)  # a bad value fails here, before torch and Ray are imported
    from emokp_ray.training.train import run_training

    print(
        f"recipe {cfg.recipe}: {cfg.model} model, {cfg.epochs} epochs, batch {cfg.batch_size}, {cfg.optimizer} "
        f"lr {cfg.lr:g} {cfg.schedule}" + (f", EMA {cfg.ema_decay:g}" if cfg.ema_decay else "")
    )
    run_training(cfg)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from emokp_ray.evaluation.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        args.out,
        split=args.split,
        scheme=args.scheme,
        batch_size=args.batch_size,
        limit_rows=args.limit_rows,
        flip_tta=not args.no_flip_tta,
    )
    print(report.summary())


# ----------------------------------------------------------------------------- inference


def _model_pair(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """--keypoints / --emotion as given; with neither, the shipped release pair (builtin:keypoints,
    builtin:emotion-fer7); with one, that model alone."""
    from emokp_ray.builtin import DEFAULT_EMOTION, DEFAULT_KEYPOINTS

    if args.keypoints is None and args.emotion is None:
        return DEFAULT_KEYPOINTS, DEFAULT_EMOTION
    return args.keypoints, args.emotion


def _cmd_predict(args: argparse.Namespace) -> None:
    from emokp_ray.inference.quick import run_predict

    run_predict(
        args.images,
        *_model_pair(args),
        as_json=args.json,
        annotate_dir=args.annotate,
        detect=args.detect,
        flip_tta=not args.no_flip_tta,
        backend=args.backend,
        detector=args.detector,
        detector_threshold=args.detector_threshold,
        fps=args.fps,
    )


def _cmd_models(args: argparse.Namespace) -> None:
    from emokp_ray.inference.quick import describe_builtin_models

    print(describe_builtin_models(as_json=args.json))


def _cmd_label(args: argparse.Namespace) -> None:
    from emokp_ray.inference.label import run_label

    summary = run_label(
        args.input,
        *_model_pair(args),
        args.out,
        jsonl=args.jsonl,
        annotate_dir=args.annotate,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        use_gpu=args.gpu,
        detect=args.detect,
        num_cpus=args.cpus_per_actor,
        threads=args.threads,
        resume=args.resume,
        stages=args.stages,
        backend=args.backend,
        trust_torchscript=args.trust_torchscript,
        detector=args.detector,
        detector_threshold=args.detector_threshold,
        fps=args.fps,
        **({} if args.frames_per_range is None else {"frames_per_range": args.frames_per_range}),
    )
    print(summary)
    failure = summary.failure(args.max_error_fraction)  # after the summary is written and shown
    if failure:
        raise UserError(failure)


def _cmd_serve(args: argparse.Namespace) -> None:
    from emokp_ray.serving.run import run_serve

    run_serve(
        *_model_pair(args),
        host=args.host,
        port=args.port,
        max_batch_size=args.max_batch_size,
        device=args.device,
        trust_torchscript=args.trust_torchscript,
        backend=args.backend,
        detector=args.detector,
        detector_threshold=args.detector_threshold,
        # 0 turns each of these off (None in AppArgs)
        max_queue_wait_s=args.max_queue_wait_s or None,
        max_faces_per_image=args.max_faces_per_image or None,
        annotate_max_side=args.annotate_max_side,
        max_annotation_bytes=args.max_annotation_bytes,
        trim_memory_idle_s=args.trim_memory_idle_s or None,
    )


def _cmd_export(args: argparse.Namespace) -> None:
    from emokp_ray.artifacts.export import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.out, fmt=args.format)
    print(f"exported {args.checkpoint} -> {path} ({args.format})")


def _cmd_demo(args: argparse.Namespace) -> None:
    from emokp_ray.demo import run_demo

    run_demo(args.out, quick=args.quick)


# ----------------------------------------------------------------------------- parser


_Subcommands = argparse._SubParsersAction  # what add_subparsers returns; each _add_* adds one command to it


def _add_data(sub: _Subcommands) -> None:
    """`emokp data prepare|synth`."""
    data = sub.add_parser("data", help="prepare Kaggle CSVs or synthesize faces into Parquet")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", parser_class=_Parser)
    data_sub.required = True
    _add_data_prepare(data_sub)
    _add_data_synth(data_sub)


def _add_data_prepare(data_sub: _Subcommands) -> None:
    """`emokp data prepare INPUT... --out DIR`: Kaggle CSVs into a Parquet data set."""
    prep = data_sub.add_parser(
        "prepare",
        help="Kaggle CSV(s), image folders or keypoint listings -> Parquet data set",
        description="Read FER2013 (fer2013.csv, icml_face_data.csv, 2-column) or Facial "
        "Keypoints (training.csv, data.csv, test.csv) files, plain or .gz, folders of face images "
        "named by emotion (ROOT/happy/..., or ROOT/train|val|test/happy/...) and keypoint listings "
        "(CSV or Parquet: a `path` column and Kaggle's 30 keypoint columns) into one Parquet data "
        "set with train/val/test splits. Photos go through face detection (the largest face).",
    )
    prep.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="Kaggle .csv/.csv.gz files, image folders, keypoint listings"
    )
    prep.add_argument("--out", required=True, metavar="DIR", help="output data set directory (replaced atomically)")
    prep.add_argument("--scheme", default=None, choices=["seed5", "fer7"], help="emotion label scheme (default: seed5)")
    prep.add_argument(
        "--classes",
        metavar="A,B,...",
        help="image folders: your own emotion classes, in this order (instead of --scheme), e.g. calm,excited,bored",
    )
    prep.add_argument(
        "--detect",
        default="auto",
        choices=["auto", "crop", "detect"],
        help="images: auto (a square image up to 128 px is a face crop, others are searched for faces), "
        "crop (every image is a face crop) or detect (default: auto)",
    )
    prep.add_argument(
        "--detector", default="mtcnn", choices=["mtcnn", "haar"], help="face detector for photos (default: mtcnn)"
    )
    prep.add_argument("--strict", action="store_true", help="stop at the first bad row (default: skip and report them)")
    prep.add_argument(
        "--seed", type=_seed, default=0, help="seed of the stratified split (files without a Usage column)"
    )
    prep.add_argument(
        "--val-fraction",
        type=_fraction,
        default=0.1,
        help="seeded, stratified validation share of FER's Training rows or of a file without a Usage column (default 0.1)",
    )
    prep.add_argument(
        "--test-fraction",
        type=_fraction,
        default=0.1,
        help="seeded test share of a file without a Usage column (default 0.1; FER's test is PublicTest)",
    )
    prep.add_argument(
        "--people",
        metavar="FILE",
        help="keypoint file: a `row,person` CSV naming the person in each data row; whole people go to "
        "each split (default: NAME_people.csv beside the input when it exists, else near-duplicate groups)",
    )
    prep.add_argument(
        "--keep-near-duplicates",
        action="store_true",
        help="keypoint files: split row by row instead of keeping near-duplicate faces (frames of one video) in one split",
    )
    prep.set_defaults(func=_cmd_data_prepare)


def _add_data_synth(data_sub: _Subcommands) -> None:
    """`emokp data synth --out DIR`: synthetic faces into a Parquet data set."""
    synth = data_sub.add_parser("synth", help="draw synthetic 96x96 faces with exact keypoints and 5 emotions")
    synth.add_argument("--out", required=True, metavar="DIR", help="output data set directory (replaced atomically)")
    synth.add_argument("--n", type=_positive_int, default=5000, help="number of faces (default 5000)")
    synth.add_argument("--seed", type=_seed, default=0, help="seed (same seed, same bytes)")
    synth.add_argument("--val-fraction", type=_fraction, default=0.1, help="validation share (default 0.1)")
    synth.add_argument("--test-fraction", type=_fraction, default=0.0, help="test share (default 0)")
    synth.set_defaults(func=_cmd_data_synth)


def _add_train(sub: _Subcommands) -> None:
    """`emokp train TASK --data DIR --out RUN_DIR [--recipe NAME] [one flag per TrainConfig field]`."""
    train = sub.add_parser("train", help="train the keypoint or emotion model (Ray Train + Ray Data, or --no-ray)")
    train.add_argument("task", choices=TASKS)
    train.add_argument("--data", required=True, metavar="DIR", help="prepared data set (local path or URI)")
    train.add_argument(
        "--out", required=True, metavar="RUN_DIR", help="run directory: best/, metrics.jsonl, config.json"
    )
    names = " | ".join(dict.fromkeys(name for task in TASKS for name in recipe_names(task)))
    train.add_argument(
        "--recipe",
        default=None,
        metavar="NAME",
        help=f"named preset of the options below: {names} (default: {DEFAULT_RECIPE}; "
        "see emokp_ray/training/recipes.py); a flag given here overrides the recipe's value",
    )
    _add_train_options(train)
    train.set_defaults(func=_cmd_train)


def _add_train_options(train: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field: `--field-name` (or _TRAIN_FLAG_NAMES), the field's type, its
    CHOICES, its sign checked (POSITIVE, NON_NEGATIVE), its help the field's comment and the default
    it gets. A flag's own default is None, "not given", so the recipe's value stands unless a flag
    overrides it; booleans are --x / --no-x (either way over a recipe), a field named no_x only --no-x."""
    group = train.add_argument_group(
        "training options", "the fields of TrainConfig (emokp_ray/training/config.py), over the recipe's values"
    )
    comments = _field_comments(TrainConfig)
    kinds = get_type_hints(TrainConfig)
    recipe = {task: recipe_values(task, DEFAULT_RECIPE) for task in TASKS}
    for field in _train_flag_fields():
        flag = _TRAIN_FLAG_NAMES.get(field.name, "--" + field.name.replace("_", "-"))
        default = f"({_default_text(field.name, field.default, recipe)})"
        help_text = f"{comments[field.name]} {default}" if field.name in comments else default
        help_text = help_text.replace("%", "%%")  # argparse %-formats help
        kind = kinds[field.name]
        if kind in (bool, bool | None):
            action = "store_true" if field.name.startswith("no_") else argparse.BooleanOptionalAction
            group.add_argument(flag, dest=field.name, action=action, default=None, help=help_text)
        elif kind in (int, float, str):
            group.add_argument(
                flag,
                dest=field.name,
                type=_option_type(field.name, kind),
                choices=CHOICES.get(field.name),
                default=None,
                help=help_text,
            )
        else:
            raise TypeError(f"TrainConfig.{field.name}: no flag for a field of type {kind}")


def _option_type(name: str, kind: Callable[[str], Any]) -> Callable[[str], Any]:
    if name in POSITIVE:
        return _bounded(kind, positive=True)
    if name in NON_NEGATIVE:
        return _bounded(kind, positive=False)
    return kind


def _default_text(name: str, default: Any, recipe: dict[str, dict[str, Any]]) -> str:
    """The default a flag shows: its field's, or the value per task where the default recipe sets one."""
    by_task = {task: values.get(name, default) for task, values in recipe.items()}
    if all(value == default for value in by_task.values()):
        return f"default: {_shown(default)}"
    return f"default, recipe {DEFAULT_RECIPE}: " + ", ".join(f"{task} {_shown(v)}" for task, v in by_task.items())


def _shown(value: Any) -> str:
    return '""' if value == "" else str(value)


_LAYOUT_TOKENS = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}


def _field_comments(cls: type) -> dict[str, str]:
    """The comment of each field of the dataclass `cls`, read from its source: the comment after the
    field, continued by the comment lines right under it (a blank line, code or a `# ---` heading
    ends it). {} where the source is not available (bytecode-only installs, classes made by exec)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
        (class_def,) = ast.parse(source).body
    except (OSError, TypeError, SyntaxError, tokenize.TokenError, ValueError):
        return {}
    if not isinstance(class_def, ast.ClassDef):
        return {}
    comments: dict[int, str] = {}  # line number -> the comment's text
    code: set[int] = set()  # line numbers that hold code
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in _LAYOUT_TOKENS:
            code.update(range(tok.start[0], tok.end[0] + 1))
    found = {}
    for node in class_def.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        last = node.end_lineno or node.lineno
        parts = [comments[n] for n in range(node.lineno, last + 1) if n in comments]
        line = last + 1
        while parts and line in comments and line not in code and not comments[line].startswith("---"):
            parts.append(comments[line])
            line += 1
        if parts:
            found[node.target.id] = " ".join(parts)
    return found


def _add_evaluate(sub: _Subcommands) -> None:
    """`emokp evaluate --checkpoint CKPT --data DATA --out REPORT_DIR`."""
    ev = sub.add_parser("evaluate", help="report.json and figures for a checkpoint on a data set or Kaggle CSV")
    ev.add_argument(
        "--checkpoint",
        required=True,
        metavar="CKPT",
        help="checkpoint dir, RUN_DIR (uses RUN_DIR/best), exported file or builtin:NAME",
    )
    ev.add_argument("--data", required=True, metavar="DATA", help="prepared data set directory or a Kaggle CSV")
    ev.add_argument("--out", required=True, metavar="REPORT_DIR")
    ev.add_argument(
        "--split",
        default="val",
        choices=["train", "val", "test"],
        help="split of a prepared data set (default val: the one that chooses; report test)",
    )
    ev.add_argument(
        "--no-flip-tta",
        action="store_true",
        help="score the plain forward pass, without the predictor's horizontal-flip test-time augmentation",
    )
    ev.add_argument(
        "--scheme", default=None, choices=["seed5", "fer7"], help="scheme for a FER CSV (default: the checkpoint's)"
    )
    ev.add_argument("--batch-size", type=_positive_int, default=128)
    ev.add_argument("--limit-rows", type=int, default=0, help="evaluate only the first N rows (0: all)")
    ev.set_defaults(func=_cmd_evaluate)


def _add_predict(sub: _Subcommands) -> None:
    """`emokp predict IMAGE...`: a few photos in this process."""
    pred = sub.add_parser(
        "predict",
        help="keypoints and emotions for a few photos, in this process (no Ray)",
        description="One JSON object per image (faces: box, keypoints, emotion, calibrated "
        "probabilities) with --json, else one readable line per face. Without model "
        "flags the shipped release models (builtin:keypoints, builtin:emotion-fer7) are used.",
    )
    pred.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files (JPEG, PNG, WebP, BMP, GIF, TIFF, PPM) or videos (MP4, MOV, WebM, MKV, AVI)",
    )
    pred.add_argument("--keypoints", metavar="CKPT", help="keypoint model (default: builtin:keypoints)")
    pred.add_argument(
        "--emotion",
        metavar="CKPT",
        help="emotion model (default: builtin:emotion-fer7, 7 classes with neutral; builtin:emotion: seed5)",
    )
    pred.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    pred.add_argument(
        "--annotate", metavar="DIR", help="write annotated copies of the images (and videos, as MP4) into DIR"
    )
    pred.add_argument(
        "--detect",
        default="auto",
        choices=["auto", "crop", "detect"],
        help="auto: a small square image is one face crop, others are searched for faces",
    )
    pred.add_argument(
        "--no-flip-tta", action="store_true", help="one forward pass per face (faster, slightly less accurate)"
    )
    _add_detector(pred)
    _add_backend(pred)
    _add_fps(pred)
    pred.set_defaults(func=_cmd_predict)


def _add_models(sub: _Subcommands) -> None:
    """`emokp models`: the shipped release models."""
    models = sub.add_parser("models", help="the shipped release models and their test figures")
    models.add_argument("--json", action="store_true", help="release.json as it is")
    models.set_defaults(func=_cmd_models)


def _add_label(sub: _Subcommands) -> None:
    """`emokp label INPUT --out OUT`: batch labeling with Ray Data."""
    label = sub.add_parser(
        "label", help="label a folder/glob of images, a prepared data set or a Kaggle CSV (Ray Data)"
    )
    label.add_argument(
        "input",
        metavar="INPUT",
        help="image folder or glob (local or URI), prepared data set dir, Kaggle CSV, or a listing: a Parquet "
        "or CSV file with a `path` column (relative to its folder) and optional `boxes` "
        "(JSON [[x, y, w, h], ...] per image: those faces, detection skipped; [] no face; empty: detect)",
    )
    label.add_argument(
        "--keypoints",
        metavar="CKPT",
        help="keypoint checkpoint (dir, RUN_DIR, exported file or builtin:NAME; "
        "default with neither flag: builtin:keypoints)",
    )
    label.add_argument(
        "--emotion", metavar="CKPT", help="emotion checkpoint (default with neither flag: builtin:emotion-fer7)"
    )
    label.add_argument(
        "--out",
        required=True,
        metavar="OUT",
        help="output folder, a path or URI (s3://, gs://, file://): labels.parquet/ part files "
        "(+ labels.jsonl/), written by the workers; summary.json last, when complete",
    )
    label.add_argument("--jsonl", action="store_true", help="also write JSON lines")
    label.add_argument("--annotate", metavar="DIR", help="write annotated copies of the images into DIR")
    label.add_argument("--batch-size", type=_positive_int, default=32, help="images per model batch (default 32)")
    label.add_argument(
        "--concurrency",
        type=_actors,
        default=None,
        metavar="N|MIN-MAX",
        help="predictor actors, or an autoscaling range (default: one per GPU, else one per "
        "--cpus-per-actor cores of the machine or cluster)",
    )
    label.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs reserved per actor (default 1)")
    label.add_argument(
        "--threads", type=_positive_int, default=None, help="torch threads per actor (default: one per reserved CPU)"
    )
    label.add_argument(
        "--resume",
        action="store_true",
        help="finish the unfinished run in OUT (killed, interrupted): label only the inputs not yet written",
    )
    label.add_argument(
        "--max-error-fraction",
        type=_fraction,
        default=None,
        metavar="F",
        help="fail (exit 2, the output still complete) when more than this share of inputs are errors "
        "(default: fail only when no input was labelled)",
    )
    label.add_argument(
        "--stages",
        default="split",
        choices=["split", "single"],
        help="split: read/decode/detect/crop in CPU tasks, the networks in the actor pool (default); "
        "single: all of it in the actors, faster on a small CPU-only machine (benchmarks/README.md)",
    )
    label.add_argument(
        "--detect",
        default="auto",
        choices=["auto", "crop", "detect"],
        help="auto: small square images are face crops, others are searched for faces",
    )
    lgpu = label.add_mutually_exclusive_group()
    lgpu.add_argument(
        "--gpu", dest="gpu", action="store_true", default=None, help="one GPU per actor (default: when present)"
    )
    lgpu.add_argument("--no-gpu", dest="gpu", action="store_false")
    _add_detector(label)
    _add_backend(label)
    _add_fps(label)
    label.add_argument(
        "--frames-per-range",
        type=_positive_int,
        default=None,
        metavar="N",
        help="sampled frames per video range, the unit labelled in parallel (default: label_inputs.FRAMES_PER_RANGE, 32)",
    )
    label.add_argument(
        "--trust-torchscript",
        action="store_true",
        help="allow TorchScript model files: they are programs, run in the workers (only files you trust)",
    )
    label.set_defaults(func=_cmd_label)


def _add_serve(sub: _Subcommands) -> None:
    """`emokp serve`: the HTTP service."""
    srv = sub.add_parser("serve", help="serve both models over HTTP with Ray Serve (demo page at /)")
    srv.add_argument(
        "--keypoints", metavar="CKPT", help="keypoint model (default with neither flag: builtin:keypoints)"
    )
    srv.add_argument(
        "--emotion", metavar="CKPT", help="emotion model (default with neither flag: builtin:emotion-fer7)"
    )
    srv.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=_positive_int, default=8000)
    srv.add_argument("--max-batch-size", type=_positive_int, default=16, help="@serve.batch size (1 disables batching)")
    srv.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    srv.add_argument(
        "--trust-torchscript",
        action="store_true",
        help="allow TorchScript model files: they are programs, run in the server (only files you trust)",
    )
    srv.add_argument(
        "--max-queue-wait-s",
        type=_non_negative_float,
        default=2.0,
        help="admit a request only if the work ahead of it would be answered within this many seconds, "
        "else 503 at once (default 2; 0: count images only)",
    )
    srv.add_argument(
        "--max-faces-per-image",
        type=_non_negative_int,
        default=32,
        help="analyse at most this many detected faces per photo, the largest (default 32; 0: all)",
    )
    srv.add_argument(
        "--annotate-max-side", type=_positive_int, default=1600, help="annotated images' longer side, px (default 1600)"
    )
    srv.add_argument(
        "--max-annotation-bytes",
        type=_positive_int,
        default=2 * 1024 * 1024,
        help="encoded bytes of a request's annotated images (default 2 MiB)",
    )
    srv.add_argument(
        "--trim-memory-idle-s",
        type=_non_negative_float,
        default=2.0,
        help="hand freed memory back to the OS after this many idle seconds (default 2; 0: never)",
    )
    _add_detector(srv)
    _add_backend(srv)
    srv.set_defaults(func=_cmd_serve)


def _add_export(sub: _Subcommands) -> None:
    """`emokp export --checkpoint CKPT --out FILE`."""
    exp = sub.add_parser("export", help="export a checkpoint as one TorchScript (or ONNX) file")
    exp.add_argument("--checkpoint", required=True, metavar="CKPT")
    exp.add_argument("--out", required=True, metavar="FILE")
    exp.add_argument(
        "--format",
        default="torchscript",
        choices=["torchscript", "onnx", "onnx-int8", "checkpoint"],
        help="onnx / onnx-int8 need the onnx extra; onnx-int8 is calibrated on synthetic faces",
    )
    exp.set_defaults(func=_cmd_export)


def _add_demo(sub: _Subcommands) -> None:
    """`emokp demo`: the whole system on synthetic data."""
    demo = sub.add_parser("demo", help="the whole system end to end on synthetic data")
    demo.add_argument(
        "--out", default="./emokp-demo", metavar="DIR", help="everything goes under DIR (default ./emokp-demo)"
    )
    demo.add_argument("--quick", action="store_true", help="a smaller, faster run (tests)")
    demo.set_defaults(func=_cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="emokp",
        description="Facial keypoints and emotion: prepare data, train with Ray, evaluate, "
        "label at scale, serve over HTTP.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_data(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_predict(sub)
    _add_models(sub)
    _add_label(sub)
    _add_serve(sub)
    _add_export(sub)
    _add_demo(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        func: Callable[[argparse.Namespace], None] = args.func
        func(args)
    except UserError as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"emokp: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emokp: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
