"""Image decoding: every format and mode, EXIF orientation, and every kind of bad input."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from emokp_ray.errors import UserError
from emokp_ray.inference.images import ImageError, decode_image, load_image_file, to_grey

H, W = 24, 40


def gradient_rgb() -> np.ndarray:
    """[H, W, 3] uint8: distinct smooth channels (JPEG keeps them within a few levels)."""
    yy, xx = np.mgrid[0:H, 0:W]
    return np.stack([xx * 6, yy * 10, 255 - xx * 6], axis=-1).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def make(mode: str) -> Image.Image:
    rgb = Image.fromarray(gradient_rgb(), "RGB")
    if mode == "L":
        return rgb.convert("L")
    if mode == "RGBA":
        alpha = np.full((H, W), 255, np.uint8)
        return Image.fromarray(np.dstack([gradient_rgb(), alpha]), "RGBA")
    if mode == "P":
        return rgb.quantize(colors=64)
    return rgb


LOSSLESS = {"PNG": {}, "BMP": {}, "WEBP": {"lossless": True}}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP"])
@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P"])
def test_decode_every_format_and_mode(fmt, mode):
    if fmt == "JPEG" and mode in ("RGBA", "P"):
        pytest.skip("JPEG stores neither alpha nor a palette")
    source = make(mode)
    data = encode(source, fmt, **LOSSLESS.get(fmt, {"quality": 95}))
    decoded = decode_image(data)
    assert decoded.dtype == np.uint8 and decoded.shape[:2] == (H, W)
    # Grey sources come back [H, W] (WebP stores grey as colour, so it returns 3 equal channels).
    if mode == "L" and fmt != "WEBP":
        assert decoded.ndim == 2
    else:
        assert decoded.ndim == 3 and decoded.shape[2] == 3
    expected = np.asarray(source.convert("RGB").convert("L"), np.int16)
    tolerance = 0 if fmt in LOSSLESS else 6
    assert np.abs(to_grey(decoded).astype(np.int16) - expected).max() <= tolerance


def test_alpha_is_composited_on_white():
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, : W // 2, 3] = 0  # left half fully transparent
    rgba[:, W // 2 :, 3] = 255  # right half opaque red-ish
    out = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (out[:, : W // 2] == 255).all()
    assert (out[:, W // 2 :] == [200, 0, 0]).all()
    la = Image.fromarray(rgba[..., [0, 3]].copy(), "LA")
    grey = decode_image(encode(la, "PNG"))
    assert grey.ndim == 2 and (grey[:, : W // 2] == 255).all() and (grey[:, W // 2 :] == 200).all()


def test_palette_with_transparency_and_16_bit_grey():
    pal = Image.new("P", (W, H), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.paste(0, (0, 0, W // 2, H))
    out = decode_image(encode(pal, "PNG", transparency=0))
    assert (out[:, : W // 2] == 255).all() and (out[:, W // 2 :] == [10, 20, 30]).all()
    wide = (np.arange(W, dtype=np.uint16) * 1600)[None].repeat(H, 0)  # up to 62,400
    grey = decode_image(encode(Image.fromarray(wide), "PNG"))
    assert grey.ndim == 2 and (grey == (wide >> 8)).all()


def test_exif_orientation_is_applied():
    stored = np.zeros((H, W), np.uint8)
    stored[:, W // 2 :] = 255  # stored: dark left half, white right half
    image = Image.fromarray(stored).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: display rotated 90 degrees clockwise
    data = encode(image, "JPEG", quality=95, exif=exif)
    decoded = to_grey(decode_image(data))
    assert decoded.shape == (W, H)  # portrait now
    expected = np.rot90(stored, k=-1)  # clockwise: the stored left half becomes the top
    assert np.abs(decoded.astype(int) - expected).mean() < 4
    assert decoded[: W // 2 - 2].mean() < 10 and decoded[W // 2 + 2 :].mean() > 245


def crafted_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height grey pixels, followed by a few bytes of deflate data
    (a decoder would need width*height bytes; a header-only check needs none)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 65536, 9)  # the start of an all-black image: a bomb's first bytes
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "side, max_pixels",
    [
        (8_000, 40_000_000),  # 64 M pixels: our header check (below Pillow's own guard)
        (10_000, 10**12),  # 100 M: over Pillow's MAX_IMAGE_PIXELS, which caps any limit we are given
        (20_000, 10**12),  # 400 M: the same
    ],
)
def test_too_large_is_refused_from_the_header(side, max_pixels):
    data = crafted_png(side, side)
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(ImageError) as err:
        decode_image(data, source="bomb.png", max_pixels=max_pixels)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert err.value.kind == "too_large" and "bomb.png" in str(err.value)
    assert elapsed < 0.5 and peak < 5_000_000  # the pixels are never allocated


def test_max_pixels_is_configurable():
    data = encode(make("RGB"), "PNG")
    with pytest.raises(ImageError) as err:
        decode_image(data, max_pixels=H * W - 1)
    assert err.value.kind == "too_large" and f"{W}x{H}" in str(err.value)
    assert decode_image(data, max_pixels=H * W).shape == (H, W, 3)


def truncated(fmt: str) -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (120, 160), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "data, kind",
    [
        (b"", "empty"),
        (b"this is not an image, only text\n", "not_image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "not_image"),
        (truncated("JPEG"), "truncated"),
        (truncated("PNG"), "truncated"),
    ],
    ids=["empty", "text", "png-signature-only", "truncated-jpeg", "truncated-png"],
)
def test_bad_inputs_raise_image_error_with_kind(data, kind):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageError) as err:
        decode_image(data, source="upload.jpg")
    assert err.value.kind == kind
    assert isinstance(err.value, UserError)
    message = str(err.value)
    assert message.startswith("upload.jpg: ") and "\n" not in message


def test_unsupported_mode():
    data = encode(Image.fromarray(np.zeros((H, W), np.float32), "F"), "TIFF")
    with pytest.raises(ImageError) as err:
        decode_image(data)
    assert err.value.kind == "unsupported" and "'F'" in str(err.value)


def test_load_image_file(tmp_path):
    path = tmp_path / "face.png"
    path.write_bytes(encode(make("L"), "PNG"))
    assert load_image_file(path).shape == (H, W)
    with pytest.raises(UserError, match="does not exist"):
        load_image_file(tmp_path / "missing.png")
    with pytest.raises(UserError, match="not a file"):
        load_image_file(tmp_path)
    (tmp_path / "broken.jpg").write_bytes(truncated("JPEG"))
    with pytest.raises(ImageError, match="broken.jpg") as err:
        load_image_file(tmp_path / "broken.jpg")
    assert err.value.kind == "truncated"


def test_to_grey_matches_pillow_luma():
    rgb = gradient_rgb()
    assert (to_grey(rgb) == np.asarray(Image.fromarray(rgb).convert("L"))).all()
    grey = rgb[..., 0].copy()
    assert to_grey(grey) is grey
    with pytest.raises(ValueError):
        to_grey(np.zeros((4, 4, 4), np.uint8))


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n0 0 moveto 64 64 lineto stroke\nshowpage\n%%EOF\n"


@pytest.mark.parametrize(
    "data, name",
    [
        (EPS, "EPS"),
        (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "PDF"),
        (b"\x00\x00\x01\x00\x01\x00\x10\x10" + b"\x00" * 40, "ICO"),
    ],
)
def test_only_the_documented_formats_are_parsed(data, name):
    # Pillow reads EPS (through Ghostscript), ICO and more; we refuse them from the first bytes,
    # with our list of formats in the message and nothing of the parser's internals.
    with pytest.raises(ImageError) as err:
        decode_image(data, source=f"upload.{name.lower()}")
    assert err.value.kind == "not_image"
    assert "JPEG, PNG, WebP, BMP, GIF, TIFF or PPM/PGM" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "PPM"])
def test_every_allowed_format_decodes_and_probes(fmt):
    from emokp_ray.inference.images import probe_image

    data = encode(make("L"), fmt)
    header = probe_image(data, "upload")
    assert (header.width, header.height, header.pixels) == (W, H, W * H) and header.format in (fmt, "MPO")
    assert decode_image(data).shape[:2] == (H, W)  # WebP and GIF store grey as colour


def test_bomb_guard_touches_no_warnings_filter_and_is_thread_safe():
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    bomb = crafted_png(10_000, 10_000)  # 100 M pixels: over Pillow's own warning threshold
    good = encode(make("RGB"), "PNG")
    before = list(warnings.filters)

    def both(_):
        with pytest.raises(ImageError):
            decode_image(bomb, max_pixels=10**12)
        return decode_image(good).shape

    with warnings.catch_warnings(record=True) as caught:  # this thread's view: nothing is warned
        warnings.simplefilter("always")
        before = list(warnings.filters)
        with ThreadPoolExecutor(8) as pool:
            shapes = list(pool.map(both, range(64)))
        assert list(warnings.filters) == before
    assert shapes == [(H, W, 3)] * 64
    assert not [w for w in caught if "DecompressionBomb" in type(w.message).__name__]


def _jpeg_declaring(width: int, height: int, mode: str = "L", progressive: bool = True) -> bytes:
    """A 16x16 noise JPEG whose frame header is rewritten to say width x height (~450-800 bytes):
    libjpeg decodes what the scans hold and fills the rest with grey, without an error."""
    shape = (16, 16) if mode == "L" else (16, 16, 3)
    noise = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    data = bytearray(encode(Image.fromarray(noise), "JPEG", progressive=progressive))
    frame = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    struct.pack_into(">HH", data, frame + 5, height, width)
    return bytes(data)


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("progressive", [True, False])
def test_jpeg_too_short_for_its_declared_size_is_truncated(mode, progressive):
    from emokp_ray.inference.images import probe_image

    # Issue 31: a 543-byte progressive JPEG declaring 5000x4800 was decoded as a 24 M-pixel grey image.
    data = _jpeg_declaring(5000, 4800, mode, progressive)
    assert len(data) < 1000
    for read in (probe_image, decode_image):  # refused from the header: the ingress decodes nothing
        started = time.perf_counter()
        with pytest.raises(ImageError, match="5000x4800 needs at least 46,875 bytes") as err:
            read(data, source="upload", max_pixels=40_000_000)
        assert err.value.kind == "truncated" and time.perf_counter() - started < 0.5


def test_a_large_flat_jpeg_is_not_mistaken_for_a_truncated_one():
    from emokp_ray.inference.images import jpeg_min_bytes, probe_image

    # The bound is one bit per 8x8 block: a real all-grey 5000x4800 JPEG (the most compressible
    # content, progressive and colour) is three times larger than it.
    flat = encode(Image.new("RGB", (5000, 4800), (128, 128, 128)), "JPEG", quality=10, progressive=True)
    assert len(flat) > 2 * jpeg_min_bytes(5000, 4800, [(2, 2), (1, 1), (1, 1)])
    assert probe_image(flat, max_pixels=40_000_000).pixels == 24_000_000
    for side in (1, 7, 9, 17):  # tiny images: a bound of 0 bytes
        assert decode_image(encode(Image.new("L", (side, side), 9), "JPEG")).shape == (side, side)


def test_gif_frame_too_short_for_its_declared_size_is_truncated():
    from emokp_ray.inference.images import gif_min_bytes, probe_image

    noise = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    data = bytearray(encode(Image.fromarray(noise), "GIF"))
    flags = data[10]  # logical screen descriptor; the global palette follows it
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    while data[pos] == 0x21:  # extension blocks before the first image descriptor
        pos += 2
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
    assert data[pos] == 0x2C
    struct.pack_into("<HH", data, 6, 5000, 4800)  # the screen
    struct.pack_into("<HH", data, pos + 5, 5000, 4800)  # the frame: 24 M pixels from ~1 KB of LZW codes
    with pytest.raises(ImageError, match="5000x4800 needs at least") as err:
        probe_image(bytes(data), max_pixels=40_000_000)
    assert err.value.kind == "truncated"
    # A real flat GIF of that size is far above the bound, and a small frame on a large screen
    # (the rest is background, as GIF defines) is not refused.
    flat = encode(Image.new("L", (5000, 4800), 0), "GIF")
    assert len(flat) > 3 * gif_min_bytes(24_000_000) and probe_image(flat, max_pixels=40_000_000).pixels == 24_000_000
    screen_only = bytearray(encode(Image.fromarray(noise), "GIF"))
    struct.pack_into("<HH", screen_only, 6, 5000, 4800)
    assert probe_image(bytes(screen_only), max_pixels=40_000_000).pixels == 24_000_000


def test_every_format_that_decodes_is_listed_for_labeling_and_every_listed_file_decodes(tmp_path):
    """One list (images.IMAGE_FORMATS) drives decoding and the labeling folder listing: a .pgm or
    .ppm file is labeled, not skipped, and each listed ending is what Pillow calls that format."""
    from emokp_ray.inference.images import ALLOWED_FORMATS, IMAGE_EXTENSIONS, IMAGE_FORMATS
    from emokp_ray.inference.label_inputs import ListingCounts, iter_work_tables, resolve_input

    Image.init()
    registered = Image.registered_extensions()
    assert ALLOWED_FORMATS == tuple(IMAGE_FORMATS)
    assert {ending: registered[ending] for ending in IMAGE_EXTENSIONS} == {
        ending: name for name, endings in IMAGE_FORMATS.items() for ending in endings
    }
    face = (np.arange(48 * 48).reshape(48, 48) % 251).astype(np.uint8)
    modes = {".pgm": "L", ".ppm": "RGB", ".pbm": "1", ".pnm": "L", ".png": "L", ".tif": "L"}
    for ending, mode in modes.items():
        Image.fromarray(face).convert(mode).save(tmp_path / f"face{ending}", format=registered[ending])
    (tmp_path / "notes.txt").write_text("not an image")
    counts = ListingCounts()
    listed = [row for table in iter_work_tables(resolve_input(str(tmp_path)), counts) for row in table.to_pylist()]
    assert sorted(row["source"] for row in listed) == sorted(f"face{ending}" for ending in modes)
    assert counts.skipped_files == 1  # notes.txt
    for ending, mode in modes.items():
        pixels = load_image_file(tmp_path / f"face{ending}")
        assert pixels.shape[:2] == (48, 48), ending
        if mode == "L":
            np.testing.assert_array_equal(pixels, face)
