"""What several benchmarks share besides the harness: the models they run, the inputs they write, the
plain in-process baseline of labeling, a free port for a local service.

Random-init course-size networks stand in for trained ones where speed is measured: speed does not
depend on the weights.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import load_average


def course_checkpoints(folder: Path, emotion_input_size: int = 48) -> tuple[str, str]:
    """The two course-size models (18.0 M and 1.2 M parameters), random init, saved as real
    checkpoints under folder; the emotion net at emotion_input_size (48: FER's own size; 96: the course's)."""
    import torch

    from emokp_ray.artifacts.checkpoint import CheckpointMeta, save_checkpoint
    from emokp_ray.models.resnet import build_model, emotion_config, keypoint_config

    torch.manual_seed(0)
    paths = []
    for name, cfg in (("keypoints", keypoint_config()), ("emotion", emotion_config(input_size=emotion_input_size))):
        meta = CheckpointMeta(model_config=cfg, run_id=f"bench-{name}", epoch=0)
        paths.append(str(save_checkpoint(folder / name, build_model(cfg).eval(), meta)))
    return paths[0], paths[1]


def served_models(models: str, out: Path) -> tuple[str, str]:
    """The keypoint and emotion checkpoints a service benchmark runs: "builtin" for the shipped pair,
    otherwise the course-size networks (emotion at 48 px) saved under out."""
    if models == "builtin":
        return "builtin:keypoints", "builtin:emotion"
    return course_checkpoints(out, emotion_input_size=48)


def write_inputs(folder: Path, n: int, kind: str) -> list[Path]:
    """n image files in folder: synthetic 96x96 crops (PNG) or synthetic photos (PNG and JPEG)."""
    from PIL import Image

    from emokp_ray.data.synth.crops import synthesize
    from emokp_ray.data.synth.photos import synthesize_photos

    folder.mkdir(parents=True)
    if kind == "crops":
        images = list(synthesize(n, seed=0).images)
        names = [f"crop_{i:05d}.png" for i in range(n)]
    else:
        images = [p.image for p in synthesize_photos(n, seed=0)]
        names = [f"photo_{i:05d}.{'png' if i % 2 == 0 else 'jpg'}" for i in range(n)]
    for name, image in zip(names, images):
        params: dict[str, Any] = {"quality": 90} if name.endswith(".jpg") else {}
        Image.fromarray(image).save(folder / name, **params)
    return [folder / name for name in names]


def plain_loop(folder: Path, keypoints: str, emotion: str, batch_size: int, mode: str, threads: int, out: Path) -> dict:
    """The same job without Ray, in this process: the same work rows, the same per-batch labeler
    (read + decode + Predictor.predict + output rows) and the same Parquet writer as `emokp label`."""
    import pyarrow.parquet as pq
    import torch

    from emokp_ray.inference.label_inputs import resolve_input, work_table
    from emokp_ray.inference.label_output import OUTPUT_SCHEMA
    from emokp_ray.inference.label_stages import BatchLabeler

    torch.set_num_threads(threads)
    started, cpu = time.perf_counter(), time.process_time()
    spec = resolve_input(str(folder))
    work = work_table(spec)
    labeler = BatchLabeler(
        keypoints,
        emotion,
        mode=mode,
        device="cpu",
        filesystem=spec.filesystem,
        threads=threads,
        batch_size=batch_size,
        backend="torch",
    )  # the baseline: eager torch, as before backends
    out.mkdir(parents=True, exist_ok=True)
    first, n, errors = None, 0, 0
    with pq.ParquetWriter(out / "labels.parquet", OUTPUT_SCHEMA) as writer:
        for lo in range(0, work.num_rows, batch_size):
            table = labeler(work.slice(lo, batch_size))
            writer.write_table(table)
            n += int((table["face_index"].to_numpy() <= 0).sum())
            errors += table["status"].to_pylist().count("error")
            if first is None:
                first = (time.perf_counter() - started, n)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert n == work.num_rows and errors == 0 and first is not None
    return {
        "seconds": round(seconds, 3),
        "images_per_s": round(n / seconds, 2),
        "startup_s": round(first[0], 3),
        "steady_images_per_s": round((n - first[1]) / (seconds - first[0]), 2),
        "cpu_ms_per_image": round(1000 * cpu / n, 2),
        "load_1m": load_average(),
    }


def crop_png() -> bytes:
    """One synthetic 96x96 grey face crop as PNG bytes: the request body of the service benchmarks."""
    import io

    from PIL import Image

    from emokp_ray.data.synth.crops import synthesize

    buffer = io.BytesIO()
    Image.fromarray(synthesize(1, seed=7).images[0]).save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def replica_rss(app: str) -> dict[str, int]:
    """{'Ingress#pid': RSS bytes, ...} of `app`'s Serve replica processes (Linux /proc)."""
    out: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            if not title.startswith(f"ray::ServeReplica:{app}:"):
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    # "FaceModel", or "FaceModel.handle_request_with_rejection" while Ray's title
                    # names the method running: one series per process either way.
                    deployment = title.split(":")[-1].split()[0].split(".")[0]
                    out[f"{deployment}#{entry.name}"] = int(line.split()[1]) * 1024
        except OSError:
            continue
    return out
