"""Service soak: thousands of requests (real photos and faces, mixed with bad inputs) against one
Serve app, recording every replica's resident memory (RSS) over time: it must not grow per request.

    python benchmarks/serve_soak.py                      # 10,000 requests, ~10-30 minutes on 2 busy cores
    python benchmarks/serve_soak.py --requests 2000 --concurrency 4

The app is serve/config.yaml's (default limits and batching, course-size networks with random
weights, detection on), one replica per deployment. The requests cycle through a fixed mix, with
`--concurrency` closed-loop aiohttp clients on 127.0.0.1:

  * real faces: 48x48 FER2013 crops read at run time from ../shared/data (never copied into the
    repo; synthetic 96x96 crops where the data is absent), as PNG bodies;
  * real photos: the openly licensed pictures in emokp_ray/photos/ (face detection), some with
    annotate=true, and a synthetic 480x360 photo with 3 faces;
  * a batch request of 3 crops;
  * bad inputs: a truncated JPEG, plain text, malformed JSON, a box outside the image, a PNG whose
    header declares 400 M pixels, an EPS file, too many images, nested JSON.

Every `--sample-every` requests the RSS of each replica process (Linux: /proc/PID/status VmRSS of
the `ray::ServeReplica:soak:*` processes) is recorded. The bound (stated, checked, saved): after the
first `--warmup` requests, no replica's RSS grows by more than --max-growth-mib (default 64 MiB)
by the end, and the least-squares slope of its RSS over the second half of the run stays under
--max-slope-kib (default 1 KiB per request, i.e. < 10 MiB per 10,000 requests).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import io
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for the harness
from benchmarks.fixtures import free_port, replica_rss, served_models
from benchmarks.harness import REPO, add_out_argument, save

FER_CSV = REPO.parent / "shared" / "data" / "fer2013" / "fer2013.csv.gz"
APP = "soak"
MiB = 1024 * 1024


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000, help="requests in all (default 10000)")
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop clients (default 8)")
    parser.add_argument("--warmup", type=int, default=1000, help="requests before the RSS baseline (default 1000)")
    parser.add_argument("--sample-every", type=int, default=250, help="requests between RSS samples (default 250)")
    parser.add_argument(
        "--max-growth-mib", type=float, default=64.0, help="allowed RSS growth per replica after warm-up (MiB)"
    )
    parser.add_argument(
        "--max-slope-kib", type=float, default=1.0, help="allowed RSS slope over the second half (KiB per request)"
    )
    add_out_argument(parser, "serve_soak")
    return parser


# ----------------------------------------------------------------------------- the request mix


def _png(array) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(array) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A valid grey PNG of width x height black pixels (~400 KB at 20000x20000; 400 MB decoded)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    deflate = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n0 0 moveto 64 64 lineto stroke\nshowpage\n%%EOF\n"


def fer_faces(n: int) -> tuple[list[bytes], str]:
    """Up to n real 48x48 faces from FER2013 as PNGs, or synthetic crops where the data is absent."""
    import numpy as np

    if FER_CSV.is_file():
        faces = []
        with gzip.open(FER_CSV, "rt") as lines:
            next(lines)
            for line in lines:
                pixels = line.split(",")[1]
                faces.append(_png(np.array(pixels.split(), dtype=np.uint8).reshape(48, 48)))
                if len(faces) == n:
                    break
        return faces, f"{len(faces)} FER2013 faces (48x48) from {FER_CSV}"
    from emokp_ray.data.synth.crops import synthesize

    return [_png(image) for image in synthesize(n, seed=3).images], f"{n} synthetic 96x96 crops (FER2013 not found)"


def request_mix() -> tuple[list[dict], dict]:
    """The cycle of requests: dicts of route, body, headers, params, the status expected."""
    import numpy as np

    from emokp_ray.data.synth.photos import synthesize_photos

    faces, faces_from = fer_faces(200)
    photos = sorted((REPO / "emokp_ray" / "photos").glob("*.jpg"))
    photo_bytes = [p.read_bytes() for p in photos]
    synthetic = jpeg(synthesize_photos(4, seed=0)[3].image)
    b64 = base64.b64encode(faces[0]).decode()
    png_type = {"Content-Type": "image/png"}
    json_type = {"Content-Type": "application/json"}

    def post(route, body, headers, status, params=None, kind=""):
        return {
            "route": route,
            "body": body,
            "headers": headers,
            "status": status,
            "params": params or {},
            "kind": kind,
        }

    mix: list[dict] = []
    for i in range(20):  # 20 faces
        mix.append(post("/v1/predict", faces[i % len(faces)], png_type, 200, kind="face"))
    for i, data in enumerate(photo_bytes):  # real photos, one annotated
        mix.append(
            post(
                "/v1/predict",
                data,
                {"Content-Type": "image/jpeg"},
                200,
                {"annotate": "true"} if i == 0 else None,
                "photo",
            )
        )
    mix.append(post("/v1/predict", synthetic, {"Content-Type": "image/jpeg"}, 200, kind="photo"))
    mix.append(
        post(
            "/v1/predict/batch",
            json.dumps({"images": [{"image_base64": b64}] * 3}).encode(),
            json_type,
            200,
            kind="batch",
        )
    )
    truncated = jpeg(np.random.default_rng(0).integers(0, 256, (120, 160), dtype=np.uint8))[:-500]
    mix += [
        post("/v1/predict", truncated, {"Content-Type": "image/jpeg"}, 400, kind="bad"),
        post("/v1/predict", b"plain text, not an image", png_type, 415, kind="bad"),
        post("/v1/predict", b"{oops", json_type, 400, kind="bad"),
        post("/v1/predict", faces[1], png_type, 422, {"boxes": "[[500, 500, 10, 10]]"}, "bad"),
        post("/v1/predict", png_bomb(20_000, 20_000), png_type, 413, kind="bad"),
        post("/v1/predict", EPS, png_type, 415, kind="bad"),
        post(
            "/v1/predict/batch",
            json.dumps({"images": [{"image_base64": b64}] * 40}).encode(),
            json_type,
            413,
            kind="bad",
        ),
        post("/v1/predict", b"[" * 5000 + b"]" * 5000, json_type, 400, kind="bad"),
    ]
    about = {
        "faces": faces_from,
        "photos": [p.name for p in photos] + ["synthetic 480x360, 3 faces"],
        "cycle": {kind: sum(m["kind"] == kind for m in mix) for kind in ("face", "photo", "batch", "bad")},
    }
    return mix, about


# ----------------------------------------------------------------------------- replica memory


def slope_per_request(points: list[tuple[int, int]]) -> float:
    """Least-squares slope of (requests done, RSS bytes), in bytes per request."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else 0.0


# ----------------------------------------------------------------------------- the run


async def soak(base: str, mix: list[dict], args: argparse.Namespace) -> dict:
    import aiohttp

    done = 0
    wrong: dict[str, int] = {}
    statuses: dict[int, int] = {}
    samples: list[dict] = []
    started = time.perf_counter()
    next_index = 0

    def sample() -> None:
        samples.append({"requests": done, "seconds": round(time.perf_counter() - started, 1), "rss": replica_rss(APP)})

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done, next_index
        while next_index < args.requests:
            item = mix[next_index % len(mix)]
            next_index += 1
            async with session.post(
                base + item["route"], data=item["body"], headers=item["headers"], params=item["params"]
            ) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status != item["status"] and response.status != 503:  # 503: overload, allowed
                    key = f"{item['route']} {item['kind']}: {item['status']} -> {response.status}"
                    wrong[key] = wrong.get(key, 0) + 1
            done += 1
            if done % args.sample_every == 0:
                sample()

    sample()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=args.concurrency), timeout=aiohttp.ClientTimeout(total=120)
    ) as session:
        await asyncio.gather(*(worker(session) for _ in range(args.concurrency)))
    sample()
    return {
        "requests": done,
        "seconds": round(time.perf_counter() - started, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "unexpected_statuses": wrong,
        "samples": samples,
    }


def verdict(samples: list[dict], args: argparse.Namespace) -> dict:
    """Per replica: RSS after warm-up, at the end, growth and the second half's slope, against the bound."""
    replicas = sorted({name for s in samples for name in s["rss"]})
    total = samples[-1]["requests"]
    out = {}
    for name in replicas:
        series = [(s["requests"], s["rss"][name]) for s in samples if name in s["rss"]]
        after_warmup = [p for p in series if p[0] >= args.warmup] or series
        base, end = after_warmup[0][1], series[-1][1]
        second_half = [p for p in series if p[0] >= total / 2]
        slope = slope_per_request(second_half)
        out[name] = {
            "rss_start_mib": round(series[0][1] / MiB, 1),
            "rss_after_warmup_mib": round(base / MiB, 1),
            "rss_end_mib": round(end / MiB, 1),
            "rss_max_mib": round(max(y for _, y in series) / MiB, 1),
            "growth_after_warmup_mib": round((end - base) / MiB, 1),
            "slope_second_half_kib_per_request": round(slope / 1024, 3),
            "within_bound": (end - base) / MiB <= args.max_growth_mib and slope / 1024 <= args.max_slope_kib,
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    import ray
    from ray import serve

    from emokp_ray.ray_utils import init_ray
    from emokp_ray.serving.app import compose
    from emokp_ray.serving.schemas import AppArgs

    mix, about = request_mix()
    with tempfile.TemporaryDirectory(prefix="serve-soak-") as tmp:
        kp, em = served_models("course", Path(tmp))
        init_ray()
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            fixed = {"num_replicas": 1, "autoscaling_config": None}
            serve.run(
                compose(AppArgs(keypoints=str(kp), emotion=str(em)), model_options=fixed, ingress_options=fixed),
                name=APP,
                route_prefix="/",
            )
            run = asyncio.run(soak(f"http://127.0.0.1:{port}", mix, args))
        finally:
            serve.shutdown()
            ray.shutdown()
    replicas = verdict(run["samples"], args)
    result = {
        "app": "serve/config.yaml defaults, course networks (random init), detection on, 1 ingress + 1 model replica",
        "inputs": about,
        "concurrency": args.concurrency,
        "bound": {
            "warmup_requests": args.warmup,
            "max_growth_mib": args.max_growth_mib,
            "max_slope_kib_per_request": args.max_slope_kib,
        },
        **{k: v for k, v in run.items() if k != "samples"},
        "requests_per_s": round(run["requests"] / run["seconds"], 1),
        "replicas": replicas,
        "within_bound": all(r["within_bound"] for r in replicas.values()) and bool(replicas),
        "samples": run["samples"],
    }
    print(
        f"{run['requests']} requests in {run['seconds']} s ({result['requests_per_s']} req/s), statuses {run['statuses']}"
    )
    if run["unexpected_statuses"]:
        print(f"unexpected statuses: {run['unexpected_statuses']}")
    for name, r in replicas.items():
        print(
            f"  {name:<18} RSS {r['rss_start_mib']:.0f} -> {r['rss_after_warmup_mib']:.0f} (after {args.warmup}) -> {r['rss_end_mib']:.0f} MiB, "
            f"growth {r['growth_after_warmup_mib']:+.1f} MiB, slope {r['slope_second_half_kib_per_request']:+.3f} KiB/request: "
            f"{'within' if r['within_bound'] else 'OVER'} the bound"
        )
    return save(result, args.out)


if __name__ == "__main__":
    main()
