"""In-process latency of `Predictor.predict_crops` on ONE 96x96 crop with the course models
(18.0M-parameter keypoint ResNet at 96, 1.17M-parameter emotion ResNet at 48; random init: the
latency does not depend on the weights), the unit of work behind one Serve request.

    python benchmarks/predict_latency.py                 # median of 50 after 10 warm-up calls
    python benchmarks/predict_latency.py --threads 1 --n 100

Also times the bare keypoint forward in three layouts (contiguous weights, channels_last weights as
the predictor uses, a frozen TorchScript trace) to show what each inference option buys.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for the harness
from benchmarks.harness import add_out_argument, median_ms, save, timings


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="timed calls (default 50)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    add_out_argument(parser, "predict_latency")
    return parser


def median_cpu_ms(fn, n: int) -> float:
    """Median process CPU milliseconds of fn(): on a machine shared with other work, a proxy for the
    latency on an idle core (exact with --threads 1; with more threads it adds their spin-waits)."""
    return round(statistics.median(timings(fn, n, warmup=0, clock=time.process_time)) * 1e3, 2)


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    import numpy as np
    import torch

    from emokp_ray.artifacts.checkpoint import CheckpointMeta, LoadedCheckpoint
    from emokp_ray.inference.predictor import Predictor
    from emokp_ray.models.resnet import build_model, emotion_config, keypoint_config, num_parameters

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kp_cfg, em_cfg = keypoint_config(), emotion_config(input_size=48)
    kp_model, em_model = build_model(kp_cfg).eval(), build_model(em_cfg).eval()
    predictor = Predictor(
        LoadedCheckpoint(
            kp_model, CheckpointMeta(model_config=kp_cfg, run_id="course-random"), Path("course-keypoints")
        ),
        LoadedCheckpoint(em_model, CheckpointMeta(model_config=em_cfg, run_id="course-random"), Path("course-emotion")),
    )
    crop = np.random.default_rng(0).integers(0, 256, (1, 96, 96), dtype=np.uint8)
    report = {
        "threads": torch.get_num_threads(),
        "keypoint_params": num_parameters(kp_model),
        "emotion_params": num_parameters(em_model),
        "predict_crops_1x96_ms_median": median_ms(lambda: predictor.predict_crops(crop), args.n, args.warmup),
        "predict_crops_1x96_cpu_ms_median": median_cpu_ms(lambda: predictor.predict_crops(crop), args.n),
    }
    # The keypoint net alone, three ways (inference_mode throughout).
    x = torch.from_numpy(crop).unsqueeze(1)
    plain = build_model(kp_cfg).eval()
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report["keypoint_forward_contiguous_ms"] = median_ms(lambda: plain(x), args.n, args.warmup)
        report["keypoint_forward_channels_last_ms"] = median_ms(lambda: kp_model(x), args.n, args.warmup)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(plain, x)))
        report["keypoint_forward_frozen_trace_ms"] = median_ms(lambda: frozen(x), args.n, args.warmup)
        report["emotion_forward_48_ms"] = median_ms(
            lambda: em_model(torch.from_numpy(crop[:, ::2, ::2].copy()).unsqueeze(1)), args.n, args.warmup
        )
    print(json.dumps(report, indent=1))
    return save(report, args.out)


if __name__ == "__main__":
    main()
