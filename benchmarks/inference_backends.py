"""The networks on each backend, side by side in one run: per-face latency at batch 1 and throughput
at batch 32 for torch eager (contiguous weights), torch channels-last (the torch backend), ONNX
Runtime fp32 and int8; then the keypoint and emotion passes one after the other against both at once
in two threads, as bare runners and through the Predictor (its overlap_networks off and on).
Figures are ratios against torch channels-last measured in the same rounds.

    python benchmarks/inference_backends.py                          # course nets, random weights
    python benchmarks/inference_backends.py --keypoints builtin:keypoints --emotion builtin:emotion
    python benchmarks/inference_backends.py --threads 1 --rounds 5

Rounds interleave the variants (each round times every variant for --calls calls), so background
load hits all of them alike; each figure is the median over rounds. Latency does not depend on the
weights, so random course models stand in where no checkpoint is given.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for the harness
from benchmarks.harness import add_out_argument, load_average, save, side_by_side


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keypoints", default=None, help="keypoint checkpoint (default: the course net, random weights)"
    )
    parser.add_argument(
        "--emotion", default=None, help="emotion checkpoint (default: the course net at 48 px, random weights)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch and ONNX Runtime intra-op threads (default: torch's)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--calls", type=int, default=10, help="calls per variant per round at batch 1 (batch 32: a quarter)"
    )
    add_out_argument(parser, "inference_backends")
    return parser


def load(path: str | None, task: str):
    from emokp_ray.artifacts.checkpoint import CheckpointMeta, LoadedCheckpoint
    from emokp_ray.artifacts.export import load_model
    from emokp_ray.models.resnet import build_model, emotion_config, keypoint_config

    if path:
        return load_model(path, map_location="cpu")
    cfg = keypoint_config() if task == "keypoints" else emotion_config(input_size=48)
    return LoadedCheckpoint(
        build_model(cfg).eval(), CheckpointMeta(model_config=cfg, run_id=f"course-random-{task}"), Path(task)
    )


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    import torch

    from emokp_ray.artifacts.onnx import OnnxRunner, onnx_model_for
    from emokp_ray.inference.backends import TorchRunner
    from emokp_ray.inference.predictor import Predictor
    from emokp_ray.models.resnet import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    cpu = torch.device("cpu")
    report: dict = {"threads": threads, "rounds": args.rounds, "load_average_1min_start": load_average(), "models": {}}
    runners_by_task, loaded_by_task = {}, {}
    for task, path in (("keypoints", args.keypoints), ("emotion", args.emotion)):
        loaded = loaded_by_task[task] = load(path, task)
        size = loaded.meta.input_size
        contiguous = build_model(loaded.meta.model_config).eval()
        contiguous.load_state_dict(loaded.model.state_dict())
        channels_last = (
            load(path, task).model.eval().to(memory_format=torch.channels_last)
            if path
            else _copy_channels_last(contiguous)
        )
        runners: dict[str, TorchRunner | OnnxRunner] = {
            "torch_eager": TorchRunner(contiguous, cpu),
            "torch_channels_last": TorchRunner(channels_last, cpu),
            "onnx_fp32": OnnxRunner(onnx_model_for(loaded, int8=False), threads),
            "onnx_int8": OnnxRunner(onnx_model_for(loaded, int8=True), threads),
        }
        runners_by_task[task] = (runners, size)
        row: dict = {"run_id": loaded.meta.run_id, "input_size": size}
        for batch, calls in ((1, args.calls), (32, max(1, args.calls // 4))):
            crops = np.random.default_rng(batch).integers(0, 256, (batch, size, size), dtype=np.uint8)
            seconds = side_by_side({n: functools.partial(r, crops) for n, r in runners.items()}, args.rounds, calls)
            base = seconds["torch_channels_last"]
            row[f"batch{batch}"] = {
                n: {
                    "ms_per_call": round(s * 1e3, 3),
                    "faces_per_s": round(batch / s, 1),
                    "speedup_vs_torch_channels_last": round(base / s, 2),
                }
                for n, s in seconds.items()
            }
        report["models"][task] = row
        print(json.dumps({task: row}, indent=1), flush=True)

    # Both networks per batch of faces: one after the other, or at once in two threads (each runner
    # keeps its intra-op threads; ONNX Runtime and torch release the GIL while they compute).
    report["two_networks"] = {}
    for backend in ("torch_channels_last", "onnx_fp32"):
        (kp, kp_size), (em, em_size) = (
            (r[backend], s) for r, s in (runners_by_task["keypoints"], runners_by_task["emotion"])
        )
        for batch, calls in ((1, args.calls), (32, max(1, args.calls // 4))):
            kp_crops = np.random.default_rng(0).integers(0, 256, (batch, kp_size, kp_size), dtype=np.uint8)
            em_crops = np.random.default_rng(1).integers(0, 256, (batch, em_size, em_size), dtype=np.uint8)
            seconds = side_by_side(_two_network_variants(kp, kp_crops, em, em_crops), args.rounds, calls)
            report["two_networks"][f"{backend}_batch{batch}"] = {
                "sequential_ms": round(seconds["sequential"] * 1e3, 3),
                "concurrent_ms": round(seconds["concurrent"] * 1e3, 3),
                "speedup_concurrent": round(seconds["sequential"] / seconds["concurrent"], 2),
            }
    print(json.dumps({"two_networks": report["two_networks"]}, indent=1))

    # The same through the Predictor (what predict, label and serve run: flip test-time augmentation,
    # calibrated softmax, keypoints to image pixels), its overlap_networks off and on.
    report["predictor"] = {}
    for backend in ("torch", "onnx"):
        predictors = {
            f"overlap_{'on' if on else 'off'}": Predictor(
                loaded_by_task["keypoints"], loaded_by_task["emotion"], backend=backend, overlap_networks=on
            )
            for on in (False, True)
        }
        auto_overlaps = Predictor(
            loaded_by_task["keypoints"], loaded_by_task["emotion"], backend=backend
        ).overlap_networks
        for batch, calls in ((1, args.calls), (32, max(1, args.calls // 4))):
            crops = np.random.default_rng(2).integers(0, 256, (batch, 96, 96), dtype=np.uint8)
            seconds = side_by_side(
                {name: functools.partial(p.predict_crops, crops) for name, p in predictors.items()}, args.rounds, calls
            )
            report["predictor"][f"{backend}_batch{batch}"] = {
                "overlap_off_ms": round(seconds["overlap_off"] * 1e3, 3),
                "overlap_on_ms": round(seconds["overlap_on"] * 1e3, 3),
                "speedup_overlap": round(seconds["overlap_off"] / seconds["overlap_on"], 2),
                "auto_overlaps": auto_overlaps,
            }
    print(json.dumps({"predictor": report["predictor"]}, indent=1))
    return save(report, args.out)


def _two_network_variants(kp, kp_crops: np.ndarray, em, em_crops: np.ndarray) -> dict[str, Callable[[], None]]:
    """Both runners on their crops: one after the other ("sequential") or at once in two threads."""

    def sequential() -> None:
        kp(kp_crops)
        em(em_crops)

    def concurrent() -> None:
        worker = threading.Thread(target=em, args=(em_crops,))
        worker.start()
        kp(kp_crops)
        worker.join()

    return {"sequential": sequential, "concurrent": concurrent}


def _copy_channels_last(model):
    import copy

    import torch

    return copy.deepcopy(model).to(memory_format=torch.channels_last)


if __name__ == "__main__":
    main()
