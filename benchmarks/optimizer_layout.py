"""Training-step speed on CPU: memory layout (contiguous NCHW vs channels-last) x Adam (per-tensor vs fused).

    python benchmarks/optimizer_layout.py [--steps 20] [--rounds 3]

Times full optimizer steps (forward, masked-free MSE on random targets, backward, AdamW step) of the
course and small networks of both tasks on random batches of 32 at their default input sizes, each
variant side by side in the same process, alternating in --rounds rounds; the figure is the median
images/s and the ratio to the old default (contiguous, per-tensor Adam). The training loop's default
is channels-last + fused Adam (emokp_ray/training/loop.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from emokp_ray.models.resnet import build_model, model_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for the harness
from benchmarks.harness import add_out_argument, ratios, save

VARIANTS = {  # name -> (channels_last, fused Adam)
    "contiguous, per-tensor Adam": (False, False),
    "contiguous, fused Adam": (False, True),
    "channels-last, per-tensor Adam": (True, False),
    "channels-last, fused Adam": (True, True),
}
NETWORKS = [
    ("keypoints", "course", 96),
    ("emotion", "course", 48),
    ("keypoints", "small", 96),
    ("emotion", "small", 48),
]


def images_per_s(
    task: str, variant: str, size: int, channels_last: bool, fused: bool, steps: int, batch: int = 32
) -> float:
    torch.manual_seed(0)
    model = build_model(model_config(task, variant, input_size=size))
    x = torch.randn(batch, 1, size, size)
    if channels_last:
        # torch's stub of Module.to lists no memory_format overload; the method takes it.
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)
    target = torch.randn_like(model(x))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        ((model(x) - target) ** 2).mean().backward()
        optimizer.step()

    for _ in range(3):  # warm-up: allocator, oneDNN primitive caches
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=20, help="timed steps of the course keypoint net (others scale up)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    add_out_argument(parser, "optimizer_layout")
    args = parser.parse_args()
    results = {}
    for task, variant, size in NETWORKS:
        # Small networks step faster: more steps for a comparable timing window.
        steps = args.steps * {("keypoints", "course"): 1, ("emotion", "course"): 5}.get((task, variant), 8)
        runs: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(args.rounds):
            for name, (channels_last, fused) in VARIANTS.items():
                runs[name].append(images_per_s(task, variant, size, channels_last, fused, steps))
        medians = {name: statistics.median(r) for name, r in runs.items()}
        ratio = ratios(medians, "contiguous, per-tensor Adam")
        key = f"{task}/{variant} {size}x{size}"
        results[key] = {
            name: {"median_images_per_s": round(median, 1), "ratio": ratio[name]} for name, median in medians.items()
        }
        print(key)
        for name, r in results[key].items():
            print(f"  {name:32s} {r['median_images_per_s']:8.1f} images/s  {r['ratio']:.2f}x")
    report = {"batch_size": 32, "rounds": args.rounds, "threads": torch.get_num_threads(), "results": results}
    save(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
