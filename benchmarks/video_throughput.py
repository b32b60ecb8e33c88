"""Video frames per second end to end: decoding alone, `emokp predict`'s loop and `emokp label`, on one
generated clip, side by side in one run.

    python benchmarks/video_throughput.py                                 # 160 frames, 640x360, 30 fps, 2 rounds
    python benchmarks/video_throughput.py --frames 600 --ranges 16,1000   # longer clip

The clip: the bundled photo moved across a 640x360 frame and turned by up to 12 degrees, one step per
frame (video.write_moving_photo_clip, H.264 in MP4, a key frame a second). Every frame is labelled
(fps "all"), by the builtin models with MTCNN detection, as users get them. Measured, in this order:

  decode        video.iter_frames over every frame (PyAV, to RGB arrays): the ceiling of the rest
  predict       video.predict_video with the Predictor (what `emokp predict CLIP --fps all` and
                FaceAnalyzer.video run after loading the models): decode + detect + both networks,
                8 frames per predictor call; models loaded before the clock starts
  label R       run_label on a folder holding the clip (Ray Data, a local Ray started once before),
                frame ranges of R sampled frames: each range is a stage-A task, so R below the clip's
                length lets several tasks decode and detect at once; frames/s from the start of the
                Ray Data pipeline to the last part written (the summary's `seconds`), and steady
                (after the first part)

The local Ray has --cpus logical CPUs and --concurrency network actors (1 CPU each); what is left
runs stage-A tasks (1 CPU each): with the defaults, two ranges are decoded and searched at once.
Every round runs each variant once, in the order above; ratios are against `predict` of the same
round, medians over the rounds (the machine is shared: compare within a run).
Results: benchmarks/results/video_throughput.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for the harness
from benchmarks.harness import REPO, add_out_argument, load_average, save


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=160, help="frames in the clip (default 160)")
    parser.add_argument("--rate", type=float, default=30.0, help="the clip's frame rate (default 30)")
    parser.add_argument("--size", default="640x360", help="frame size WxH (default 640x360)")
    parser.add_argument(
        "--ranges",
        default="16,100000",
        help="comma-separated sampled frames per label range (default 16 and 100000: one range)",
    )
    parser.add_argument("--cpus", type=int, default=4, help="logical CPUs of the local Ray (default 4)")
    parser.add_argument(
        "--concurrency", type=int, default=1, help="network actors (default 1: the networks are the cheap part)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every variant, interleaved (default 2)")
    add_out_argument(parser, "video_throughput")
    return parser


def _rate(frames: int, seconds: float) -> float:
    return round(frames / seconds, 2) if seconds > 0 else 0.0


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    from emokp_ray.builtin import DEFAULT_EMOTION, DEFAULT_KEYPOINTS
    from emokp_ray.inference import video as V
    from emokp_ray.inference.predictor import Predictor

    width, height = (int(v) for v in args.size.lower().split("x"))
    result: dict[str, Any] = {
        "load_at_start": load_average(),
        "clip": {"frames": args.frames, "rate": args.rate, "size": [width, height], "codec": "h264"},
        "models": [DEFAULT_KEYPOINTS, DEFAULT_EMOTION],
        "detector": "mtcnn",
    }
    with tempfile.TemporaryDirectory(prefix="emokp-video-") as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        clip = folder / "clip.mp4"
        photo = REPO / "emokp_ray" / "photos" / "grace_hopper_us_navy.jpg"
        V.write_moving_photo_clip(clip, photo, frames=args.frames, rate=args.rate, size=(width, height))

        predictor = Predictor.from_paths(DEFAULT_KEYPOINTS, DEFAULT_EMOTION, device="cpu", detect=True)
        from emokp_ray.inference.label import run_label
        from emokp_ray.ray_utils import init_ray

        init_ray(num_cpus=args.cpus, object_store_memory=1_000_000_000)
        result["rounds"] = []
        for round_index in range(args.rounds):
            result["rounds"].append(_round(args, V, predictor, run_label, folder, clip, Path(tmp), round_index))
    result["median"] = _medians(result["rounds"])
    print("medians: " + ", ".join(f"{k} {v:.2f}" for k, v in result["median"].items()), flush=True)
    save(result, args.out)
    return 0


def _medians(rounds: list[dict]) -> dict[str, float]:
    """Median frames/s of each variant and of each label variant's ratio to predict, over the rounds."""
    import statistics

    values: dict[str, list[float]] = {}
    for one in rounds:
        values.setdefault("decode_frames_per_s", []).append(one["decode"]["frames_per_s"])
        values.setdefault("predict_frames_per_s", []).append(one["predict"]["frames_per_s"])
        for row in one["label"]:
            key = f"label_{row['ranges']}_ranges"
            values.setdefault(f"{key}_frames_per_s", []).append(row["frames_per_s"])
            values.setdefault(f"{key}_ratio_to_predict", []).append(row["ratio_to_predict"])
    return {k: round(statistics.median(v), 3) for k, v in values.items()}


def _round(args, V, predictor, run_label, folder: Path, clip: Path, tmp: Path, round_index: int) -> dict:
    """Every variant once: decode, predict, then label with each --ranges value."""
    from emokp_ray.builtin import DEFAULT_EMOTION, DEFAULT_KEYPOINTS

    out: dict[str, Any] = {"load_at_start": load_average()}
    start = time.perf_counter()
    decoded = sum(1 for _ in V.iter_frames(clip, fps=None))
    out["decode"] = {"frames": decoded, "frames_per_s": _rate(decoded, time.perf_counter() - start)}
    print(f"round {round_index}: decode   {out['decode']['frames_per_s']:8.1f} frames/s ({decoded} frames)", flush=True)

    start = time.perf_counter()
    predicted = faces = 0
    for _, frame_result in V.predict_video(predictor, clip, fps=None):
        predicted += 1
        faces += len(frame_result.faces)
    seconds = time.perf_counter() - start
    out["predict"] = {"frames": predicted, "faces": faces, "frames_per_s": _rate(predicted, seconds)}
    base = out["predict"]["frames_per_s"]
    print(f"round {round_index}: predict  {base:8.1f} frames/s ({faces} faces)", flush=True)
    out["label"] = []
    for per_range in (int(v) for v in args.ranges.split(",")):
        summary = run_label(
            str(folder),
            DEFAULT_KEYPOINTS,
            DEFAULT_EMOTION,
            str(tmp / f"out-{round_index}-{per_range}"),
            fps=None,
            frames_per_range=per_range,
            concurrency=args.concurrency,
            progress=False,
        )
        ranges = -(-args.frames // min(per_range, args.frames))
        row = {
            "frames_per_range": per_range,
            "ranges": ranges,
            "frames": summary.frames,
            "faces": summary.faces,
            "seconds": summary.seconds,
            "frames_per_s": summary.frames_per_s,
            "startup_s": summary.startup_s,  # to the first part written
            "actors": summary.actors,
            "ratio_to_predict": round(summary.frames_per_s / base, 3) if base else None,
        }
        out["label"].append(row)
        print(
            f"round {round_index}: label, {ranges:3d} range{'s' if ranges > 1 else ' '} {row['frames_per_s']:8.1f} "
            f"frames/s ({row['ratio_to_predict']:.2f}x predict; first part after {row['startup_s']:.1f} s)",
            flush=True,
        )
    return out


if __name__ == "__main__":
    sys.exit(main())
