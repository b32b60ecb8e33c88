"""`emokp predict` and `emokp models`: keypoints and emotions for a few photos in one process, no Ray.

For the user who has a handful of photos right after `pip install`: the shipped release models
(emokp_ray/builtin/) load in about a second, each photo goes through the same Predictor as batch
labeling and serving (face detection, framing, flip test-time augmentation, calibrated
probabilities). A file that cannot be read is reported on its own line and the others are still
labelled; the command exits 2 at the end if any file failed.

A video (inference/video.py: .mp4, .mov, .webm, .mkv, .avi) is sampled at `fps` frames per second
(None: every frame) and each sampled frame is answered like a photo, with its frame index and
timestamp; --annotate writes DIR/NAME.annotated.mp4 of the sampled frames.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from emokp_ray.errors import UserError
from emokp_ray.inference.video import DEFAULT_FPS
from emokp_ray.tasks import TASKS, task_spec


def _face_line(index: int, face: dict) -> str:
    x, y, w, h = (round(v) for v in face["box"])
    text = f"  face {index}: box x={x} y={y} w={w} h={h}"
    if face.get("emotion") is not None:
        p = face["probabilities"][face["emotion"]]
        text += f"  {face['emotion']} {p:.2f}"
    if face.get("keypoints"):
        eyes = [face["keypoints"].get(k) for k in ("left_eye_center", "right_eye_center")]
        if all(eyes):
            text += "  eyes " + " ".join(f"({e[0]:.0f},{e[1]:.0f})" for e in eyes)
    return text


def _models_line(models: dict) -> str:
    """One line naming the models: run id and weights version, and the emotion model's scheme."""
    parts = []
    for task in TASKS:
        info = models.get(task)
        if info:
            scheme = f", {info['label_scheme']} scheme" if info.get("label_scheme") else ""
            parts.append(f"{task} {info['run_id']} (weights {info['version']}{scheme})")
    return "models: " + "; ".join(parts)


def run_predict(
    images: Sequence[str],
    keypoints: str | None,
    emotion: str | None,
    as_json: bool = False,
    annotate_dir: str | None = None,
    detect: str = "auto",
    flip_tta: bool = True,
    out=None,
    backend: str = "auto",
    detector: str = "mtcnn",
    detector_threshold: float | None = None,
    fps: float | None = DEFAULT_FPS,
) -> int:
    """Label each image or video file; print JSON lines (as_json) or readable lines; returns the failure count.

    A user error in one file (unreadable, not an image, too large) is one line on stderr; the run goes
    on and raises a UserError naming the failures at the end, so the CLI exits 2 after the others.
    """
    from emokp_ray.inference.images import load_image_file
    from emokp_ray.inference.predictor import Predictor
    from emokp_ray.inference.video import check_fps, import_av, is_video

    out = out or sys.stdout
    fps = check_fps(fps)
    what = "files" if any(is_video(name) for name in images) else "images"
    if what == "files":
        import_av()  # PyAV missing: one error before the models load
    started = time.perf_counter()
    annotate_path = Path(annotate_dir) if annotate_dir else None
    if annotate_path is not None:
        try:
            annotate_path.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a file there, /proc, no permission, a full disk: before the models load
            raise UserError(f"--annotate {annotate_dir}: cannot create the folder ({err.strerror or err})") from None
    predictor = Predictor.from_paths(
        keypoints,
        emotion,
        device="cpu",
        detect=detect != "crop",
        backend=backend,
        detector=detector,
        detector_threshold=detector_threshold,
    )
    predictor.flip_tta = flip_tta
    models = predictor.model_info()  # which weights and scheme produced every answer below
    if not as_json:
        out.write(_models_line(models) + "\n")
    failures = []
    for name in images:
        if is_video(name):
            try:
                _predict_video(predictor, name, models, as_json, annotate_path, detect, fps, out)
            except UserError as err:
                failures.append(name)
                print(f"emokp: error: {err}", file=sys.stderr)
            continue
        try:
            image = load_image_file(name)
            result = predictor.predict([image], mode=detect)[0]
        except UserError as err:
            failures.append(name)
            print(f"emokp: error: {err}", file=sys.stderr)
            continue
        record = {"image": name, **result.to_dict(), "model": models}
        if as_json:
            out.write(json.dumps(record) + "\n")
        else:
            faces = record["faces"]
            out.write(f"{name}: {result.width}x{result.height}, {len(faces)} face{'s' if len(faces) != 1 else ''}\n")
            for i, face in enumerate(faces):
                out.write(_face_line(i, face) + "\n")
        if annotate_path is not None:
            from emokp_ray.inference.render import annotate

            target = annotate_path / (Path(name).stem + ".annotated.png")
            try:
                annotate(image, result).save(target)
            except OSError as err:  # full disk, removed folder: the answers above are already printed
                raise UserError(f"--annotate: cannot write {target} ({err.strerror or err})") from None
        out.flush()
    if not as_json:
        out.write(
            f"{len(images) - len(failures)} of {len(images)} {what} labelled in {time.perf_counter() - started:.1f} s\n"
        )
    if failures:
        raise UserError(
            f"{len(failures)} of {len(images)} {what} could not be labelled: {', '.join(failures[:5])}"
            + (" ..." if len(failures) > 5 else "")
        )
    return 0


def _predict_video(
    predictor, name: str, models: dict, as_json: bool, annotate_path: Path | None, detect: str, fps: float | None, out
) -> None:
    """One video's sampled frames, printed as they come (a frame per JSON line, or a line per frame
    and per face); with annotate_path, NAME.annotated.mp4 of the sampled frames. A VideoError (not a
    video, corrupt data) is raised after the frames decoded before it are printed."""
    from emokp_ray.inference.video import VideoWriter, output_rate, predict_video, probe_video

    info = probe_video(name)
    writer = None
    if annotate_path is not None:
        writer = VideoWriter(annotate_path / (Path(name).stem + ".annotated.mp4"), output_rate(fps, info.rate))
    frames = faces_seen = 0
    try:
        for frame, result in predict_video(predictor, name, fps, mode=detect):
            frames += 1
            faces_seen += len(result.faces)
            record = {"image": name, **result.to_dict(), "model": models}
            if as_json:
                out.write(json.dumps(record) + "\n")
            else:
                n = len(record["faces"])
                out.write(
                    f"{name}: frame {frame.index} at {frame.timestamp:.2f} s, {result.width}x{result.height}, "
                    f"{n} face{'s' if n != 1 else ''}\n"
                )
                for i, face in enumerate(record["faces"]):
                    out.write(_face_line(i, face) + "\n")
            if writer is not None:
                from emokp_ray.inference.render import annotate

                writer.write(annotate(frame.image, result))
            out.flush()
    finally:
        if writer is not None:
            try:
                writer.close()
            except OSError as err:
                raise UserError(f"--annotate: cannot write {writer.path} ({err})") from None
    if not as_json:
        rate = "every frame" if fps is None else f"{fps:g} frames/s"
        out.write(f"{name}: {frames} frames sampled ({rate}, video at {info.rate:.3g} frames/s), {faces_seen} faces\n")


def describe_builtin_models(as_json: bool = False) -> str:
    """The builtin models with their test figures (from emokp_ray/builtin/release.json)."""
    from emokp_ray.builtin import DEFAULT_EMOTION, DEFAULT_KEYPOINTS, FOLDER, NAMES, PREFIX, release_info

    info = release_info()
    if as_json:
        return json.dumps(info, indent=2, sort_keys=True)
    lines = []
    for name in NAMES:
        entry = info.get("models", {}).get(name)
        present = (FOLDER / f"{name}.pt").is_file()
        if entry is None:
            lines.append(
                f"{PREFIX}{name}: {'shipped, no release.json entry' if present else 'not in this installation'}"
            )
            continue
        test = entry.get("test", {})
        figures = task_spec(entry["task"]).release_figures(test, entry)
        calm = test.get("calm_faces")
        if calm:
            figures += f"; calls {calm['called_emotion_p50']:.0%} of neutral test faces an emotion at p >= 0.5"
        default = " (default)" if PREFIX + name in (DEFAULT_KEYPOINTS, DEFAULT_EMOTION) else ""
        lines.append(
            f"{PREFIX}{name}{default}: {entry['description']}\n    {entry['architecture']}; {figures}\n    "
            f"recipe {entry.get('recipe')}; {entry.get('size_mb', 0):.1f} MB{'' if present else '  (file missing!)'}"
        )
    card = FOLDER / "MODEL_CARD.md"
    if card.is_file():
        lines.append(f"model card: {card}")
    return "\n".join(lines)
