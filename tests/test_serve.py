"""The Serve app over real HTTP on 127.0.0.1: one Serve start for the module, two apps (the main one
at /t, a deliberately slow one at /busy for the overload test), tiny random-init checkpoints.

Every bad input gets its JSON error status (never a 500) and the service then still answers a good
request; answers equal the in-process Predictor's; a headless Chromium drives the demo page
(skipped cleanly where chromium, chromedriver or selenium are missing)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import write_tiny_checkpoints

requests = pytest.importorskip("requests")
pytestmark = pytest.mark.ray

MAX_BODY = 1024 * 1024


@dataclass(frozen=True)
class Served:
    base: str          # http://127.0.0.1:PORT/t
    busy: str          # the slow app: one request at a time, one queued, 1 s per batch
    keypoints: Path
    emotion: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(ray_cluster, tmp_path_factory) -> Served:
    from ray import serve

    from emokp_ray.serving.app import compose
    from emokp_ray.serving.schemas import AppArgs

    kp, em = write_tiny_checkpoints(tmp_path_factory.mktemp("serve-ckpt"))
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    one_replica = {"num_replicas": 1, "autoscaling_config": None, "ray_actor_options": {"num_cpus": 0.25}}
    main = AppArgs(keypoints=str(kp), emotion=str(em), max_batch_size=8, batch_wait_timeout_s=0.01,
                   max_body_bytes=MAX_BODY, max_images_per_request=4, max_image_pixels=4_000_000)
    # /busy: 1 s per batch of 1 image; 2 images admitted per ingress; tiny Serve queues behind that.
    busy = AppArgs(keypoints=str(kp), emotion=str(em), max_batch_size=1, test_delay_s=1.0,
                   max_pending_requests=2, max_images_per_request=2)
    serve.run(compose(main, model_options=one_replica, ingress_options=one_replica), name="emokp-test", route_prefix="/t")
    serve.run(compose(busy, ingress_options={**one_replica, "max_ongoing_requests": 4, "max_queued_requests": 2},
                      model_options={**one_replica, "max_ongoing_requests": 1, "max_queued_requests": 1}),
              name="emokp-busy", route_prefix="/busy")
    try:
        yield Served(f"http://127.0.0.1:{port}/t", f"http://127.0.0.1:{port}/busy", kp, em)
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def predictor(served):
    from emokp_ray.inference.predictor import Predictor

    return Predictor.from_paths(str(served.keypoints), str(served.emotion), device="cpu", detect=True)


# ----------------------------------------------------------------------------- inputs

def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def crops(n: int, seed: int = 0) -> np.ndarray:
    from emokp_ray.data.synth import synthesize

    return synthesize(n, seed=seed).images   # uint8 [n, 96, 96]


def photo():
    """A 480x360 colour photo with 3 faces that the Haar cascade finds."""
    from emokp_ray.data.synth import synthesize_photos

    return synthesize_photos(4, seed=0)[3]


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid grey PNG of width x height black pixels: ~400 KB that would decode to 400 MB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    deflate = zlib.compressobj(9)
    row = b"\x00" * (width + 1)   # filter byte + pixels
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    return jpeg(np.random.default_rng(0).integers(0, 256, (120, 160), dtype=np.uint8))[:-500]


def assert_same_faces(got: list[dict], want: list[dict], tol: float = 1e-3) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g["emotion"] == w["emotion"]
        np.testing.assert_allclose(g["box"], w["box"], atol=tol)
        np.testing.assert_allclose([g["probabilities"][k] for k in w["probabilities"]], list(w["probabilities"].values()), atol=tol)
        np.testing.assert_allclose([g["keypoints"][k] for k in w["keypoints"]], list(w["keypoints"].values()), atol=tol)


def post_image(url: str, data: bytes, **kwargs):
    return requests.post(url, files={"image": ("face.png", data, "image/png")}, timeout=30, **kwargs)


def assert_good_request(served: Served) -> None:
    """The service still answers a correct request correctly."""
    response = post_image(served.base + "/v1/predict", png(crops(1)[0]))
    assert response.status_code == 200, response.text
    faces = response.json()["faces"]
    assert len(faces) == 1 and faces[0]["box"] == [0, 0, 96, 96]


# ----------------------------------------------------------------------------- good requests

def test_health_and_labels(served):
    from emokp_ray.labels import KEYPOINT_NAMES, SEED5

    health = requests.get(served.base + "/healthz", timeout=30)
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok"
    assert health.json()["model"]["keypoints"]["run_id"] == "tiny-keypoints"
    labels = requests.get(served.base + "/v1/labels", timeout=30).json()
    assert labels == {"keypoints": list(KEYPOINT_NAMES), "emotion": list(SEED5.classes), "label_scheme": "seed5"}


def test_crop_answer_equals_the_predictor_and_every_body_form_agrees(served, predictor):
    crop = crops(1, seed=3)[0]
    want = predictor.predict([crop], mode="auto")[0].to_dict()["faces"]
    url = served.base + "/v1/predict"
    answers = [
        post_image(url, png(crop)),
        requests.post(url, data=png(crop), headers={"Content-Type": "image/png"}, timeout=30),
        requests.post(url, json={"image_base64": base64.b64encode(png(crop)).decode()}, timeout=30),
    ]
    for response in answers:
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["width"], body["height"]) == (96, 96)
        assert body["model"]["emotion"]["label_scheme"] == "seed5"
        assert abs(sum(body["faces"][0]["probabilities"].values()) - 1) < 1e-4
        assert_same_faces(body["faces"], want)


def test_photo_detection_and_caller_boxes(served, predictor):
    shot = photo()
    url = served.base + "/v1/predict"
    detected = post_image(url, jpeg(shot.image), params={"detect": "true"})
    assert detected.status_code == 200, detected.text
    want = predictor.predict([np.asarray(Image.open(io.BytesIO(jpeg(shot.image))))], mode="detect")[0].to_dict()
    assert len(want["faces"]) == len(shot.boxes) == 3
    assert_same_faces(detected.json()["faces"], want["faces"])

    boxes = shot.boxes.tolist()[:2]
    given = post_image(url, png(shot.image), params={"boxes": json.dumps(boxes)})
    assert given.status_code == 200, given.text
    assert_same_faces(given.json()["faces"], predictor.predict([shot.image], boxes=[boxes])[0].to_dict()["faces"])


def test_photo_without_a_face_is_an_empty_list(served):
    blank = np.tile(np.linspace(60, 200, 320, dtype=np.uint8), (240, 1))
    response = post_image(served.base + "/v1/predict", png(blank), params={"boxes": "[]"})
    assert response.status_code == 200 and response.json()["faces"] == []
    response = post_image(served.base + "/v1/predict", png(blank), params={"detect": "true"})
    assert response.status_code == 200, response.text
    assert response.json()["faces"] == []


def test_annotated_png_has_the_image_size(served):
    shot = photo()
    response = post_image(served.base + "/v1/predict", png(shot.image), params={"annotate": "true"})
    assert response.status_code == 200, response.text
    annotated = Image.open(io.BytesIO(base64.b64decode(response.json()["annotated_png_base64"])))
    assert annotated.format == "PNG" and annotated.size == (shot.image.shape[1], shot.image.shape[0])
    assert "annotated_png_base64" not in post_image(served.base + "/v1/predict", png(shot.image)).json()


def test_batch_route_keeps_order_and_puts_errors_in_place(served, predictor):
    a, b = crops(2, seed=5)
    files = [("images", ("a.png", png(a), "image/png")), ("images", ("bad.png", b"not an image", "image/png")),
             ("images", ("b.jpg", jpeg(b), "image/jpeg"))]
    response = requests.post(served.base + "/v1/predict/batch", files=files, timeout=30)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [("error" in r) for r in results] == [False, True, False]
    assert results[1]["status"] == 415 and "bad.png" in results[1]["error"]
    assert_same_faces(results[0]["faces"], predictor.predict([a])[0].to_dict()["faces"])
    decoded_b = np.asarray(Image.open(io.BytesIO(jpeg(b))))
    assert_same_faces(results[2]["faces"], predictor.predict([decoded_b])[0].to_dict()["faces"])

    shot = photo()
    items = [{"image_base64": base64.b64encode(png(shot.image)).decode(), "boxes": shot.boxes.tolist()[:1]},
             {"image_base64": "%%%"},
             {"image_base64": base64.b64encode(png(a)).decode(), "boxes": [[500, 500, 10, 10]]}]
    response = requests.post(served.base + "/v1/predict/batch", json={"images": items, "detect": "false"}, timeout=30)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results[0]["faces"]) == 1
    assert results[1]["status"] == 400 and results[2]["status"] == 422


def test_concurrent_requests_are_batched_without_mixing_answers(served, predictor):
    batch = crops(12, seed=9)
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda c: post_image(served.base + "/v1/predict", png(c)), batch))
    want = predictor.predict(list(batch))
    for response, expected in zip(answers, want):
        assert response.status_code == 200, response.text
        assert_same_faces(response.json()["faces"], expected.to_dict()["faces"])


# ----------------------------------------------------------------------------- bad requests

def _chunked(size: int):
    for _ in range(size // 65536 + 1):
        yield b"\x00" * 65536


def _multipart_cut(url: str):
    prepared = requests.Request("POST", url, files={"image": ("a.png", png(crops(1)[0]), "image/png")}).prepare()
    return requests.post(url, data=prepared.body[:-60], headers={"Content-Type": prepared.headers["Content-Type"]}, timeout=30)


BAD_REQUESTS = {
    # name: (request(base) -> response, status)
    "malformed_json": (lambda u: requests.post(u + "/v1/predict", data=b"{oops", headers={"Content-Type": "application/json"}, timeout=30), 400),
    "malformed_base64": (lambda u: requests.post(u + "/v1/predict", json={"image_base64": "!!not base64!!"}, timeout=30), 400),
    "empty_body": (lambda u: requests.post(u + "/v1/predict", data=b"", headers={"Content-Type": "image/png"}, timeout=30), 400),
    "truncated_jpeg": (lambda u: requests.post(u + "/v1/predict", data=truncated_jpeg(), headers={"Content-Type": "image/jpeg"}, timeout=30), 400),
    "multipart_without_image": (lambda u: requests.post(u + "/v1/predict", files={"detect": (None, "true")}, timeout=30), 400),
    "multipart_cut_off": (lambda u: _multipart_cut(u + "/v1/predict"), 400),
    "body_over_limit_declared": (lambda u: requests.post(u + "/v1/predict", data=b"\x00" * (MAX_BODY + 1), headers={"Content-Type": "image/png"}, timeout=30), 413),
    "body_over_limit_chunked": (lambda u: requests.post(u + "/v1/predict", data=_chunked(MAX_BODY + 1), headers={"Content-Type": "image/png"}, timeout=30), 413),
    "too_many_images": (lambda u: requests.post(u + "/v1/predict/batch", files=[("images", (f"{i}.png", png(crops(1)[0]), "image/png")) for i in range(5)], timeout=30), 413),
    "not_an_image": (lambda u: post_image(u + "/v1/predict", b"GIF? no: plain text"), 415),
    "unsupported_content_type": (lambda u: requests.post(u + "/v1/predict", data=b"hello", headers={"Content-Type": "text/plain"}, timeout=30), 415),
    "unknown_query_parameter": (lambda u: post_image(u + "/v1/predict", png(crops(1)[0]), params={"colour": "red"}), 422),
    "invalid_detect_value": (lambda u: post_image(u + "/v1/predict", png(crops(1)[0]), params={"detect": "maybe"}), 422),
    "unknown_json_field": (lambda u: requests.post(u + "/v1/predict", json={"image_base64": base64.b64encode(png(crops(1)[0])).decode(), "size": 3}, timeout=30), 422),
    "negative_box": (lambda u: post_image(u + "/v1/predict", png(crops(1)[0]), params={"boxes": "[[0, 0, -4, 10]]"}), 422),
    "box_outside_image": (lambda u: post_image(u + "/v1/predict", png(crops(1)[0]), params={"boxes": "[[200, 0, 10, 10]]"}), 422),
    "labels_with_query": (lambda u: requests.get(u + "/v1/labels", params={"lang": "fr"}, timeout=30), 422),
    "unknown_route": (lambda u: requests.get(u + "/v2/nothing", timeout=30), 404),
    "wrong_method": (lambda u: requests.get(u + "/v1/predict", timeout=30), 405),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_gets_its_status_then_a_good_request_succeeds(served, name):
    send, status = BAD_REQUESTS[name]
    response = send(served.base)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(response.json()["error"], str) and response.json()["error"]
    assert_good_request(served)


def test_decompression_bomb_is_refused_fast(served):
    bomb = png_bomb()
    assert len(bomb) < MAX_BODY   # it passes the body limit: the pixel guard must catch it
    started = time.perf_counter()
    response = requests.post(served.base + "/v1/predict", data=bomb, headers={"Content-Type": "image/png"}, timeout=30)
    elapsed = time.perf_counter() - started
    assert response.status_code == 413, response.text
    assert "too large" in response.json()["error"]
    assert elapsed < 2.0
    assert_good_request(served)


def test_overload_answers_503_at_once_then_recovers(served):
    # /busy admits 2 images (one in the model for 1 s, one waiting); Serve's queues in front hold
    # 4 + 2 requests. Of 10 concurrent requests the other 8 must be refused now, not queued.
    def send(_):
        started = time.perf_counter()
        response = post_image(served.busy + "/v1/predict", png(crops(1)[0]))
        return response, time.perf_counter() - started

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(send, range(10)))
    codes = sorted(r.status_code for r, _ in answers)
    assert codes == [200, 200] + [503] * 8, codes
    refused = [(r, t) for r, t in answers if r.status_code == 503]
    assert all(elapsed < 0.9 for _, elapsed in refused)   # before the first 1 s batch is done
    # The ingress's refusals are JSON; Serve's proxy answers its own queue's overflow in plain text.
    json_refusals = [r for r, _ in refused if r.headers["content-type"].startswith("application/json")]
    assert json_refusals and all(r.json()["error"] == "the service is overloaded; retry later" for r in json_refusals)
    assert all("backpressure" in r.text for r, _ in refused if r not in json_refusals)
    assert post_image(served.busy + "/v1/predict", png(crops(1)[0])).status_code == 200


# ----------------------------------------------------------------------------- demo page

def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("chromium and chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")   # never let Selenium Manager download anything
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--window-size=1200,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


def test_demo_page_uploads_a_photo_and_shows_the_result(served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser()
    try:
        shot = photo()
        upload = tmp_path / "photo.jpg"
        upload.write_bytes(jpeg(shot.image))
        driver.get(served.base + "/")
        WebDriverWait(driver, 30).until(lambda d: "tiny-keypoints" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "file").send_keys(str(upload))
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".face") or d.find_element(By.ID, "error").text)
        assert driver.find_element(By.ID, "error").text == ""
        faces = driver.find_elements(By.CSS_SELECTOR, ".face")
        assert len(faces) == 3
        for face in faces:
            widths = [float(bar.get_attribute("style").split("width:")[1].split("%")[0]) for bar in face.find_elements(By.CSS_SELECTOR, ".bar")]
            assert len(widths) == 5 and abs(sum(widths) - 100) < 0.5
            assert all(bar.size["width"] >= 0 for bar in face.find_elements(By.CSS_SELECTOR, ".bar"))
        image = driver.find_element(By.ID, "annotated")
        assert image.is_displayed()
        natural = driver.execute_script("const i = arguments[0]; return [i.complete, i.naturalWidth, i.naturalHeight];", image)
        assert natural == [True, shot.image.shape[1], shot.image.shape[0]]
        driver.save_screenshot(str(tmp_path / "demo_page.png"))
        if os.environ.get("EMOKP_DEMO_SCREENSHOT"):
            shutil.copy(tmp_path / "demo_page.png", os.environ["EMOKP_DEMO_SCREENSHOT"])
    finally:
        driver.quit()
