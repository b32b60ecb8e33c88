"""Decode untrusted image bytes into numpy arrays: the formats we document, every failure a typed error.

What comes in (a file, an upload, a Parquet cell) is untrusted, so decoding is defensive:

  * only ALLOWED_FORMATS are parsed (JPEG incl. phones' MPO, PNG, WebP, BMP, GIF, TIFF, PPM/PGM/PBM):
    Pillow's other plugins are never tried, so an EPS or PDF never reaches Ghostscript, and no
    exotic parser sees hostile bytes;
  * the pixel count is checked from the HEADER, before any pixel is decoded (`probe_image` parses
    only the header), so a 20000x20000 PNG or a decompression bomb is refused in microseconds with
    bounded memory. This is our own guard, with our limit: the header is parsed by the format's
    plugin directly (as `Image.open` does, minus its global bomb check), so no process-wide warnings
    filter is swapped in and out under other threads;
  * a JPEG or GIF too short for the size it declares is refused from its header too: Huffman coding
    spends at least one bit on every 8x8 block, so a 543-byte JPEG cannot hold 5000x4800 pixels, and
    LZW codes grow by at most one pixel per code; their decoders would "decode" such a file anyway,
    filling what is missing with grey or background (`_check_declared_length`);
  * the image is then fully loaded (`Image.load`), with `ImageFile.LOAD_TRUNCATED_IMAGES` left False,
    so a truncated JPEG/PNG fails here instead of decoding half a face with grey below it;
  * EXIF orientation is applied (phones store portraits sideways plus a tag);
  * colour modes are reduced to two outputs: uint8 [H, W] for grey sources ("1", "L", "LA", 16-bit
    grey) and uint8 [H, W, 3] RGB for colour sources ("RGB", "RGBA", "P", "CMYK", ...); alpha is
    composited on white (a transparent PNG background reads as a white wall, not as black).

Every problem is an `ImageError` (a `UserError`) whose one-line message names the source and states
OUR limits (formats, pixels), not a parser's internals, with a `kind` that callers map to
responses: "empty", "not_image", "truncated" (truncated or corrupt), "too_large", "unsupported"
(a mode with no sensible grey, e.g. float TIFF).
"""

from __future__ import annotations

import io
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The plugins of the allowed formats; importing one registers its parser in Image.OPEN.
from PIL import (  # noqa: F401
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageFile,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    PpmImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from emokp_ray.errors import UserError

MAX_IMAGE_PIXELS = 40_000_000  # width * height; ~7700x5200, above any phone camera, bounds memory to ~160 MB
MAX_BYTES_PER_PIXEL = 10  # a file larger than this many bytes per allowed pixel cannot be a sane image

ERROR_KINDS = ("empty", "not_image", "truncated", "too_large", "unsupported")

WIDE_GREY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # 16-bit grey PNG/TIFF: top 8 bits kept

# The one list of image formats: each Pillow format we decode, in the order its parser is tried
# (JPEG's also returns phones' multi-picture MPO), with the file name endings that mark it; labeling
# lists a folder's images by these endings (label_inputs.py), so what is listed is what decodes.
IMAGE_FORMATS: dict[str, tuple[str, ...]] = {
    "JPEG": (".jpg", ".jpeg"),
    "PNG": (".png",),
    "WEBP": (".webp",),
    "BMP": (".bmp",),
    "GIF": (".gif",),
    "TIFF": (".tif", ".tiff"),
    "PPM": (".ppm", ".pgm", ".pbm", ".pnm"),  # Pillow's PPM parser reads the whole Netpbm family
}
ALLOWED_FORMATS = tuple(IMAGE_FORMATS)
IMAGE_EXTENSIONS = tuple(ending for endings in IMAGE_FORMATS.values() for ending in endings)
FORMATS_TEXT = "JPEG, PNG, WebP, BMP, GIF, TIFF or PPM/PGM/PBM"


class ImageError(UserError):
    """An input that is not a usable image; `kind` is one of ERROR_KINDS."""

    def __init__(self, message: str, kind: str):
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown ImageError kind {kind!r}")
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, before any pixel is decoded."""

    width: int
    height: int
    format: str

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _parse_header(data: bytes) -> ImageFile.ImageFile | None:
    """The first allowed format whose parser accepts the bytes, header parsed (lazy: no pixel
    decoded), or None. This is `Image.open`'s loop over Image.OPEN restricted to ALLOWED_FORMATS and
    without its DecompressionBombWarning (a process-global warnings filter would be needed to turn
    that into an error, and filters are not thread-safe): the caller checks the size itself."""
    prefix = data[:16]
    for name in ALLOWED_FORMATS:
        factory, accept = Image.OPEN[name]
        verdict = accept(prefix) if accept else True
        if not verdict or isinstance(verdict, str):  # a str is Pillow's "looks like it, but unsupported"
            continue
        try:
            return factory(io.BytesIO(data), "")
        except (SyntaxError, IndexError, TypeError, struct.error):  # not this format after all
            continue
    return None


def _open(data: bytes, source: str, max_pixels: int) -> Image.Image:
    """Parse the header only and refuse other formats and oversized images before anything is decoded."""
    try:
        image = _parse_header(data)
    except Image.DecompressionBombError:  # a plugin's own check (e.g. GIF frames) past Pillow's hard limit
        raise ImageError(
            f"{source}: image too large (more pixels than the limit of {max_pixels:,})", "too_large"
        ) from None
    except Exception as err:
        raise ImageError(
            f"{source}: not a readable image (a damaged {FORMATS_TEXT} header: {_first_line(err)})", "not_image"
        ) from None
    if image is None:
        raise ImageError(f"{source}: not an image in a supported format ({FORMATS_TEXT})", "not_image")
    try:
        _check_size(image, source, max_pixels)
        _check_declared_length(image, data, source)
    except ImageError:
        image.close()
        raise
    return image


# Start-of-frame markers of Huffman-coded JPEGs (baseline, extended, progressive, lossless, and their
# hierarchical forms); arithmetic-coded ones (C9-CB, CD-CF) can spend less than a bit on a block.
HUFFMAN_SOF_MARKERS = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7))
# Markers without a length field (SOI, EOI, TEM, RST0-7).
_STANDALONE_MARKERS = frozenset((0xD8, 0xD9, 0x01, *range(0xD0, 0xD8)))


def _jpeg_frame_marker(data: bytes) -> int | None:
    """The start-of-frame marker (0xC0...0xCF) of a JPEG, by walking its segments from SOI; None
    when the walk goes astray (the decoder then has the last word)."""
    pos = 2  # after SOI
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE_MARKERS:
            pos += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # DHT, JPG, DAC are not frames
            return marker
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def jpeg_min_bytes(width: int, height: int, sampling: list[tuple[int, int]]) -> int:
    """A lower bound on the bytes of a Huffman-coded JPEG of width x height: every 8x8 block of every
    component codes at least its DC value, one Huffman code of at least one bit. sampling: each
    component's (horizontal, vertical) factors; the bound counts the component with the most blocks."""
    h_max = max((h for h, _ in sampling), default=1) or 1
    v_max = max((v for _, v in sampling), default=1) or 1
    blocks = 0
    for h, v in sampling:  # a component's samples: ceil(side * factor / max factor), in 8x8 blocks
        columns = math.ceil(math.ceil(width * h / h_max) / 8)
        rows = math.ceil(math.ceil(height * v / v_max) / 8)
        blocks = max(blocks, columns * rows)
    return blocks // 8


LZW_MAX_CODES = 4096  # GIF's LZW table: 12-bit codes


def gif_min_bytes(pixels: int) -> int:
    """A lower bound on the bytes of a GIF frame of `pixels` pixels: each LZW code adds one table
    entry one pixel longer than an existing one, so the i-th code stands for at most i pixels, and
    no entry is longer than the table (4,096); every code takes at least 3 bits."""
    ramp = LZW_MAX_CODES * (LZW_MAX_CODES + 1) // 2  # pixels of the first 4,096 codes at most
    if pixels <= ramp:
        codes = math.ceil((math.sqrt(8 * pixels + 1) - 1) / 2)
    else:
        codes = LZW_MAX_CODES + math.ceil((pixels - ramp) / LZW_MAX_CODES)
    return codes * 3 // 8


def _check_declared_length(image: Image.Image, data: bytes, source: str) -> None:
    """An ImageError (truncated) for a Huffman-coded JPEG, or a GIF, shorter than its declared size
    allows (the bounds above; other formats' decoders report missing data themselves)."""
    width, height = image.size
    if image.format in ("JPEG", "MPO") and _jpeg_frame_marker(data) in HUFFMAN_SOF_MARKERS:
        layers = getattr(image, "layer", None) or [("", 1, 1, 0)]  # Pillow: (id, h, v, table) per component
        needed = jpeg_min_bytes(width, height, [(int(layer[1]), int(layer[2])) for layer in layers])
    elif image.format == "GIF" and getattr(image, "tile", None):
        x0, y0, x1, y1 = image.tile[0][1]  # type: ignore[attr-defined]  # the first frame's extent on the screen
        width, height = x1 - x0, y1 - y0
        needed = gif_min_bytes(max(width, 0) * max(height, 0))
    else:
        return
    if len(data) < needed:
        raise ImageError(
            f"{source}: truncated or corrupt {image.format} data ({width}x{height} needs at least {needed:,} "
            f"bytes, the file has {len(data):,})",
            "truncated",
        )


def _check_size(image: Image.Image, source: str, max_pixels: int) -> None:
    """An ImageError for an image without pixels or with more than max_pixels (from its header)."""
    width, height = image.size
    # Pillow's own bomb limit (Image.MAX_IMAGE_PIXELS, 89 M by default) stays a ceiling on ours.
    max_pixels = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    if width < 1 or height < 1:
        raise ImageError(f"{source}: image has no pixels ({width}x{height})", "not_image")
    if width * height > max_pixels:
        raise ImageError(
            f"{source}: image too large ({width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,})",
            "too_large",
        )


def probe_image(data: bytes, source: str = "image", max_pixels: int = MAX_IMAGE_PIXELS) -> ImageHeader:
    """The image's size and format from its header alone (microseconds, no pixel decoded); the same
    ImageError as `decode_image` for bytes that are empty, of another format, or over `max_pixels`."""
    if len(data) == 0:
        raise ImageError(f"{source}: empty (0 bytes)", "empty")
    image = _open(bytes(data), source, max_pixels)
    with image:
        return ImageHeader(image.size[0], image.size[1], image.format or "")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def _load(image: Image.Image, source: str, in_place: bool = True) -> Image.Image:
    """Decode every pixel now (a truncated or corrupt stream raises here) and apply EXIF orientation:
    in place (no copy of a large photo), or on a copy where the image is the caller's (in_place=False)."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone flipped Pillow's global: refuse rather than decode half a face
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; emokp_ray needs it False to reject truncated images"
        )
    try:
        image.load()
    except (Image.DecompressionBombError, MemoryError):
        raise ImageError(
            f"{source}: image too large to decode ({image.size[0]}x{image.size[1]})", "too_large"
        ) from None
    except Exception:
        raise ImageError(f"{source}: truncated or corrupt {image.format or 'image'} data", "truncated") from None
    try:
        if in_place:
            ImageOps.exif_transpose(image, in_place=True)
        else:
            image = ImageOps.exif_transpose(image)
    except Exception:
        pass
    return image


def _on_white(image: Image.Image, mode: str) -> Image.Image:
    """Composite an image with alpha onto white, returning `mode` ("L" or "RGB")."""
    with_alpha = image.convert("LA" if mode == "L" else "RGBA")
    white = Image.new(mode, with_alpha.size, 255 if mode == "L" else (255, 255, 255))
    white.paste(with_alpha.convert(mode), mask=with_alpha.getchannel("A"))  # blends by alpha
    return white


def _to_array(image: Image.Image, source: str) -> np.ndarray:
    """A loaded image of any supported mode -> uint8 [H, W] (grey) or [H, W, 3] (colour)."""
    mode = image.mode
    if mode in WIDE_GREY_MODES:
        # 16/32-bit grey (e.g. a 16-bit PNG): keep the top 8 of 16 bits (convert("L") would clip at 255).
        wide = np.asarray(image).astype(np.int64)
        return (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
    if mode in ("LA", "La"):
        return np.asarray(_on_white(image, "L"))
    if mode in ("1", "L"):
        return np.asarray(image.convert("L"))
    if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
        return np.asarray(_on_white(image, "RGB"))
    if mode in ("P", "RGB", "RGBX", "CMYK", "YCbCr"):
        return np.asarray(image.convert("RGB"))
    raise ImageError(
        f"{source}: unsupported image mode {mode!r} (grey, RGB, RGBA, palette or CMYK images only)", "unsupported"
    )


def decode_image(
    data: bytes | bytearray | memoryview, source: str = "image", max_pixels: int = MAX_IMAGE_PIXELS
) -> np.ndarray:
    """Decode image bytes (one of ALLOWED_FORMATS) with EXIF orientation applied.

    Returns uint8 [H, W] for grey sources or [H, W, 3] for colour ones (alpha composited on white).
    Raises `ImageError` (kind empty | not_image | truncated | too_large | unsupported); the size limit
    `max_pixels` (width * height) is checked from the header before decoding.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_image expects bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageError(f"{source}: empty (0 bytes)", "empty")
    image = _open(bytes(data), source, max_pixels)
    with image:
        loaded = _load(image, source)
        array = _to_array(loaded, source)
    return np.ascontiguousarray(array)


def load_image_file(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """`decode_image` of a file's bytes; a missing or unreadable file is a `UserError`, and a file
    larger than MAX_BYTES_PER_PIXEL * max_pixels bytes is refused (kind too_large) without reading it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise UserError(f"{path} is not a file")
        if size > MAX_BYTES_PER_PIXEL * max_pixels:
            raise ImageError(f"{path}: file too large for an image ({size:,} bytes)", "too_large")
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"image file {path} does not exist") from None
    except PermissionError:
        raise UserError(f"image file {path} cannot be read (permission denied)") from None
    except IsADirectoryError:
        raise UserError(f"{path} is not a file") from None
    return decode_image(data, source=str(path), max_pixels=max_pixels)


def to_grey(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W] (returned as is) or [H, W, 3] RGB -> uint8 [H, W] grey, ITU-R 601 luma exactly as
    Pillow's convert("L") computes it (L = (299 R + 587 G + 114 B) / 1000, rounded)."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        return np.asarray(Image.fromarray(np.ascontiguousarray(image), "RGB").convert("L"))
    raise ValueError(f"expected an image [H, W] or [H, W, 3], got shape {list(image.shape)}")


def pil_to_array(image: Image.Image, source: str = "image", max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """A caller's PIL image (any mode, maybe not loaded yet) -> `decode_image`'s output: the same
    pixel limit, EXIF orientation and mode reduction (alpha on white). The caller's image is not
    modified (orientation is applied to a copy)."""
    _check_size(image, source, max_pixels)
    return np.ascontiguousarray(_to_array(_load(image, source, in_place=False), source))


def image_array(image: object, source: str = "image", max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Any image the Python API takes -> uint8 [H, W] grey or [H, W, 3] RGB, as `decode_image` gives:

      * a path (str or os.PathLike): `load_image_file` (the path names the image in errors);
      * bytes (bytes, bytearray, memoryview): `decode_image`;
      * a numpy array: uint8 [H, W] grey or [H, W, 3] RGB (not BGR: convert OpenCV's images with
        `cv2.cvtColor(img, cv2.COLOR_BGR2RGB)`), used as it is;
      * a PIL image of any mode: `pil_to_array`.

    Anything else (a float array, 4 channels, a number) is an `ImageError` (kind "unsupported")
    naming `source` and what was given.
    """
    if isinstance(image, (str, os.PathLike)):
        return load_image_file(image, max_pixels=max_pixels)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(image, source=source, max_pixels=max_pixels)
    if isinstance(image, Image.Image):
        return pil_to_array(image, source=source, max_pixels=max_pixels)
    if isinstance(image, np.ndarray):
        what = f"a {image.dtype} array of shape {list(image.shape)}"
        if image.dtype != np.uint8:
            hint = " (scale to 0..255 and .astype(np.uint8))" if image.dtype.kind == "f" else ""
            raise ImageError(
                f"{source}: expected a uint8 array [H, W] or [H, W, 3] RGB, got {what}{hint}", "unsupported"
            )
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            channels = image.shape[2] if image.ndim == 3 else None
            hint = ""
            if channels == 4:
                hint = " (RGBA? drop alpha with array[..., :3])"
            elif channels == 1:
                hint = " (one channel: pass array[..., 0])"
            elif image.ndim == 4:
                hint = " (a batch? pass a list of images)"
            raise ImageError(
                f"{source}: expected a uint8 array [H, W] or [H, W, 3] RGB, got {what}{hint}", "unsupported"
            )
        if 0 in image.shape[:2]:
            raise ImageError(f"{source}: image has no pixels (shape {list(image.shape)})", "not_image")
        if image.shape[0] * image.shape[1] > max_pixels:
            raise ImageError(f"{source}: image too large ({what}; the limit is {max_pixels:,} pixels)", "too_large")
        return np.ascontiguousarray(image)
    raise ImageError(
        f"{source}: expected a path, bytes, a numpy array or a PIL image, got {type(image).__name__}", "unsupported"
    )
