"""Load control of the Serve app (issue 31): admission by expected wait, faces counted and capped per
image, annotated images bounded in side and bytes, freed memory handed back to the OS.

The pure pieces (WaitBudget, prepare_faces' cap, annotated_image, MemoryTrimmer) are tested on their
own; the app over real HTTP on 127.0.0.1 with its own Serve start and tiny random-init checkpoints
(one app with a 1 s-per-batch model for the wait budget, one with the Haar detector and small caps).
"""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from tests.helpers import serving_model, slow_face_model, write_tiny_checkpoints

# ----------------------------------------------------------------------------- the pure pieces


def test_wait_budget_refuses_work_past_the_budget_and_admits_light_work_first():
    from emokp_ray.serving.batching import WaitBudget, job_units

    budget = WaitBudget(budget_s=1.5, concurrency=1)
    assert budget.try_enter(job_units(1)) and budget.try_enter(job_units(1))  # nothing measured yet
    budget.leave(2 * job_units(1))
    budget.record(seconds=1.0, units=job_units(1))  # 0.5 s per unit
    assert budget.seconds_per_unit == pytest.approx(0.5)
    assert budget.try_enter(job_units(1))  # 2 units: 1 s
    assert not budget.try_enter(job_units(1))  # 4 units: 2 s > 1.5 s
    heavy = budget.estimate(searched_pixels=4_000_000)  # 1 + faces + 200 units
    assert not budget.fits(heavy) and budget.fits(1.0)  # a light request still fits beside it
    budget.leave(job_units(1))
    assert budget.queued == 0 and budget.try_enter(heavy)  # an idle replica admits even the heavy one
    budget.record_faces(30)
    assert budget.faces_per_search > 1.0  # a crowd raises the next photo's estimate
    assert WaitBudget(budget_s=None, concurrency=1).try_enter(1e9)  # off: images are counted only


def test_one_huge_photo_in_flight_leaves_the_other_model_call_to_light_requests():
    from emokp_ray.serving.batching import WaitBudget, job_units

    budget = WaitBudget(budget_s=2.0, concurrency=2)
    budget.record(seconds=0.1, units=1.0)  # 0.1 s per unit
    huge = budget.estimate(searched_pixels=24_000_000)  # ~1,200 units: two minutes of one call
    assert budget.try_enter(huge)  # an idle replica admits it
    for _ in range(5):  # crops pass on the second call, up to the budget's worth
        assert budget.try_enter(job_units(1))
    assert not budget.fits(huge)  # but not a second huge photo
    budget.leave(huge)
    assert budget.fits(job_units(1)) and budget.admitted == [job_units(1)] * 5


def test_wait_budget_learns_the_time_its_model_calls_do_not_see():
    from emokp_ray.serving.batching import WaitBudget, job_units

    budget = WaitBudget(budget_s=2.0, concurrency=1)
    budget.record(seconds=0.1, units=1.0)
    assert budget.try_enter(job_units(1)) and budget.fits(job_units(1) * 4)  # (2 + 8) x 0.1 s
    for _ in range(20):  # answers take 3x what the model calls alone predict (decoding, a busy CPU)
        budget.answered(model_wait_s=1.0, seconds=3.0)
    assert budget.slowdown == pytest.approx(3.0, rel=0.05)
    assert not budget.fits(job_units(1) * 4) and budget.fits(job_units(1))  # 3 x 1 s > 2 s; 3 x 0.4 s


def test_wait_budget_sees_a_model_call_that_overruns_before_it_ends():
    from emokp_ray.serving.batching import WaitBudget

    now = [0.0]
    budget = WaitBudget(budget_s=2.0, concurrency=1, clock=lambda: now[0])
    budget.call_started(1, units=2.0)
    now[0] = 0.2
    budget.call_done(1, units=2.0)  # 0.1 s per unit
    assert budget.try_enter(2.0) and budget.fits(10.0)  # 1.2 s expected
    budget.call_started(2, units=2.0)  # the CPU is taken away: this call runs and runs
    now[0] = 4.2
    assert budget.current_seconds_per_unit() == pytest.approx(2.0)
    assert not budget.fits(1.0)  # (2 + 1) units x 2 s > 2 s, though no call has ended slowly yet
    budget.call_started(3, units=2.0)  # a second call, on time: the first alone was misjudged
    now[0] = 4.3
    assert budget.current_seconds_per_unit() == pytest.approx(0.1)
    budget.call_failed(2)
    budget.call_failed(3)
    assert budget.fits(10.0)


def test_detected_faces_past_the_cap_are_dropped_smallest_first():
    from emokp_ray.inference.detect import Detection
    from emokp_ray.inference.predictor import prepare_faces

    image = np.zeros((400, 600), np.uint8)
    sizes = [40, 120, 60, 100, 80]  # the detector's order need not be by size
    found = [Detection(box=(10.0 + 110 * i, 50.0, float(s), float(s))) for i, s in enumerate(sizes)]
    prepared = prepare_faces([image, image], {"keypoints": 96}, "detect", lambda _: found, max_faces=2)
    assert prepared.counts == [2, 2] and prepared.dropped == [3, 3]
    widths = sorted(prepared.boxes[:2, 2].tolist())
    assert len(widths) == 2 and min(widths) > 80  # the 120 and 100 px faces (re-framed a little larger)
    # caller boxes are the caller's: never dropped
    boxes = [[(0.0, 0.0, 50.0, 50.0)] * 4, None]
    given = prepare_faces([image, image], {"keypoints": 96}, "detect", lambda _: found, boxes, max_faces=2)
    assert given.counts == [4, 2] and given.dropped == [0, 3]
    assert prepare_faces([image], {"keypoints": 96}, "detect", lambda _: found).counts == [5]  # no cap


def _face_result(width: int, height: int, faces: int = 3):
    from emokp_ray.inference.results import Face, ImageResult

    return ImageResult(
        width,
        height,
        [
            Face(
                (100.0 + 300 * i, 200.0, 250.0, 250.0),
                {"nose_tip": (220.0 + 300 * i, 320.0)},
                "happiness",
                {"happiness": 0.9},
            )
            for i in range(faces)
        ],
    )


def test_annotated_image_is_scaled_down_and_fits_its_byte_budget():
    from emokp_ray.serving.app import annotated_image

    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (1500, 2000, 3), dtype=np.uint8)  # noise: the worst case for any codec
    data, media_type = annotated_image(photo, _face_result(2000, 1500), max_side=640, max_bytes=64 * 1024)
    decoded = Image.open(io.BytesIO(data))
    assert media_type == "image/jpeg" and decoded.format == "JPEG"
    assert len(data) <= 64 * 1024 and max(decoded.size) <= 640 and decoded.size[0] > decoded.size[1]
    # A small image stays an exact PNG of its own size.
    crop = rng.integers(0, 256, (96, 96), dtype=np.uint8)
    data, media_type = annotated_image(crop, _face_result(96, 96, 0), max_side=640, max_bytes=1024 * 1024)
    assert media_type == "image/png" and Image.open(io.BytesIO(data)).size == (96, 96)
    # A budget a large image cannot meet at full side: halved until it fits.
    data, media_type = annotated_image(photo, _face_result(2000, 1500), max_side=2000, max_bytes=16 * 1024)
    assert len(data) <= 16 * 1024 and max(Image.open(io.BytesIO(data)).size) < 2000


def test_memory_trimmer_waits_for_idle_then_trims_once():
    from emokp_ray.serving.process import MemoryTrimmer

    now = [0.0]
    trimmer = MemoryTrimmer(idle_s=2.0, clock=lambda: now[0])
    assert not trimmer.due(busy=False)  # no request yet: nothing to give back
    trimmer.touch()
    now[0] = 1.0
    assert not trimmer.due(busy=False)
    now[0] = 3.0
    assert trimmer.due(busy=False) and not trimmer.due(busy=True)
    assert not MemoryTrimmer(idle_s=None).due(busy=False)


TRIM_PROBE = """
import asyncio, json, threading
from emokp_ray.serving.process import MemoryTrimmer

def rss():
    return int([l for l in open("/proc/self/status") if l.startswith("VmRSS:")][0].split()[1]) * 1024

# 100 KB blocks (under glibc's mmap threshold) from a worker thread, as decoding allocates: its own
# arena. All but the last are freed; the last pins the top of the heap, so free() alone returns nothing.
kept = []
def burst():
    blocks = [bytearray(100_000) for _ in range(2000)]
    kept.append(blocks[-1])
    del blocks
worker = threading.Thread(target=burst); worker.start(); worker.join()
before = rss()

async def idle():
    trimmer = MemoryTrimmer(idle_s=0.2)
    trimmer.touch()
    trimmer.start(lambda: False)
    await asyncio.sleep(1.0)
    return trimmer.trims

trims = asyncio.run(idle())
print(json.dumps([before, rss(), trims]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim and /proc are Linux's")
def test_idle_replica_hands_a_burst_of_freed_memory_back():
    run = subprocess.run([sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, timeout=120, check=True)
    before, after, trims = json.loads(run.stdout.strip().splitlines()[-1])
    assert trims == 1
    assert before - after > 100 * 1024 * 1024, f"RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MiB"


MMAP_PROBE = """
import json, sys
from emokp_ray.serving.process import fix_mmap_threshold

def rss():
    return int([l for l in open("/proc/self/status") if l.startswith("VmRSS:")][0].split()[1]) * 1024

if sys.argv[1] == "fixed":
    fix_mmap_threshold()
big = bytearray(30_000_000); del big  # glibc's moving threshold rises to 30 MB here
buffers = [bytearray(2_000_000) for _ in range(60)]  # 120 MB of 2 MB buffers (decoded images, copies)
last = buffers[-1]  # still in use: pins the heap's top
before = rss()
del buffers
print(json.dumps([before, rss()]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and /proc are Linux's")
def test_a_fixed_mmap_threshold_returns_large_buffers_at_once():
    def freed(mode: str) -> int:
        run = subprocess.run(
            [sys.executable, "-c", MMAP_PROBE, mode], capture_output=True, text=True, timeout=120, check=True
        )
        before, after = json.loads(run.stdout.strip().splitlines()[-1])
        return before - after

    assert freed("moving") < 20 * 1024 * 1024  # glibc's default: the buffers stay in the heap
    assert freed("fixed") > 100 * 1024 * 1024  # each was its own mmap, unmapped on free


# ----------------------------------------------------------------------------- the app over HTTP

requests = pytest.importorskip("requests")


@dataclass(frozen=True)
class Apps:
    slow: str  # 1 s per batch, one batch at a time, 8 images admitted, 1.5 s expected-wait budget
    capped: str  # Haar detector, 2 faces per image, annotations of at most 256 px and 24 KiB


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def apps(ray_cluster, tmp_path_factory) -> Apps:
    from ray import serve

    from emokp_ray.serving.app import compose
    from emokp_ray.serving.schemas import AppArgs

    kp, em = write_tiny_checkpoints(tmp_path_factory.mktemp("load-ckpt"))
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    one = {"num_replicas": 1, "autoscaling_config": None, "ray_actor_options": {"num_cpus": 0.25}}
    slow = AppArgs(
        keypoints=str(kp),
        emotion=str(em),
        max_batch_size=1,
        max_concurrent_batches=1,
        max_pending_requests=8,
        max_images_per_request=2,
        max_queue_wait_s=1.5,
    )
    with serving_model(slow_face_model(1.0)):
        app = compose(
            slow, ingress_options=one, model_options={**one, "max_ongoing_requests": 1, "max_queued_requests": 8}
        )
    serve.run(app, name="emokp-load-slow", route_prefix="/slow")
    capped = AppArgs(
        keypoints=str(kp),
        emotion=str(em),
        detector="haar",
        max_faces_per_image=2,
        annotate_max_side=256,
        max_annotation_bytes=24 * 1024,
    )
    serve.run(compose(capped, ingress_options=one, model_options=one), name="emokp-load-capped", route_prefix="/capped")
    try:
        yield Apps(f"http://127.0.0.1:{port}/slow", f"http://127.0.0.1:{port}/capped")
    finally:
        serve.shutdown()


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _crop() -> bytes:
    from emokp_ray.data.synth.crops import synthesize

    return _png(synthesize(1, seed=0).images[0])


def _photo():
    """A 480x360 colour photo with 3 faces that the Haar cascade finds."""
    from emokp_ray.data.synth.photos import synthesize_photos

    return synthesize_photos(4, seed=0)[3]


def _post(url: str, data: bytes, **kwargs):
    return requests.post(url, data=data, headers={"Content-Type": "image/png"}, timeout=60, **kwargs)


@pytest.mark.slow
@pytest.mark.ray
def test_requests_past_the_expected_wait_budget_get_503_with_retry_after_at_once(apps):
    # One request measures the model: ~1 s for one crop (2 units). Then 4 at once: the first is
    # admitted (1 s of work ahead of the next), the next would wait 2 s > 1.5 s: refused at once,
    # although 8 images may be in flight.
    assert _post(apps.slow + "/v1/predict", _crop()).status_code == 200

    def timed(_):
        started = time.perf_counter()
        response = _post(apps.slow + "/v1/predict", _crop())
        return response, time.perf_counter() - started

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(timed, range(4)))
    answered = [(r, s) for r, s in answers if r.status_code == 200]
    refused = [(r, s) for r, s in answers if r.status_code == 503]
    assert len(answered) + len(refused) == 4 and answered and len(refused) >= 2, [r.status_code for r, _ in answers]
    for response, seconds in refused:
        assert response.headers["Retry-After"] == "1" and "max_queue_wait_s" in response.json()["error"]
        assert seconds < 0.8  # at once, not after waiting in the queue
    assert _post(apps.slow + "/v1/predict", _crop()).status_code == 200  # and it recovers


@pytest.mark.slow
@pytest.mark.ray
def test_faces_past_max_faces_per_image_are_dropped_largest_kept_and_counted(apps):
    # Haar finds 3 faces in the photo; the app analyses 2 (which: the unit test above) and says so.
    shot = _photo()
    answer = _post(apps.capped + "/v1/predict", _png(shot.image)).json()
    assert len(answer["faces"]) == 2 and answer["faces_dropped"] == 1, answer
    batch = requests.post(
        apps.capped + "/v1/predict/batch",
        json={"images": [{"image_base64": base64.b64encode(_png(shot.image)).decode()}]},
        timeout=60,
    ).json()
    assert [(len(r["faces"]), r["faces_dropped"]) for r in batch["results"]] == [(2, 1)]
    crop = _post(apps.capped + "/v1/predict", _crop()).json()
    assert len(crop["faces"]) == 1 and crop["faces_dropped"] == 0


@pytest.mark.slow
@pytest.mark.ray
def test_annotated_answers_are_bounded_in_side_and_bytes(apps):
    # A 1600x1200 photo (the synthetic one, scaled up, with noise so that no codec shrinks it much).
    shot = _photo()
    big = np.asarray(Image.fromarray(shot.image).resize((1600, 1200)), np.int16)
    big = np.clip(big + np.random.default_rng(0).integers(-40, 40, big.shape), 0, 255).astype(np.uint8)
    body = io.BytesIO()
    Image.fromarray(big).save(body, format="JPEG", quality=90)
    response = _post(apps.capped + "/v1/predict", body.getvalue(), params={"annotate": "true"})
    assert response.status_code == 200, response.text
    answer = response.json()
    data = base64.b64decode(answer["annotated_image_base64"])
    drawn = Image.open(io.BytesIO(data))
    assert len(data) <= 24 * 1024 and max(drawn.size) <= 256 and drawn.size[0] > drawn.size[1]
    assert answer["annotated_media_type"] == "image/jpeg" and drawn.format == "JPEG"
    assert len(response.content) < 64 * 1024  # the whole answer, not 1600x1200 PNG's megabytes
    # a batch shares the budget between its images
    item = {"image_base64": base64.b64encode(body.getvalue()).decode()}
    batch = requests.post(
        apps.capped + "/v1/predict/batch", json={"images": [item, item], "annotate": True}, timeout=60
    )
    assert batch.status_code == 200, batch.text
    sizes = [len(base64.b64decode(r["annotated_image_base64"])) for r in batch.json()["results"]]
    assert len(sizes) == 2 and all(size <= 16 * 1024 for size in sizes)
