"""From an HTTP request to images and options: body reading with a size cap, multipart/JSON/raw
parsing, strict option parsing, image decoding. Every user mistake is an `ApiError` with its status:

    400  malformed: empty body, bad JSON or base64, JSON nested too deep, a broken multipart body, a
         truncated or empty image
    408  the body did not arrive within the body timeout (a slow or endless upload)
    431  the request headers are larger than max_header_bytes (checked by the ingress)
    413  too large: the body (Content-Length or bytes read), an image's or the request's pixel count
         (from the image headers), too many images
    415  not an image: unsupported Content-Type, or bytes in none of the formats we decode
    422  invalid options: unknown query/form/JSON fields, bad values, too many boxes, a box that does
         not overlap the image by MIN_BOX_SIDE_PX in each direction; a box value that is not a
         finite number within MAX_BOX_VALUE (inference/boxes.py), or NaN, Infinity or an integer of
         more than MAX_JSON_INT_DIGITS digits anywhere in client JSON (refused from its text)

Client strings (file and field names, content types) are quoted in messages by their first
characters only (boxes.short_repr), and a 422 lists at most MAX_LISTED_ERRORS fields.

Cheap checks come before expensive work: the body's size before it is read, JSON nesting before it
is parsed, the number of images and boxes before any is validated or decoded, and every image's
pixel count (header only) before any image of the request is decoded.

The functions here are plain (bytes and strings in, values out) except `read_body`, so they are
tested without a server.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from email.message import Message
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from emokp_ray.inference.boxes import JsonNumberError, load_json, short_repr
from emokp_ray.serving.schemas import BatchJson, BatchOptions, BoxIn, PredictJson, PredictOptions

if TYPE_CHECKING:
    from emokp_ray.inference.images import ImageHeader

M = TypeVar("M", bound=BaseModel)

# ImageError.kind -> status: a broken image is malformed input (400); bytes that are no image at all,
# or a format Pillow cannot read, are "not an image" (415); too many pixels is "too large" (413).
IMAGE_ERROR_STATUS = {"empty": 400, "truncated": 400, "not_image": 415, "unsupported": 415, "too_large": 413}

# Our bodies nest 4 deep ({"images": [{"boxes": [[x, ...]]}]}); past this a body is refused before
# it is parsed (Python's parser would recurse, up to a RecursionError, on "[[[[...").
MAX_JSON_DEPTH = 16
# A box must overlap the image by at least this many pixels in x and in y (a thinner sliver holds no
# face, and the networks would see a smeared stripe).
MIN_BOX_SIDE_PX = 4
# A 422 names at most this many bad fields (then "and N more"): a body of 100,000 unknown fields
# gets a one-line answer, not one as large as the body.
MAX_LISTED_ERRORS = 5


class ApiError(Exception):
    """A user's mistake, answered as JSON {"error": message} with `status`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ----------------------------------------------------------------------------- body


def declared_length(headers: Any, limit: int) -> int | None:
    """The Content-Length header as an int (None when absent); 400 when unreadable, 413 over `limit`."""
    raw = headers.get("content-length")
    if raw is None:
        return None
    digits = raw.strip()
    if not (digits.isascii() and digits.isdigit()):
        raise ApiError(400, f"Content-Length {short_repr(raw)} is not a byte count")
    if len(digits) > 18:  # more than any limit, and int() of thousands of digits is slow
        raise ApiError(413, f"request body of a {len(digits)}-digit byte count exceeds the limit of {limit} bytes")
    length = int(digits)
    if length > limit:
        raise ApiError(413, f"request body of {length} bytes exceeds the limit of {limit} bytes")
    return length


async def read_body(headers: Any, chunks: AsyncIterator[bytes], limit: int, timeout_s: float | None = None) -> bytes:
    """Read the body from `chunks` (Starlette's `request.stream()`), refusing it with 413 from the
    Content-Length header before reading, and again as soon as the bytes read pass `limit` (a
    missing or lying Content-Length cannot make the server buffer more than `limit`); 408 when the
    whole body has not arrived within `timeout_s` (a slow or endless upload holds its admission
    slot no longer than that)."""
    from starlette.requests import ClientDisconnect

    declared_length(headers, limit)
    parts: list[bytes] = []
    size = 0

    async def read() -> None:
        nonlocal size
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
            parts.append(chunk)

    try:
        # wait_for, not asyncio.timeout: that is Python 3.11+, and the package supports 3.10, whose
        # wait_for raises asyncio.TimeoutError (the builtin TimeoutError from 3.11 on).
        await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout_s:g} s ({size} bytes received)") from None
    except ClientDisconnect:  # the client went away mid-upload: nobody reads the answer
        raise ApiError(400, "the client disconnected before the body was complete") from None
    return b"".join(parts)


def media_type(content_type: str | None) -> str:
    """'multipart/form-data; boundary=x' -> 'multipart/form-data' ('' when absent)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


# ----------------------------------------------------------------------------- multipart


@dataclass(frozen=True)
class Part:
    """One part of a multipart/form-data body."""

    name: str
    filename: str | None
    content_type: str
    data: bytes


def _header_params(value: str, header: str) -> Message:
    msg = Message()
    msg[header] = value
    return msg


def _decode_header_block(raw: bytes) -> str:
    """Part headers as text: UTF-8, which browsers send raw in a filename (RFC 7578 section 4.2),
    else Latin-1 (every byte is a character there, so nothing fails)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def upload_filename(disposition: Message) -> str | None:
    """The part's file name: RFC 5987 `filename*=UTF-8''caf%C3%A9.png` wins over a plain `filename`
    (RFC 6266 section 4.3); an unknown charset is read as UTF-8, undecodable bytes as U+FFFD."""
    plain, extended = None, None
    for key, value in (disposition.get_params(header="content-disposition", unquote=False) or [])[1:]:
        if key.lower() != "filename":
            continue
        if isinstance(value, tuple):  # (charset, language, text): the email package's RFC 2231 form
            charset, _, text = value
            raw = email.utils.unquote(text).encode("latin-1", "replace")
            try:
                extended = raw.decode(charset or "utf-8", "replace")
            except LookupError:
                extended = raw.decode("utf-8", "replace")
        else:
            plain = email.utils.unquote(value)
    return extended if extended is not None else plain


def parse_multipart(body: bytes, content_type: str) -> list[Part]:
    """Split a multipart/form-data body (RFC 7578) into its parts; 400 when it is malformed or cut off."""
    boundary = _header_params(content_type, "content-type").get_param("boundary", header="content-type")
    if not isinstance(boundary, str) or not boundary:
        raise ApiError(400, "multipart/form-data without a boundary parameter")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    # A leading CRLF lets the first delimiter match like the others; segment 0 is the preamble.
    segments = (b"\r\n" + body).split(delimiter)
    if len(segments) < 2:
        raise ApiError(400, "multipart body does not contain its boundary")
    parts: list[Part] = []
    for segment in segments[1:]:
        if segment.startswith(b"--"):  # the closing delimiter: the rest is the epilogue
            return parts
        line_end = segment.find(b"\r\n")  # skip transport padding after the delimiter
        if line_end < 0 or segment[:line_end].strip(b" \t"):
            raise ApiError(400, "malformed multipart body (bad delimiter line)")
        segment = segment[line_end + 2 :]
        if segment.startswith(b"\r\n"):
            raw_headers, data = b"", segment[2:]
        else:
            split = segment.find(b"\r\n\r\n")
            if split < 0:
                raise ApiError(400, "malformed multipart body (part headers not terminated)")
            raw_headers, data = segment[:split], segment[split + 4 :]
        headers: dict[str, str] = {}
        for line in _decode_header_block(raw_headers).split("\r\n"):
            key, sep, value = line.partition(":")
            if not sep:
                raise ApiError(400, f"malformed multipart part header {short_repr(line)}")
            headers[key.strip().lower()] = value.strip()
        disposition = _header_params(headers.get("content-disposition", ""), "content-disposition")
        name = disposition.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "multipart part without a Content-Disposition name")
        parts.append(Part(name, upload_filename(disposition), headers.get("content-type", ""), data))
    raise ApiError(400, "multipart body is cut off (no closing boundary)")


# ----------------------------------------------------------------------------- options


def _one_line(err: ValidationError) -> str:
    """A pydantic error list as one line: 'boxes.0.w: Input should be greater than 0; ...', at most
    MAX_LISTED_ERRORS of them, each field name cut short (a client names the fields)."""
    errors = err.errors(include_url=False, include_input=False)
    items = []
    for e in errors[:MAX_LISTED_ERRORS]:
        where = ".".join(p if isinstance(p, str) and p.isprintable() and len(p) <= 40 else _quoted(p) for p in e["loc"])
        message = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        items.append(f"{where or 'body'}: {message}")
    more = f"; and {len(errors) - MAX_LISTED_ERRORS:,} more" if len(errors) > MAX_LISTED_ERRORS else ""
    return "; ".join(items) + more


def _quoted(part: int | str) -> str:
    # A field name from the client: repr escapes its newlines and control characters; cut short.
    return str(part) if isinstance(part, int) else short_repr(part)


def validate(model: type[M], raw: Any, what: str) -> M:
    """`model.model_validate(raw)`, with a 422 naming every bad field."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ApiError(422, f"invalid {what}: {_one_line(err)}") from None


def check_box_count(boxes: Any, max_boxes: int | None, where: str) -> None:
    """422 when `boxes` (raw JSON, not yet validated) is a list longer than `max_boxes`: counted
    before pydantic validates each box (900,000 boxes took 17 s to validate)."""
    if max_boxes is not None and isinstance(boxes, list) and len(boxes) > max_boxes:
        raise ApiError(422, f"{where}: {len(boxes)} boxes; the limit is {max_boxes}")


def options_from_fields(
    fields: Iterable[tuple[str, str]], model: type[M], what: str, max_boxes: int | None = None
) -> M:
    """Options from text fields (query string or multipart form fields): each name at most once,
    `boxes` as JSON text [[x, y, w, h], ...] (at most `max_boxes`, nested at most MAX_JSON_DEPTH);
    unknown names and bad values are 422."""
    raw: dict[str, Any] = {}
    for key, value in fields:
        if key in raw:
            raise ApiError(422, f"invalid {what}: {short_repr(key)} given more than once")
        if key == "boxes":
            if json_depth_bound(value.encode("utf-8", "replace")) > MAX_JSON_DEPTH:
                raise ApiError(422, f"invalid {what}: boxes nested deeper than {MAX_JSON_DEPTH} levels")
            try:
                value = load_json(value)
            except JsonNumberError as err:
                raise ApiError(422, f"invalid {what}: boxes: {err}") from None
            except (ValueError, RecursionError):
                raise ApiError(422, f"invalid {what}: boxes must be JSON like [[x, y, w, h], ...]") from None
            check_box_count(value, max_boxes, f"invalid {what}: boxes")
        raw[key] = value
    return validate(model, raw, what)


def merge_options(model: type[M], *sources: BaseModel) -> M:
    """One options object from several sources (query, body); an option set in two is a 422."""
    merged: dict[str, Any] = {}
    for source in sources:
        for key in source.model_fields_set:
            if key in merged:
                raise ApiError(422, f"invalid options: {key!r} given both in the query and in the body")
            merged[key] = getattr(source, key)
    return model.model_validate(merged)


def decode_base64(text: str, where: str) -> bytes:
    """Strict base64 (a data: URL prefix and whitespace are allowed); 400 when malformed."""
    text = re.sub(r"^data:[\w/+.-]*;base64,", "", text.strip())
    try:
        return base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where} is not valid base64") from None


def json_depth_bound(text: bytes) -> int:
    """An upper bound on the nesting depth of JSON `text`, in one vectorized pass (~5 ms per MB):
    the running count of [ and { minus ] and }, strings included (our strings are base64 and option
    names, without brackets, so for our bodies the bound is exact)."""
    raw = np.frombuffer(text, np.uint8)
    if raw.size == 0:
        return 0
    step = np.zeros(raw.size, np.int32)
    step[(raw == ord("[")) | (raw == ord("{"))] = 1
    step[(raw == ord("]")) | (raw == ord("}"))] = -1
    return int(np.cumsum(step).max(initial=0))


def parse_json(body: bytes) -> Any:
    """The JSON body, refused (400) before parsing when nested deeper than MAX_JSON_DEPTH."""
    if json_depth_bound(body) > MAX_JSON_DEPTH:
        raise ApiError(400, f"JSON body nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return load_json(body)
    except JsonNumberError as err:
        raise ApiError(422, f"invalid JSON body: {err}") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, or anything else the parser refuses
        raise ApiError(400, f"malformed JSON body: {_first_line(str(err))}") from None
    except RecursionError:  # not reached after the depth bound; kept so a deep body can never be a 500
        raise ApiError(400, f"JSON body nested deeper than {MAX_JSON_DEPTH} levels") from None


# ----------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class ImageInput:
    """One image as received: its bytes, a name for messages, the caller's boxes (if any)."""

    data: bytes
    source: str
    boxes: tuple[BoxIn, ...] | None = None
    boxes_where: str = "boxes"  # where the boxes came from, for messages


def _first_line(text: str, limit: int = 200) -> str:
    line = (text.splitlines() or [""])[0]
    return line if len(line) <= limit else line[:limit] + "..."


def _unsupported(kind: str, allowed: str) -> ApiError:
    return ApiError(415, f"unsupported content type {short_repr(kind) if kind else '(none)'}; send {allowed}")


def predict_request(
    content_type: str | None, body: bytes, query: Sequence[tuple[str, str]], max_boxes: int | None = None
) -> tuple[ImageInput, PredictOptions]:
    """POST /v1/predict: the image and options of a multipart, raw image/* or JSON request; more
    than `max_boxes` boxes is a 422 before any box is validated."""
    query_options = options_from_fields(query, PredictOptions, "query", max_boxes)
    kind = media_type(content_type)
    if not body:
        raise ApiError(400, "empty request body; send an image")
    if kind == "multipart/form-data":
        parts = parse_multipart(body, content_type or "")
        fields = [(p.name, p.data.decode("utf-8", "replace")) for p in parts if p.name != "image"]
        form_options = options_from_fields(fields, PredictOptions, "form fields", max_boxes)
        options = merge_options(PredictOptions, query_options, form_options)
        images = [p for p in parts if p.name == "image"]
        if len(images) != 1:
            raise ApiError(400, f"multipart body needs exactly one 'image' file field, got {len(images)}")
        image = ImageInput(images[0].data, f"upload {short_repr(images[0].filename or 'image')}")
    elif kind == "application/json":
        raw = parse_json(body)
        if isinstance(raw, dict):
            check_box_count(raw.get("boxes"), max_boxes, "invalid JSON body: boxes")
        payload = validate(PredictJson, raw, "JSON body")
        body_options = PredictOptions.model_validate(payload.model_dump(exclude={"image_base64"}, exclude_unset=True))
        options = merge_options(PredictOptions, query_options, body_options)
        image = ImageInput(decode_base64(payload.image_base64, "image_base64"), "image_base64")
    elif kind.startswith("image/") or kind == "application/octet-stream":
        options, image = query_options, ImageInput(body, "request body")
    else:
        raise _unsupported(kind, "multipart/form-data (field 'image'), image/*, or application/json")
    boxes = tuple(options.boxes) if options.boxes is not None else None
    return ImageInput(image.data, image.source, boxes), options


def _too_many_images(count: int, max_images: int) -> ApiError:
    return ApiError(413, f"{count} images in one request; the limit is {max_images}")


def batch_request(
    content_type: str | None,
    body: bytes,
    query: Sequence[tuple[str, str]],
    max_images: int,
    max_boxes: int | None = None,
) -> tuple[list[ImageInput | ApiError], BatchOptions]:
    """POST /v1/predict/batch: the images (multipart files `images`, or JSON {"images": [...]}) and
    options. A per-image problem (bad base64) stays in the list as an ApiError for that image. The
    image count (413) and each image's box count (422) are checked before anything is validated or
    decoded."""
    query_options = options_from_fields(query, BatchOptions, "query")
    kind = media_type(content_type)
    if not body:
        raise ApiError(400, "empty request body; send images")
    items: list[ImageInput | ApiError] = []
    if kind == "multipart/form-data":
        parts = parse_multipart(body, content_type or "")
        fields = [(p.name, p.data.decode("utf-8", "replace")) for p in parts if p.name != "images"]
        options = merge_options(BatchOptions, query_options, options_from_fields(fields, BatchOptions, "form fields"))
        files = [q for q in parts if q.name == "images"]
        if len(files) > max_images:
            raise _too_many_images(len(files), max_images)
        for i, p in enumerate(files):
            items.append(ImageInput(p.data, f"images[{i}] {short_repr(p.filename or 'upload')}"))
    elif kind == "application/json":
        raw = parse_json(body)
        if isinstance(raw, dict) and isinstance(raw.get("images"), list):
            if len(raw["images"]) > max_images:
                raise _too_many_images(len(raw["images"]), max_images)
            for i, item in enumerate(raw["images"]):
                if isinstance(item, dict):
                    check_box_count(item.get("boxes"), max_boxes, f"invalid JSON body: images[{i}].boxes")
        payload = validate(BatchJson, raw, "JSON body")
        body_options = BatchOptions.model_validate(payload.model_dump(exclude={"images"}, exclude_unset=True))
        options = merge_options(BatchOptions, query_options, body_options)
        for i, item in enumerate(payload.images):
            try:
                data = decode_base64(item.image_base64, f"images[{i}].image_base64")
            except ApiError as err:
                items.append(err)
                continue
            items.append(
                ImageInput(
                    data, f"images[{i}]", tuple(item.boxes) if item.boxes is not None else None, f"images[{i}].boxes"
                )
            )
    else:
        raise _unsupported(kind, "multipart/form-data (files 'images') or application/json")
    if not items:
        raise ApiError(400, "no images in the request")
    return items, options


# ----------------------------------------------------------------------------- images


def probe(image: ImageInput, max_pixels: int) -> ImageHeader:
    """The image's header (size, format) without decoding a pixel; ImageError -> ApiError by its kind."""
    from emokp_ray.inference.images import ImageError, probe_image

    if not image.data:
        raise ApiError(400, f"{image.source}: empty image")
    try:
        return probe_image(image.data, source=image.source, max_pixels=max_pixels)
    except ImageError as err:
        raise ApiError(IMAGE_ERROR_STATUS.get(err.kind, 400), str(err)) from None


def decode(image: ImageInput, max_pixels: int) -> np.ndarray:
    """The image's pixels (uint8 [H, W] or [H, W, 3]); ImageError -> ApiError by its kind."""
    from emokp_ray.inference.images import ImageError, decode_image

    if not image.data:
        raise ApiError(400, f"{image.source}: empty image")
    try:
        return decode_image(image.data, source=image.source, max_pixels=max_pixels)
    except ImageError as err:
        raise ApiError(IMAGE_ERROR_STATUS.get(err.kind, 400), str(err)) from None


def check_boxes(
    boxes: Sequence[BoxIn] | None, width: int, height: int, max_boxes: int, where: str = "boxes"
) -> list[tuple[float, float, float, float]] | None:
    """The caller's boxes clipped to the image, as (x, y, w, h) tuples; 422 when there are too many,
    or when a box overlaps the image by less than MIN_BOX_SIDE_PX in x or y (a box off the image,
    or a degenerate sliver). The clipped box is what the networks see and what the answer reports."""
    if boxes is None:
        return None
    if len(boxes) > max_boxes:
        raise ApiError(422, f"{where}: {len(boxes)} boxes; the limit is {max_boxes}")
    clipped = []
    for i, b in enumerate(boxes):
        x0, y0 = max(b.x, 0.0), max(b.y, 0.0)
        x1, y1 = min(b.x + b.w, float(width)), min(b.y + b.h, float(height))
        if x1 - x0 < MIN_BOX_SIDE_PX or y1 - y0 < MIN_BOX_SIDE_PX:
            image = f"the {width}x{height} image"
            what = (
                f"lies outside {image}"
                if x1 <= x0 or y1 <= y0
                else f"overlaps {image} by less than {MIN_BOX_SIDE_PX} px"
            )
            raise ApiError(
                422,
                f"{where}[{i}] {list(b.as_tuple())} {what} (a box must overlap the image by at least "
                f"{MIN_BOX_SIDE_PX} px in x and in y)",
            )
        clipped.append((x0, y0, x1 - x0, y1 - y0))
    return clipped
