"""Video files as a lazy sequence of sampled frames: what `emokp predict`, `emokp label` and
`FaceAnalyzer.video` feed, frame by frame, into the same Predictor (and detector) as photos.

Decoding is PyAV's (FFmpeg's libraries in a wheel; the `video` extra). Containers: whatever FFmpeg
demuxes; the ones we document and test are MP4, MOV, WebM, MKV and AVI (VIDEO_EXTENSIONS).

Frames
  * index: a frame's position in the stream, 0-based, from its timestamp and the stream's average
    frame rate (round((t - start) * rate)): the same index whether decoding started at the first
    frame or after a seek, so frame ranges decoded apart (batch labeling) agree with one pass
    (exact for constant-frame-rate video; variable-rate video gets the nearest nominal index).
    AVI files carry decode times, not presentation times: their frames are counted from the start
    (a range of an AVI decodes, without converting, the frames before it).
  * timestamp: seconds from the stream's start, from the frame's own presentation time (AVI:
    index / rate).
  * sampling at `fps` F (frames per second; None: every frame): frame i is kept when it is the first
    of its 1/F-second slot, i.e. i == 0 or floor(i * F / rate) > floor((i - 1) * F / rate). The rule
    depends on i alone, so any frame range samples exactly the frames a whole pass would; F at or
    above the stream's rate keeps every frame.
  * pixels: uint8 [H, W, 3] RGB, as decode_image gives colour photos.

Memory: one decoded frame at a time (plus FFmpeg's own few reference frames); a frame is turned into
an array only when it is sampled. A frame over images.MAX_IMAGE_PIXELS is refused from the header.

Errors: every problem with a file is a `VideoError` (a UserError) whose one line names the source:
not a video FFmpeg can read, no video stream, an undecodable codec, a corrupt packet mid-stream, no
frame at all. PyAV missing is a UserError saying what to install.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import numpy as np

from emokp_ray.errors import UserError
from emokp_ray.inference.images import MAX_IMAGE_PIXELS

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi")
DEFAULT_FPS = 3.0  # frames per second sampled by default: emotion changes over a few hundred ms
INSTALL_HINT = "pip install 'emokp-ray[video]' (PyAV)"

# A path, or a callable that opens the file (binary, seekable) each time it is called: a frame range
# that cannot seek falls back to decoding from the start, which needs the file opened again.
VideoFile = str | os.PathLike[str] | Callable[[], IO[bytes]]


class VideoError(UserError):
    """A video that cannot be read: the message names the source and what is wrong."""


def is_video(path: str | os.PathLike[str]) -> bool:
    """Whether a file name says video (VIDEO_EXTENSIONS, any case)."""
    return os.fspath(path).lower().endswith(VIDEO_EXTENSIONS)


def import_av() -> Any:
    """PyAV, or a UserError saying how to install it."""
    try:
        import av
    except ImportError:
        raise UserError(f"video input needs PyAV, which is not installed: {INSTALL_HINT}") from None
    return av


def check_fps(fps: float | None) -> float | None:
    """A sampling rate: None (every frame) or a finite number > 0, else a UserError."""
    if fps is None:
        return None
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise UserError(f"fps must be a number > 0 (frames sampled per second) or None for every frame, got {fps!r}")
    return float(fps)


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header says (nothing decoded)."""

    width: int
    height: int
    rate: float  # the stream's average frame rate, frames per second
    frames: int | None  # frames in the stream, from the container (or duration x rate); None: unknown
    duration: float | None  # seconds; None: unknown
    codec: str


@dataclass(frozen=True)
class SampledFrame:
    """One sampled frame: its index in the stream, its time and its pixels (uint8 [H, W, 3] RGB)."""

    index: int
    timestamp: float  # seconds from the stream's start
    image: np.ndarray


def sampled(index: int, fps: float | None, rate: float) -> bool:
    """Whether frame `index` is kept at `fps` from a stream at `rate` (the module docstring's rule).
    Fractions: float rounding must not make two ranges of one video disagree on a frame."""
    if fps is None or index == 0:
        return True
    f, r = Fraction(fps).limit_denominator(10_000), Fraction(rate).limit_denominator(10_000)
    if f >= r:
        return True
    return (index * f) // r > ((index - 1) * f) // r


def first_sampled(start: int, fps: float | None, rate: float) -> int:
    """The first frame index >= start that sampling keeps."""
    index = max(0, start)
    while not sampled(index, fps, rate):
        index += 1
    return index


def _first_line(err: BaseException) -> str:
    """FFmpeg's words for an error (its strerror, without the errno and the path PyAV appends)."""
    text = getattr(err, "strerror", None) or (str(err).splitlines() or [""])[0].strip()
    return str(text) or type(err).__name__


def _errors(av: Any) -> tuple[type[BaseException], ...]:
    """What PyAV raises for a bad file: FFmpeg's errors (OSError / ValueError subclasses), and the
    ValueErrors and IndexErrors of a container without what we ask of it."""
    return (av.error.FFmpegError, OSError, ValueError, IndexError, EOFError)


class _Opened:
    """An open container with its video stream and the facts sampling needs."""

    def __init__(self, file: VideoFile, source: str):
        self.av = import_av()
        self.source = source
        self._file = None
        if not callable(file) and not os.path.isfile(file):
            what = "a folder" if os.path.isdir(file) else "no such file"
            raise VideoError(f"{source}: {what}")
        try:
            if callable(file):
                self._file = file()
                self.container = self.av.open(self._file, mode="r")
            else:
                self.container = self.av.open(os.fspath(file), mode="r")
        except _errors(self.av) as err:
            self.close()
            raise VideoError(f"{source}: not a video file FFmpeg can read ({_first_line(err)})") from None
        try:
            streams = self.container.streams.video
            if not streams:
                raise VideoError(f"{source}: no video stream in this file")
            self.stream = streams[0]
            self.stream.thread_type = "AUTO"  # FFmpeg's frame/slice threads
            threads = os.environ.get("OMP_NUM_THREADS", "")
            if threads.isdigit() and int(threads) > 0:  # a Ray task's CPUs: FFmpeg would take every core
                self.stream.codec_context.thread_count = int(threads)
            context = self.stream.codec_context
            self.width, self.height = int(context.width or 0), int(context.height or 0)
            if self.width <= 0 or self.height <= 0:
                raise VideoError(f"{source}: the video stream has no frame size (codec {context.name!r})")
            if self.width * self.height > MAX_IMAGE_PIXELS:
                raise VideoError(
                    f"{source}: frames of {self.width}x{self.height} are larger than {MAX_IMAGE_PIXELS:,} pixels"
                )
            rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
            if not rate or float(rate) <= 0:
                raise VideoError(f"{source}: the video stream has no frame rate")
            self.rate = float(rate)
            self.time_base = self.stream.time_base or Fraction(1, 1_000_000)
            start = self.stream.start_time
            self.start = float(start * self.time_base) if start is not None else 0.0
            # AVI stores decode times, not presentation times: with B-frames (H.264 in AVI) the
            # timestamps come out of order. There, frames are counted from the start, never sought.
            self.counted = "avi" in (self.container.format.name or "").split(",")
        except VideoError:
            self.close()
            raise
        except _errors(self.av) as err:
            self.close()
            raise VideoError(f"{source}: unsupported video ({_first_line(err)})") from None

    def info(self) -> VideoInfo:
        duration = None
        if self.stream.duration is not None:
            duration = float(self.stream.duration * self.time_base)
        elif self.container.duration is not None:
            duration = self.container.duration / 1_000_000  # AV_TIME_BASE: microseconds
        frames = int(self.stream.frames or 0) or (round(duration * self.rate) if duration else None)
        return VideoInfo(self.width, self.height, self.rate, frames, duration, self.stream.codec_context.name)

    def index_of(self, frame: Any, counted: int) -> tuple[int, float]:
        """(index, timestamp) of a decoded frame; `counted`: its position in this pass, used only
        where the frame carries no timestamp."""
        if frame.pts is None or self.counted:
            return counted, counted / self.rate
        t = float(frame.pts * self.time_base) - self.start
        return max(0, round(t * self.rate)), max(0.0, t)

    def seek_before(self, index: int) -> None:
        """Seek to the key frame at or before frame `index` (a frame early, against rounding)."""
        seconds = max(0.0, (index - 1) / self.rate + self.start)
        self.container.seek(int(seconds / self.time_base), stream=self.stream, backward=True, any_frame=False)

    def close(self) -> None:
        container = getattr(self, "container", None)
        if container is not None:
            container.close()
        if self._file is not None:
            self._file.close()
            self._file = None


def probe_video(file: VideoFile, source: str | None = None) -> VideoInfo:
    """The header facts of a video (VideoError where it is not one we can read)."""
    opened = _Opened(file, source or _name(file))
    try:
        return opened.info()
    finally:
        opened.close()


def _name(file: VideoFile) -> str:
    return "video" if callable(file) else os.fspath(file)


def iter_frames(
    file: VideoFile,
    fps: float | None = DEFAULT_FPS,
    start: int = 0,
    stop: int | None = None,
    source: str | None = None,
) -> Iterator[SampledFrame]:
    """The sampled frames of frames [start, stop) (stop None: to the end), decoded lazily, in order.

    A range that starts after the first frame seeks to the key frame before it; where the container
    cannot seek (or lands past the range), the range is decoded from the start instead. Raises
    VideoError for an unreadable file or a corrupt stream (frames already yielded stay valid); a
    whole video (start 0, stop None) without a single decodable frame is a VideoError too.
    """
    fps = check_fps(fps)
    source = source or _name(file)
    yielded = decoded = False
    for attempt in ("seek", "from_start") if start > 0 else ("from_start",):
        opened = _Opened(file, source)
        try:
            if attempt == "seek":
                if opened.counted:
                    continue  # frames are counted from the start: decode from there
                try:
                    opened.seek_before(start)
                except _errors(opened.av):
                    continue  # cannot seek: decode from the start
            counted, first = 0, True
            try:
                for frame in opened.container.decode(opened.stream):
                    decoded = True
                    index, timestamp = opened.index_of(frame, counted)
                    counted += 1
                    if first and attempt == "seek" and index > start:
                        break  # the seek landed past the range's first frame: decode from the start
                    first = False
                    if stop is not None and index >= stop:
                        return
                    if index < start or not sampled(index, fps, opened.rate):
                        continue
                    image = frame.to_ndarray(format="rgb24")
                    yielded = True
                    yield SampledFrame(index, timestamp, np.ascontiguousarray(image))
                else:
                    break  # decoded to the end
            except _errors(opened.av) as err:
                raise VideoError(f"{source}: corrupt or unsupported video data ({_first_line(err)})") from None
        finally:
            opened.close()
    if start == 0 and stop is None and not decoded and not yielded:
        raise VideoError(f"{source}: no video frame could be decoded")


def frame_ranges(info: VideoInfo, fps: float | None, sampled_per_range: int) -> list[tuple[int, int | None]]:
    """Split a video into [start, stop) frame ranges of about `sampled_per_range` sampled frames each,
    for labeling in parallel; the last range is open (stop None) so that frames past the header's
    count are still labelled. A video of unknown length is one open range."""
    if info.frames is None or info.frames <= 0:
        return [(0, None)]
    step = sampled_per_range if fps is None or fps >= info.rate else math.ceil(sampled_per_range * info.rate / fps)
    starts = list(range(0, info.frames, max(1, step))) or [0]
    return [(lo, hi) for lo, hi in zip(starts, starts[1:] + [None])]


class VideoWriter:
    """Frames (uint8 [H, W, 3] RGB or PIL images) -> a video file (H.264 where the FFmpeg build has it,
    else MPEG-4 Part 2), opened at the first frame. Odd sizes are padded by one pixel (4:2:0 needs
    even ones). Use as a context manager; `close()` flushes the encoder."""

    def __init__(
        self,
        path: str | os.PathLike[str] | IO[bytes],
        rate: float,
        format: str | None = None,
        codec: str | None = None,
    ):
        self.av = import_av()
        self.path, self.rate, self.format, self.codec = path, rate, format, codec
        self.container: Any = None
        self.stream: Any = None
        self.frames = 0

    def _open(self, width: int, height: int) -> None:
        target = self.path if hasattr(self.path, "write") else os.fspath(self.path)
        self.container = self.av.open(
            target, mode="w", format=self.format or ("mp4" if hasattr(target, "write") else None)
        )
        codec = self.codec or ("libx264" if "libx264" in self.av.codecs_available else "mpeg4")
        self.stream = self.container.add_stream(codec, rate=Fraction(self.rate).limit_denominator(1001))
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.stream.codec_context.gop_size = max(1, round(self.rate))  # a key frame a second: seekable

    def write(self, image: Any) -> None:
        array = np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        height, width = array.shape[:2]
        pad = ((0, height % 2), (0, width % 2), (0, 0))
        if any(p for p, _ in pad[:2]) or any(p for _, p in pad[:2]):
            array = np.pad(array, pad, mode="edge")
        if self.container is None:
            self._open(array.shape[1], array.shape[0])
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(array, np.uint8), format="rgb24")
        frame.pts = self.frames  # in the stream's 1/rate time base
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self.container is None:
            return
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()
        self.container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def output_rate(fps: float | None, rate: float) -> float:
    """The frame rate of an annotated video: the sampling rate, or the source's where every frame is kept."""
    return rate if fps is None or fps >= rate else fps


def predict_video(
    predictor: Any,
    file: VideoFile,
    fps: float | None = DEFAULT_FPS,
    mode: str = "auto",
    source: str | None = None,
    batch_size: int = 8,
) -> Iterator[tuple[SampledFrame, Any]]:
    """(frame, ImageResult) for each sampled frame, in order, through `predictor.predict` (the one
    Predictor of photos: detection, framing, networks) `batch_size` frames at a time; each result
    carries the frame's index and timestamp. A VideoError mid-stream comes after the results of the
    frames decoded before it."""
    batch: list[SampledFrame] = []

    def run() -> Iterator[tuple[SampledFrame, Any]]:
        results = predictor.predict([f.image for f in batch], mode=mode)
        for frame, result in zip(batch, results):
            result.frame_index, result.timestamp = frame.index, frame.timestamp
            yield frame, result
        batch.clear()

    try:
        for frame in iter_frames(file, fps, source=source):
            batch.append(frame)
            if len(batch) >= batch_size:
                yield from run()
    except VideoError:
        if batch:
            yield from run()
        raise
    if batch:
        yield from run()


def write_moving_photo_clip(
    path: str | os.PathLike[str],
    photo: str | os.PathLike[str],
    frames: int = 30,
    rate: float = 10.0,
    size: tuple[int, int] = (320, 240),
    blank: tuple[int, ...] = (),
) -> None:
    """A test clip: `photo` scaled to 3/4 of the frame height, moved across the frame and turned by
    up to +-12 degrees, one step per frame (frames indexed in `blank` are an empty grey frame: no
    face). The container is the file's extension (mp4, webm, mov, avi, mkv); tests and benchmarks
    make their videos with it."""
    from PIL import Image

    width, height = size
    face = Image.open(photo).convert("RGB")
    scale = 0.75 * height / face.height
    face = face.resize((round(face.width * scale), round(face.height * scale)), Image.Resampling.BILINEAR)
    fmt = {".webm": "webm", ".mkv": "matroska", ".avi": "avi", ".mov": "mov"}.get(Path(path).suffix.lower())
    codec = {".webm": "libvpx-vp9"}.get(Path(path).suffix.lower())
    with VideoWriter(path, rate, format=fmt, codec=codec) as writer:
        for k in range(frames):
            canvas = Image.new("RGB", size, (96, 96, 96))
            if k not in blank:
                phase = k / max(1, frames - 1)
                turned = face.rotate(
                    12 * math.sin(2 * math.pi * phase),
                    resample=Image.Resampling.BILINEAR,
                    expand=True,
                    fillcolor=(96, 96, 96),
                )
                x = round((width - turned.width) * (0.2 + 0.6 * phase))
                canvas.paste(turned, (x, (height - turned.height) // 2))
            writer.write(canvas)
