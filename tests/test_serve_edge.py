"""Numbers and strings at the HTTP edge (issue 31): every box value is range-checked as a number,
client strings are quoted short and decoded right, and generated bodies, queries and forms get a
4xx or an answer from the input parsers, never another exception (which the app answers 500)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from urllib3 import encode_multipart_formdata

from emokp_ray.errors import UserError
from emokp_ray.inference.boxes import MAX_BOX_VALUE, BoxError, check_box
from emokp_ray.inference.label_inputs import parse_boxes
from emokp_ray.serving.http_input import ApiError, ImageInput, batch_request, decode, predict_request, probe
from emokp_ray.serving.schemas import BoxIn


def _png(side: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side), 77, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG_B64 = base64.b64encode(_png()).decode()
HUGE = "9" * 5000  # a 5,000-digit integer, as JSON text
MAX_MESSAGE = 1000  # characters: a one-line reason, never the client's megabytes


def refused(call, *args, **kwargs) -> ApiError:
    """The ApiError `call` raises: a 4xx with a one-line, short message (anything else fails the test)."""
    with pytest.raises(ApiError) as caught:
        call(*args, **kwargs)
    err = caught.value
    assert 400 <= err.status < 500, (err.status, err.message)
    assert "\n" not in err.message and len(err.message) <= MAX_MESSAGE, err.message[:300]
    return err


# ----------------------------------------------------------------------------- numbers

# Box value as JSON text -> what the 422 says. Each was a 500 (the 5,000-digit integer) or accepted
# ("1", true) before.
BAD_VALUES = {
    HUGE: "5,000 digits",
    "-" + HUGE: "5,000 digits",
    "123456789012": "out of range",
    "1e9": "out of range",
    "1e400": "finite",
    "NaN": "NaN",
    "Infinity": "Infinity",
    "-Infinity": "Infinity",
    '"1"': "must be a number",
    "true": "must be a number",
    "null": "must be a number",
    "[1]": "must be a number",
}


def _boxes_text(value: str) -> str:
    return f"[[{value}, 0, 10, 10]]"


@pytest.mark.parametrize("value", list(BAD_VALUES))
def test_a_bad_box_value_is_a_422_in_every_place_a_box_comes_in(value):
    said = BAD_VALUES[value]
    boxes = _boxes_text(value)
    json_body = f'{{"image_base64": "{PNG_B64}", "boxes": {boxes}}}'.encode()
    form, form_type = encode_multipart_formdata([("image", ("a.png", _png(), "image/png")), ("boxes", boxes)])
    batch_body = f'{{"images": [{{"image_base64": "{PNG_B64}"}}, {{"image_base64": "{PNG_B64}", "boxes": {boxes}}}]}}'
    for where, call in [
        ("JSON body", lambda: predict_request("application/json", json_body, [], 32)),
        ("query", lambda: predict_request("image/png", _png(), [("boxes", boxes)], 32)),
        ("form fields", lambda: predict_request(form_type, form, [], 32)),
        ("JSON body", lambda: batch_request("application/json", batch_body.encode(), [], 4, 32)),
    ]:
        err = refused(call)
        assert err.status == 422 and said in err.message and f"invalid {where}" in err.message, err.message


def test_the_box_validator_is_one_for_http_listing_and_python_api():
    from emokp_ray.inference.predictor import _check_box

    # The same values refused by all three entries (the listing's was stricter than the API's:
    # "1" and True passed the predictor and the HTTP schema), and the same boxes accepted.
    bad = [["1", 0, 10, 10], [True, 0, 10, 10], [np.bool_(True), 0, 10, 10], [10**5000, 0, 10, 10],
           [float("nan"), 0, 10, 10], [0, 0, float("inf"), 10], [MAX_BOX_VALUE + 1, 0, 10, 10], [0, 0, 0, 10],
           [0, 0, 10], "0, 0, 10, 10", {"x": 0}, None]  # fmt: skip
    for box in bad:
        with pytest.raises(BoxError):
            check_box(box)
        with pytest.raises(UserError):
            _check_box(box, "image 0 box 0")
        with pytest.raises(ValueError):
            parse_boxes([box])
        with pytest.raises(ValueError):  # pydantic's ValidationError is a ValueError
            BoxIn.model_validate(box)
    good = [[0, 0, 10, 10], (1.5, -2, 3, 4), np.array([1, 2, 3, 4], np.int64), np.array([1, 2, 3, 4], np.float32)]
    for box in good:
        want = tuple(float(v) for v in box)
        assert check_box(box) == _check_box(box, "b") == tuple(parse_boxes([box])[0]) == want
        assert BoxIn.model_validate(box).as_tuple() == want


def test_a_listing_cell_with_a_huge_integer_is_an_error_row_not_a_crash():
    # float(10**5000) raised OverflowError through the listing's check (a failed run, not a row).
    for cell in (_boxes_text(HUGE), [[10**5000, 0, 10, 10]], _boxes_text("NaN"), [[0, 0, 1e400, 4]]):
        with pytest.raises(ValueError) as err:
            parse_boxes(cell)
        assert len(str(err.value)) < 200


def test_content_length_of_thousands_of_digits_is_a_413():
    from emokp_ray.serving.http_input import declared_length

    assert refused(declared_length, {"content-length": HUGE}, 1000).status == 413
    assert refused(declared_length, {"content-length": "\u0663"}, 1000).status == 400  # an Arabic-Indic 3


# ----------------------------------------------------------------------------- strings


def test_errors_quote_a_short_prefix_of_a_long_filename():
    name = "x" * 100_000 + ".png"
    body, content_type = encode_multipart_formdata([("image", (name, b"not an image at all", "image/png"))])
    image, _ = predict_request(content_type, body, [], 32)
    err = refused(decode, image, 1_000_000)
    assert err.status == 415 and "xxxxxxxx" in err.message and "100,006 characters" in err.message


@pytest.mark.parametrize(
    "disposition",
    [
        'form-data; name="image"; filename="café €.png"',  # raw UTF-8, as browsers send it
        "form-data; name=\"image\"; filename*=UTF-8''caf%C3%A9%20%E2%82%AC.png",  # RFC 5987
        'form-data; name="image"; filename="cafe.png"; filename*=utf-8\'fr\'caf%C3%A9%20%E2%82%AC.png',
    ],
)
def test_non_ascii_upload_filenames_come_back_decoded(disposition):
    body = (
        f"--b\r\nContent-Disposition: {disposition}\r\nContent-Type: image/png\r\n\r\n".encode()
        + b"GIF? no\r\n--b--\r\n"
    )
    image, _ = predict_request("multipart/form-data; boundary=b", body, [], 32)
    assert refused(decode, image, 1_000_000).message.startswith("upload 'café €.png': ")


def test_a_body_of_many_unknown_fields_gets_a_short_422():
    # 9.5 MB of unknown fields answered a 9.2 MB 422 that listed every one.
    fields = {f"field_{i:06d}_{'y' * 80}": i for i in range(100_000)}
    body = json.dumps({"image_base64": PNG_B64, **fields}).encode()
    assert len(body) > 9_000_000
    err = refused(predict_request, "application/json", body, [], 32)
    assert err.status == 422 and "and 99,995 more" in err.message and len(err.message) < 800


def test_a_long_query_name_or_content_type_is_quoted_short():
    assert "characters)" in refused(predict_request, "image/png", _png(), [("q" * 50_000, "1")], 32).message
    assert "characters)" in refused(predict_request, "text/" + "p" * 50_000, _png(), [], 32).message
    twice = [("k" * 50_000, "1"), ("k" * 50_000, "2")]
    assert "characters)" in refused(predict_request, "image/png", _png(), twice, 32).message


# ----------------------------------------------------------------------------- generated inputs


class Raw(str):
    """JSON text written as it is (a number token Python's json module would not produce)."""


def _dump(value: object) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_dump(v) for v in value) + "]"
    return json.dumps(value)  # NaN and Infinity as Python writes them


number_tokens = st.one_of(
    st.integers(),
    st.floats(),  # NaN and the infinities included
    st.integers(1, 6000).map(lambda n: Raw("9" * n)),
    st.sampled_from([Raw("1e400"), Raw("-0"), Raw("1E-400"), Raw("0.0000001")]),
)
scalars = st.one_of(st.none(), st.booleans(), number_tokens, st.text(max_size=12), st.just(PNG_B64))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=24,
)
boxes_values = st.lists(st.lists(number_tokens | scalars, min_size=0, max_size=5), max_size=4) | json_values
option_names = st.sampled_from(["image_base64", "detect", "boxes", "annotate"]) | st.text(max_size=8)
predict_bodies = st.dictionaries(
    option_names, st.one_of(json_values, boxes_values, st.sampled_from(["auto", "true", "false", True])), max_size=5
)
field_values = st.one_of(
    st.text(max_size=40),
    boxes_values.map(_dump),
    st.sampled_from(["true", "false", "auto", "1", "[]", "[[0, 0, 8, 8]]", "[[0,0,8,8]"]),
)
fields = st.lists(st.tuples(option_names, field_values), max_size=5)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decoded(image: ImageInput) -> None:
    """The header and pixel reads the ingress does next: ok or a 4xx too."""
    for read in (probe, decode):
        try:
            read(image, 1_000_000)
        except ApiError as err:
            assert 400 <= err.status < 500 and "\n" not in err.message


def four_xx_or_answer(call, *args) -> None:
    try:
        result = call(*args)
    except ApiError as err:
        assert 400 <= err.status < 500, (err.status, err.message)
        assert "\n" not in err.message and len(err.message) <= MAX_MESSAGE, err.message[:300]
        return
    items = result[0] if isinstance(result[0], list) else [result[0]]
    for item in items:
        if isinstance(item, ImageInput):
            _decoded(item)


@SETTINGS
@given(predict_bodies, fields)
def test_generated_json_bodies_and_queries_are_4xx_or_answered(body, query):
    text = _dump(body).encode()
    four_xx_or_answer(predict_request, "application/json", text, query, 32)
    batch = {"images": [body, {"image_base64": PNG_B64, **{k: v for k, v in body.items() if k == "boxes"}}]}
    four_xx_or_answer(batch_request, "application/json", _dump(batch).encode(), query, 4, 32)
    four_xx_or_answer(batch_request, "application/json", text, query, 4, 32)


@SETTINGS
@given(fields, st.text(max_size=30), st.binary(max_size=64))
def test_generated_forms_are_4xx_or_answered(form_fields, filename, image):
    parts: list = [(name, value) for name, value in form_fields]
    parts.append(("image", (filename, image or _png(), "image/png")))
    body, content_type = encode_multipart_formdata(parts)
    four_xx_or_answer(predict_request, content_type, body, [], 32)
    batch_parts = [(("images" if name == "image" else name), value) for name, value in parts]
    body, content_type = encode_multipart_formdata(batch_parts)
    four_xx_or_answer(batch_request, content_type, body, [], 4, 32)


@SETTINGS
@given(
    st.sampled_from(["application/json", "multipart/form-data; boundary=b", "image/png", "text/plain", ""]),
    st.binary(max_size=200),
    fields,
)
def test_generated_raw_bodies_are_4xx_or_answered(content_type, body, query):
    if content_type.startswith("multipart"):
        body = b"--b\r\nContent-Disposition: form-data; name=" + body + b"\r\n--b--\r\n"
    four_xx_or_answer(predict_request, content_type, body, query, 32)
    four_xx_or_answer(batch_request, content_type, body, query, 4, 32)
