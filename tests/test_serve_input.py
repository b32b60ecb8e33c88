"""Request parsing of the Serve app (emokp_ray/serving/http_input.py), without a server: multipart,
JSON and raw bodies, strict options, size caps, and the status each user mistake gets."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from urllib3 import encode_multipart_formdata

from emokp_ray.serving.http_input import (
    ApiError,
    ImageInput,
    batch_request,
    check_boxes,
    decode,
    parse_multipart,
    predict_request,
    read_body,
)
from emokp_ray.serving.schemas import AppArgs, BoxIn


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def status_of(call, *args) -> int:
    with pytest.raises(ApiError) as err:
        call(*args)
    return err.value.status


IMAGE = png_bytes(np.arange(96 * 96, dtype=np.uint8).reshape(96, 96))


# ----------------------------------------------------------------------------- multipart


def test_multipart_parts_round_trip_binary_data_exactly():
    # Bytes that look like delimiters and CRLFs inside the file must come back untouched.
    tricky = b"\r\n--not-the-boundary\r\n\r\n" + bytes(range(256)) + b"\r\n"
    body, content_type = encode_multipart_formdata(
        [
            ("image", ("face.png", tricky, "image/png")),
            ("detect", "false"),
        ]
    )
    parts = parse_multipart(body, content_type)
    assert [(p.name, p.filename) for p in parts] == [("image", "face.png"), ("detect", None)]
    assert parts[0].data == tricky and parts[0].content_type == "image/png"
    assert parts[1].data == b"false"


@pytest.mark.parametrize("cut", [10, -30, -3])
def test_multipart_cut_off_is_400(cut):
    body, content_type = encode_multipart_formdata([("image", ("a.png", IMAGE, "image/png"))])
    assert status_of(parse_multipart, body[:cut], content_type) == 400


def test_multipart_without_boundary_is_400():
    assert status_of(parse_multipart, b"--x\r\n\r\n--x--", "multipart/form-data") == 400


# ----------------------------------------------------------------------------- /v1/predict


def test_three_body_forms_give_the_same_image_and_options():
    multipart, ctype = encode_multipart_formdata([("image", ("a.png", IMAGE, "image/png")), ("detect", "false")])
    forms = [
        (ctype, multipart, []),
        ("image/png", IMAGE, [("detect", "false")]),
        ("application/json", f'{{"image_base64": "{base64.b64encode(IMAGE).decode()}", "detect": false}}'.encode(), []),
    ]
    for content_type, body, query in forms:
        image, options = predict_request(content_type, body, query)
        assert image.data == IMAGE
        assert options.detect == "false" and image.boxes is None


def test_boxes_from_query_json_text():
    image, options = predict_request("image/png", IMAGE, [("boxes", "[[1, 2, 30, 40.5]]"), ("annotate", "true")])
    assert [b.as_tuple() for b in image.boxes] == [(1, 2, 30, 40.5)]
    assert options.annotate is True


def test_data_url_prefix_is_accepted():
    body = f'{{"image_base64": "data:image/png;base64,{base64.b64encode(IMAGE).decode()}"}}'.encode()
    assert predict_request("application/json", body, [])[0].data == IMAGE


@pytest.mark.parametrize(
    "content_type, body, query, status",
    [
        ("image/png", b"", [], 400),  # empty body
        ("application/json", b"{not json", [], 400),  # malformed JSON
        ("application/json", b'{"image_base64": "***"}', [], 400),  # malformed base64
        ("application/json", b'{"image_base64": "AAAA", "colour": 1}', [], 422),  # unknown JSON field
        ("application/json", b'{"image_base64": "AAAA", "detect": "maybe"}', [], 422),
        ("text/plain", b"hello", [], 415),  # unsupported content type
        (None, b"hello", [], 415),
        ("image/png", IMAGE, [("colour", "1")], 422),  # unknown query parameter
        ("image/png", IMAGE, [("detect", "yes please")], 422),
        ("image/png", IMAGE, [("detect", "true"), ("detect", "false")], 422),  # given twice
        ("image/png", IMAGE, [("boxes", "[[0, 0, -5, 10]]")], 422),  # w <= 0
        ("image/png", IMAGE, [("boxes", "[[0, 0, 5]]")], 422),  # three numbers
        ("image/png", IMAGE, [("boxes", "0,0,5,5")], 422),  # not JSON
        ("image/png", IMAGE, [("boxes", "[[0, 0, 1e999, 5]]")], 422),  # not finite
    ],
)
def test_predict_request_mistakes(content_type, body, query, status):
    assert status_of(predict_request, content_type, body, query) == status


def test_option_in_query_and_body_is_422():
    body = f'{{"image_base64": "{base64.b64encode(IMAGE).decode()}", "detect": "true"}}'.encode()
    assert status_of(predict_request, "application/json", body, [("detect", "false")]) == 422


def test_multipart_needs_exactly_one_image_and_known_fields():
    none, ctype = encode_multipart_formdata([("picture", ("a.png", IMAGE, "image/png"))])
    assert status_of(predict_request, ctype, none, []) == 422  # unknown field 'picture'
    none, ctype = encode_multipart_formdata([("detect", "true")])
    assert status_of(predict_request, ctype, none, []) == 400
    two, ctype = encode_multipart_formdata(
        [("image", ("a.png", IMAGE, "image/png")), ("image", ("b.png", IMAGE, "image/png"))]
    )
    assert status_of(predict_request, ctype, two, []) == 400


# ----------------------------------------------------------------------------- /v1/predict/batch


def test_batch_keeps_order_and_leaves_bad_base64_in_place():
    good = base64.b64encode(IMAGE).decode()
    body = f'{{"images": [{{"image_base64": "{good}"}}, {{"image_base64": "%%"}}, {{"image_base64": "{good}", "boxes": [[0, 0, 10, 10]]}}]}}'
    items, options = batch_request("application/json", body.encode(), [("annotate", "1")], max_images=4)
    assert isinstance(items[0], ImageInput) and items[0].data == IMAGE and items[0].boxes is None
    assert isinstance(items[1], ApiError) and items[1].status == 400 and "images[1]" in items[1].message
    assert items[2].boxes_where == "images[2].boxes" and items[2].boxes[0].as_tuple() == (0, 0, 10, 10)
    assert options.annotate is True


def test_batch_multipart_files_and_limits():
    body, ctype = encode_multipart_formdata([("images", (f"{i}.png", IMAGE, "image/png")) for i in range(3)])
    items, _ = batch_request(ctype, body, [], max_images=3)
    assert [i.source for i in items] == ["images[0] '0.png'", "images[1] '1.png'", "images[2] '2.png'"]
    assert status_of(batch_request, ctype, body, [], 2) == 413
    assert status_of(batch_request, "image/png", IMAGE, [], 2) == 415
    assert status_of(batch_request, "application/json", b'{"images": []}', [], 2) == 400
    assert status_of(batch_request, ctype, body, [("boxes", "[]")], 3) == 422  # boxes go per image


# ----------------------------------------------------------------------------- body and images


async def _chunks(data: bytes, size: int):
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_read_body_caps_declared_and_streamed_size():
    data = b"x" * 5000
    assert asyncio.run(read_body({}, _chunks(data, 1000), limit=5000)) == data
    with pytest.raises(ApiError) as err:  # refused from the header, before reading
        asyncio.run(read_body({"content-length": "5001"}, _chunks(b"", 1), limit=5000))
    assert err.value.status == 413
    with pytest.raises(ApiError) as err:  # a lying (or absent) Content-Length: refused while reading
        asyncio.run(read_body({"content-length": "10"}, _chunks(data + b"y", 1000), limit=5000))
    assert err.value.status == 413
    with pytest.raises(ApiError) as err:
        asyncio.run(read_body({"content-length": "ten"}, _chunks(data, 1000), limit=5000))
    assert err.value.status == 400


def _truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()[:-400]


@pytest.mark.parametrize(
    "data, status",
    [(b"", 400), (b"plain text, not an image", 415), (_truncated_jpeg(), 400)],
)
def test_decode_maps_image_errors_to_statuses(data, status):
    assert status_of(decode, ImageInput(data, "upload"), 10_000_000) == status


def test_decode_refuses_too_many_pixels_from_the_header():
    big = png_bytes(np.zeros((300, 400), np.uint8))
    assert status_of(decode, ImageInput(big, "upload"), 100_000) == 413
    assert decode(ImageInput(big, "upload"), 120_000).shape == (300, 400)


def test_check_boxes_clips_to_the_image_and_refuses_slivers():
    box = BoxIn.model_validate
    boxes = [box([10, 10, 20, 20]), box([-5, -5, 10, 10]), box([90, 80, 30, 30])]
    # Boxes that overlap the image are clipped to it: what the networks see and the answer reports.
    assert check_boxes(boxes, 96, 96, max_boxes=3) == [(10, 10, 20, 20), (0, 0, 5, 5), (90, 80, 6, 16)]
    assert check_boxes(None, 96, 96, max_boxes=2) is None
    assert status_of(check_boxes, boxes, 96, 96, 2) == 422  # too many
    assert status_of(check_boxes, [box([96, 0, 10, 10])], 96, 96, 2) == 422  # outside
    assert status_of(check_boxes, [box([10, 10, 3, 40])], 96, 96, 2) == 422  # degenerate: 3 px wide
    assert status_of(check_boxes, [box([94, 10, 40, 40])], 96, 96, 2) == 422  # overlaps by 2 px only
    assert check_boxes([box([92, 10, 40, 40])], 96, 96, 2) == [(92, 10, 4, 40)]  # 4 px: accepted


def test_cheap_limits_come_before_validation():
    from emokp_ray.serving.http_input import MAX_JSON_DEPTH, json_depth_bound

    # The last box is invalid: validated first, the answer would name it; counted first, it is the
    # count that is refused (without validating 100,000 boxes).
    boxes = [[0, 0, 5, 5]] * 100_000 + [[0, 0, -1, 5]]
    many = json.dumps({"image_base64": base64.b64encode(IMAGE).decode(), "boxes": boxes}).encode()
    for call in (
        lambda: predict_request("application/json", many, [], 32),
        lambda: predict_request("image/png", IMAGE, [("boxes", json.dumps(boxes))], 32),
    ):
        with pytest.raises(ApiError) as err:
            call()
        assert err.value.status == 422 and "100001 boxes; the limit is 32" in err.value.message
    items = json.dumps({"images": [{"image_base64": "%%"}] * 10_000}).encode()  # bad base64, all of them
    with pytest.raises(ApiError) as err:
        batch_request("application/json", items, [], 4)
    assert err.value.status == 413 and "10000 images" in err.value.message  # counted before any is decoded
    # Deep nesting is refused before parsing, in the body and in a boxes field: never a RecursionError.
    deep = b"[" * 200_000 + b"]" * 200_000
    assert json_depth_bound(deep) == 200_000 and json_depth_bound(b'{"a": [[1, 2]]}') == 3
    assert status_of(predict_request, "application/json", deep, []) == 400
    assert status_of(predict_request, "application/json", b'{"image_base64": "", "boxes": ' + deep + b"}", []) == 400
    assert status_of(predict_request, "image/png", IMAGE, [("boxes", deep.decode())]) == 422
    assert status_of(batch_request, "application/json", b'{"images": ' + deep + b"}", [], 4) == 400
    ok = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert status_of(predict_request, "application/json", ok, []) == 422  # parsed, then invalid: a list


def test_read_body_times_out_a_slow_upload():
    async def slow():
        yield b"x" * 10
        await asyncio.sleep(5)
        yield b"y"

    started = time.perf_counter()
    with pytest.raises(ApiError) as err:
        asyncio.run(read_body({}, slow(), limit=5000, timeout_s=0.2))
    assert err.value.status == 408 and "10 bytes" in err.value.message
    assert time.perf_counter() - started < 2


def test_read_body_needs_no_asyncio_timeout(monkeypatch):
    # Python 3.10, which the package supports, has no asyncio.timeout (3.11+): the 408 must not need it.
    async def endless():
        yield b"x" * 10
        await asyncio.sleep(5)
        yield b"y"

    monkeypatch.delattr(asyncio, "timeout", raising=False)
    with pytest.raises(ApiError) as err:
        asyncio.run(read_body({}, endless(), limit=5000, timeout_s=0.2))
    assert err.value.status == 408
    assert asyncio.run(read_body({}, _chunks(b"z" * 3000, 1000), limit=5000, timeout_s=5)) == b"z" * 3000


def test_app_args_are_typed_and_strict():
    args = AppArgs.model_validate({"keypoints": "/k", "max_batch_size": "8"})
    assert args.max_batch_size == 8 and args.emotion is None and args.model_niceness == "idle"
    assert AppArgs.model_validate({"keypoints": "/k", "model_niceness": 5}).model_niceness == 5
    for bad in (
        {},
        {"keypoints": "/k", "max_batch_size": 0},
        {"keypoints": "/k", "batchsize": 8},
        {"keypoints": "/k", "max_images_per_request": 10, "max_pending_requests": 5},
        {"keypoints": "/k", "model_niceness": 20},
        {"keypoints": "/k", "model_niceness": "lowest"},
    ):
        with pytest.raises(ValueError):
            AppArgs.model_validate(bad)


# ----------------------------------------------------------------------------- the model side


@pytest.fixture(scope="module")
def spied_predictor(tmp_path_factory):
    """A real predictor over tiny checkpoints whose `predict` calls are recorded."""
    from emokp_ray.inference.predictor import Predictor
    from tests.helpers import write_tiny_checkpoints

    kp, em = write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"))
    predictor = Predictor.from_paths(str(kp), str(em), device="cpu", detect=False)
    calls: list[int] = []
    real = predictor.predict

    def predict(images, mode="auto", boxes=None, max_faces=None):
        calls.append(len(images))
        return real(images, mode=mode, boxes=boxes, max_faces=max_faces)

    predictor.predict = predict
    return predictor, calls, real


def test_run_jobs_is_one_predict_call_for_a_mixed_batch(spied_predictor):
    from emokp_ray.serving.model import FaceJob, run_jobs

    predictor, calls, real = spied_predictor
    rng = np.random.default_rng(0)
    crop, photo = rng.integers(0, 256, (96, 96), dtype=np.uint8), rng.integers(0, 256, (120, 200), dtype=np.uint8)
    jobs = [
        FaceJob(crop, "auto"),
        FaceJob(photo, "crop"),
        FaceJob(photo, "detect", ((10, 20, 60, 60), (100, 30, 50, 50))),
        FaceJob(crop, "crop"),
    ]
    calls.clear()
    outcomes = run_jobs(predictor, jobs)
    assert calls == [4]  # all faces of the batch in one call, hence one forward pass per network
    assert [len(o.result.faces) for o in outcomes] == [1, 1, 2, 1]
    alone = [
        real([crop], mode="auto"),
        real([photo], mode="crop"),
        real([photo], boxes=[[(10, 20, 60, 60), (100, 30, 50, 50)]]),
        real([crop], mode="crop"),
    ]
    for outcome, (want,) in zip(outcomes, alone):
        assert outcome.error is None
        for got_face, want_face in zip(outcome.result.faces, want.faces):
            assert got_face.box == want_face.box and got_face.emotion == want_face.emotion
            np.testing.assert_allclose(
                list(got_face.probabilities.values()), list(want_face.probabilities.values()), atol=1e-5
            )
            np.testing.assert_allclose(list(got_face.keypoints.values()), list(want_face.keypoints.values()), atol=1e-3)


def test_run_jobs_fails_only_the_job_with_a_user_error(spied_predictor):
    from emokp_ray.serving.model import FaceJob, run_jobs

    predictor, calls, _ = spied_predictor
    crop = np.zeros((96, 96), np.uint8)
    outcomes = run_jobs(predictor, [FaceJob(crop), FaceJob(crop, boxes=((500.0, 500.0, 10.0, 10.0),)), FaceJob(crop)])
    assert [o.status for o in outcomes] == [200, 422, 200]
    assert "outside" in outcomes[1].error and outcomes[1].result is None
    assert len(outcomes[0].result.faces) == len(outcomes[2].result.faces) == 1


# ----------------------------------------------------------------------------- the config file


def test_model_replica_overlaps_the_networks_only_when_asked_at_one_thread(tmp_path, monkeypatch):
    import torch

    from emokp_ray.serving.model import FaceModel
    from tests.helpers import write_tiny_checkpoints

    kp, em = write_tiny_checkpoints(tmp_path)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # a replica's share: Ray's OMP_NUM_THREADS=1
    replica_class = FaceModel.func_or_class  # the class itself; Serve would construct it in an actor
    # model_niceness 0: the constructor lowers its own process's CPU priority, here pytest's.
    common = {"keypoints": str(kp), "emotion": str(em), "detect": False, "model_niceness": 0}
    asked = replica_class(AppArgs(**common, overlap_networks=True))
    default = replica_class(AppArgs(**common))
    assert asked.predictor.overlap_networks and not default.predictor.overlap_networks
    crops = np.random.default_rng(0).integers(0, 256, (3, 96, 96), dtype=np.uint8)
    for a, b in zip(asked.predictor.predict_crops(crops), default.predictor.predict_crops(crops)):
        assert a.emotion == b.emotion
        np.testing.assert_allclose(list(a.keypoints.values()), list(b.keypoints.values()), atol=1e-4)


def test_serve_config_is_valid_and_binds_to_loopback():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from emokp_ray.serving.app import Ingress
    from emokp_ray.serving.model import FaceModel

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "serve" / "config.yaml").read_text())
    schema = (
        ServeDeploySchema.model_validate(config)
        if hasattr(ServeDeploySchema, "model_validate")
        else ServeDeploySchema.parse_obj(config)
    )
    assert schema.http_options.host == "127.0.0.1"
    (app,) = config["applications"]
    assert app["import_path"] == "emokp_ray.serving.app:build_app"
    args = AppArgs.model_validate(app["args"])  # every key is a known, valid builder argument
    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == {Ingress.name, FaceModel.name} == {"Ingress", "FaceModel"}
    for d in deployments.values():
        assert d["max_queued_requests"] > 0 and d["ray_actor_options"]["num_cpus"] <= 0.5
        assert d["autoscaling_config"]["min_replicas"] >= 1 and "health_check_period_s" in d
    # Excess requests must reach the ingress (JSON 503), and batches must be able to fill.
    assert deployments["Ingress"]["max_ongoing_requests"] > args.max_pending_requests >= args.max_batch_size


def test_batch_window_stretches_while_busy_and_is_capped():
    from emokp_ray.serving.batching import BatchWindow

    window = BatchWindow(idle_s=0.003, max_s=0.05)
    assert window.busy_s() == 0.003  # nothing measured yet: the idle wait
    window.record(0.020)
    assert window.busy_s() == pytest.approx(0.020)
    window.record(0.040)  # moving average of batch durations
    assert window.busy_s() == pytest.approx(0.7 * 0.020 + 0.3 * 0.040)
    for _ in range(20):
        window.record(1.0)
    assert window.busy_s() == 0.05  # capped
    assert BatchWindow(idle_s=0.003, max_s=0.0, expected_s=0.5).busy_s() == 0.003  # max 0: fixed window


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread nice values are Linux's")
def test_lower_cpu_priority_renices_every_thread_and_the_threads_started_later():
    # In a child process: a nice value cannot be lowered again without privileges.
    code = """
import json, os, threading
from emokp_ray.serving.process import lower_cpu_priority
release = threading.Event()
running = threading.Thread(target=release.wait)
running.start()
before = os.getpriority(os.PRIO_PROCESS, 0)
after = lower_cpu_priority(3)
threads = sorted({os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir("/proc/self/task")})
later = []
started = threading.Thread(target=lambda: later.append(os.getpriority(os.PRIO_PROCESS, 0)))
started.start(); started.join(); release.set(); running.join()
print(json.dumps([before, after, threads, later[0], lower_cpu_priority(0), lower_cpu_priority(40)]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    before, after, threads, later, unchanged, capped = json.loads(done.stdout.strip().splitlines()[-1])
    assert after == min(19, before + 3)
    assert threads == [after]  # the main thread and the one already running
    assert later == after  # a thread started afterwards inherits it
    assert (unchanged, capped) == (after, 19)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_idle_cpu_priority_covers_every_thread_and_the_threads_started_later():
    # In a child process: leaving SCHED_IDLE again needs privileges, and pytest must keep its CPU.
    code = """
import json, os, threading
from emokp_ray.serving.process import idle_cpu_priority
release = threading.Event()
running = threading.Thread(target=release.wait)
running.start()
before = os.sched_getscheduler(0)
done = idle_cpu_priority()
threads = sorted({os.sched_getscheduler(int(t)) for t in os.listdir("/proc/self/task")})
later = []
started = threading.Thread(target=lambda: later.append(os.sched_getscheduler(0)))
started.start(); started.join(); release.set(); running.join()
print(json.dumps([before, done, threads, later[0]]))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    before, done, threads, later = json.loads(run.stdout.strip().splitlines()[-1])
    assert before == os.SCHED_OTHER
    if not done:
        pytest.skip("this machine refuses SCHED_IDLE (the replica then runs at nice 19)")
    assert threads == [os.SCHED_IDLE]  # the main thread and the one already running
    assert later == os.SCHED_IDLE  # a thread started afterwards inherits it


def test_ingress_request_path_never_imports_torch_and_freezes_its_startup_heap():
    # What the ingress imports and unpickles (the model's Outcome with an ImageResult inside) stays
    # free of torch, whose ~160,000 objects every full collection would walk; the predictor's result
    # classes are the same ones.
    from emokp_ray.inference import predictor, results
    from emokp_ray.serving.model import Outcome

    assert (predictor.Face, predictor.ImageResult) == (results.Face, results.ImageResult)
    face = results.Face((1.0, 2.0, 40.0, 40.0), {"nose_tip": (20.0, 21.0)}, "happiness", {"happiness": 1.0})
    outcome = base64.b64encode(pickle.dumps(Outcome(result=results.ImageResult(96, 96, [face])))).decode()
    code = f"""
import base64, gc, importlib, json, pickle, sys
import numpy as np
from emokp_ray.serving import app
from emokp_ray.serving.process import freeze_startup_heap
for module in app.REQUEST_PATH_MODULES:
    importlib.import_module(module)
frozen = freeze_startup_heap()
outcome = pickle.loads(base64.b64decode("{outcome}"))
png, _ = app.annotated_image(np.zeros((96, 96), np.uint8), outcome.result, 1600, 2 * 1024 * 1024)
later = [object()]  # allocated after the freeze: still collectable
young = any(o is later for o in gc.get_objects(0))
print(json.dumps(["torch" in sys.modules, frozen, young, outcome.result.to_dict()["faces"][0]["emotion"], len(png)]))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    torch_imported, frozen, young, emotion, png_chars = json.loads(run.stdout.strip().splitlines()[-1])
    assert not torch_imported
    assert frozen > 50_000 and young  # the imports frozen; what comes later is not
    assert emotion == "happiness" and png_chars > 100


def test_admission_refuses_past_the_limit_and_frees_slots():
    from emokp_ray.serving.batching import Admission

    gate = Admission(2)
    assert gate.try_enter() and gate.try_enter()
    assert not gate.try_enter() and gate.pending == 2
    gate.leave()
    assert gate.try_enter() and not gate.try_enter()
    with pytest.raises(ValueError):
        Admission(0)


def test_grafana_dashboard_charts_only_the_metrics_the_app_exports():
    import re as regex

    from emokp_ray.serving import metrics

    dashboard = json.loads((Path(__file__).resolve().parents[1] / "serve" / "grafana_dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {
        regex.sub(r"_(bucket|sum|count|total)$", "", m) for e in exprs for m in regex.findall(r"ray_(emokp_\w+)", e)
    }
    source = (Path(metrics.__file__)).read_text()
    defined = set(regex.findall(r'metrics\.\w+\(\s*"(emokp_\w+)"', source))
    assert (
        used
        == defined
        == {
            "emokp_requests",
            "emokp_admissions_refused",
            "emokp_images_per_request",
            "emokp_faces_per_request",
            "emokp_model_batch_size",
            "emokp_model_latency_s",
            "emokp_queue_wait_s",
        }
    )
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])


def test_app_builder_keeps_builtin_model_names_and_resolves_paths(tmp_path, monkeypatch):
    # serve/config.yaml names builtin:keypoints; resolved against the builder's working directory it
    # became "<cwd>/builtin:keypoints" and every FaceModel replica failed to start.
    from emokp_ray.serving.app import _absolute

    monkeypatch.chdir(tmp_path)
    assert _absolute("builtin:keypoints") == "builtin:keypoints"
    assert _absolute("runs/kp") == str(tmp_path / "runs" / "kp")
    assert _absolute(None) is None


def test_app_args_choose_the_detector_and_check_its_threshold():
    from pydantic import ValidationError

    assert AppArgs(keypoints="k").detector == "mtcnn" and AppArgs(keypoints="k").detector_threshold is None
    chosen = AppArgs(keypoints="k", detector="haar", detector_threshold=0.9)
    assert (chosen.detector, chosen.detector_threshold) == ("haar", 0.9)
    for bad in ({"detector": "dlib"}, {"detector_threshold": 1.0}, {"detector_threshold": 0}):
        with pytest.raises(ValidationError):
            AppArgs(keypoints="k", **bad)
