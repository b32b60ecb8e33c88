"""The Kaggle CSV readers: format detection, values read back, and every kind of bad input."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pytest
from PIL import Image

from emokp_ray.data.kaggle import MAX_REPORTED_BAD, detect_format, read_kaggle
from emokp_ray.errors import UserError
from emokp_ray.labels import KEYPOINT_COLUMNS, SPARSE_KEYPOINTS

FER_PIXELS = 48 * 48
KP_PIXELS = 96 * 96


def pixels(seed: int, count: int = FER_PIXELS) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, count, dtype=np.uint8)


def pixel_text(values: np.ndarray) -> str:
    return " ".join(map(str, values.tolist()))


def keypoint_values(seed: int, complete: bool = True) -> np.ndarray:
    """[30] coordinates inside the 96x96 image; NaN for the 11 points Kaggle's partial rows lack."""
    coords = np.random.default_rng(seed).uniform(10, 85, 30).round(4)
    if not complete:
        for j, name in enumerate(KEYPOINT_COLUMNS):
            if name[:-2] not in SPARSE_KEYPOINTS:
                coords[j] = np.nan
    return coords


def coord_text(coords: np.ndarray) -> str:
    return ",".join("" if np.isnan(v) else f"{v:.4f}" for v in coords)


def write(path, text: str, compress: bool = False):
    data = text.encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def fer_csv(rows: list[tuple[int, str]], usage: list[str] | None = None, header: str = "emotion,pixels,Usage") -> str:
    names = [h.strip() for h in header.split(",")]
    lines = [header]
    for i, (label, pix) in enumerate(rows):
        values = {"emotion": str(label), "pixels": pix, "Usage": (usage[i] if usage else "Training")}
        lines.append(",".join(values[n] for n in names))
    return "\n".join(lines) + "\n"


def keypoints_csv(rows: list[tuple[str, str]]) -> str:
    return "\n".join([",".join(KEYPOINT_COLUMNS + ("Image",))] + [f"{c},{p}" for c, p in rows]) + "\n"


# ---------------------------------------------------------------- format detection and values


def test_detects_all_six_formats_and_reads_their_values(tmp_path):
    fer_pix = [pixels(i) for i in range(3)]
    fer = write(
        tmp_path / "fer2013.csv",
        fer_csv([(3, pixel_text(p)) for p in fer_pix], ["Training", "PublicTest", "PrivateTest"]),
    )
    icml = write(
        tmp_path / "icml_face_data.csv",
        "emotion, Usage, pixels\n"
        + "".join(
            f"{lab}, {use}, {pixel_text(p)}\n"
            for lab, use, p in zip((0, 4, 5), ("Training", "PublicTest", "Training"), fer_pix)
        ),
    )
    two = write(
        tmp_path / "two.csv",
        "emotion, pixels\n" + "".join(f"{lab},{pixel_text(p)}\n" for lab, p in zip((1, 3, 5), fer_pix)),
    )
    kp_pix = [pixels(10 + i, KP_PIXELS) for i in range(2)]
    partial = [keypoint_values(1, complete=True), keypoint_values(2, complete=False)]
    training = write(
        tmp_path / "training.csv", keypoints_csv([(coord_text(c), pixel_text(p)) for c, p in zip(partial, kp_pix)])
    )
    data = write(tmp_path / "data.csv", keypoints_csv([(coord_text(keypoint_values(3)), pixel_text(kp_pix[0]))]))
    test = write(
        tmp_path / "test.csv", "ImageId,Image\n" + "".join(f"{i + 1},{pixel_text(p)}\n" for i, p in enumerate(kp_pix))
    )

    names = {p.name: detect_format(p).name for p in (fer, icml, two, training, data, test)}
    assert names == {
        "fer2013.csv": "fer2013",
        "icml_face_data.csv": "icml_face_data",
        "two.csv": "fer_2col",
        "training.csv": "keypoints",
        "data.csv": "keypoints",
        "test.csv": "keypoints_test",
    }

    (chunk,) = read_kaggle(fer)
    np.testing.assert_array_equal(chunk.images, np.stack(fer_pix).reshape(3, 48, 48))
    assert chunk.labels.tolist() == [3, 3, 3]  # FER 3 happy -> seed5 3 happiness
    assert chunk.usage.tolist() == ["Training", "PublicTest", "PrivateTest"]
    assert chunk.row_ids.tolist() == [2, 3, 4] and chunk.keypoints is None

    (chunk,) = read_kaggle(icml)  # leading spaces in names and values; seed5: 0->0, 4->2, 5->4
    assert chunk.labels.tolist() == [0, 2, 4] and chunk.usage.tolist() == ["Training", "PublicTest", "Training"]
    np.testing.assert_array_equal(chunk.images[1].reshape(-1), fer_pix[1])

    (chunk,) = read_kaggle(two)
    assert chunk.labels.tolist() == [1, 3, 4] and chunk.usage is None

    (chunk,) = read_kaggle(training)
    assert chunk.images.shape == (2, 96, 96) and chunk.labels is None
    np.testing.assert_allclose(chunk.keypoints[0], partial[0], atol=1e-4)
    assert np.isnan(chunk.keypoints[1]).sum() == 22  # 11 missing points kept as NaN, row not dropped
    np.testing.assert_allclose(chunk.keypoints[1][~np.isnan(partial[1])], partial[1][~np.isnan(partial[1])], atol=1e-4)

    (chunk,) = read_kaggle(test)
    assert chunk.keypoints is None and chunk.labels is None and chunk.image_ids.tolist() == [1, 2]
    batch = chunk.to_batch()
    assert batch["label"].tolist() == [-1, -1] and np.isnan(batch["keypoints"]).all()
    assert batch["image"].dtype == np.uint8 and batch["keypoints"].shape == (2, 30)


def test_gzip_is_detected_from_the_bytes_not_the_name(tmp_path):
    text = fer_csv([(0, pixel_text(pixels(0)))])
    gz_named_csv = write(tmp_path / "a.csv", text, compress=True)
    plain_named_gz = write(tmp_path / "b.csv.gz", text)
    gz = write(tmp_path / "c.csv.gz", text, compress=True)
    for path in (gz_named_csv, plain_named_gz, gz):
        assert detect_format(path).name == "fer2013"
        (chunk,) = read_kaggle(path)
        np.testing.assert_array_equal(chunk.images.reshape(-1), pixels(0))


def test_header_columns_match_in_any_order_and_case_and_extras_are_ignored(tmp_path):
    path = write(tmp_path / "x.csv", f"Pixels,idx,USAGE,Emotion\n{pixel_text(pixels(1))},7,PublicTest,5\n")
    reader = read_kaggle(path)
    (chunk,) = reader
    assert reader.format.name == "fer2013" and chunk.labels.tolist() == [4] and chunk.usage.tolist() == ["PublicTest"]


def test_fer7_keeps_every_label_and_seed5_counts_drops_apart_from_bad_rows(tmp_path):
    rows = [(label, pixel_text(pixels(label))) for label in range(7)] + [(9, pixel_text(pixels(9)))]
    path = write(tmp_path / "fer.csv", fer_csv(rows))
    seed5, fer7 = read_kaggle(path, scheme="seed5"), read_kaggle(path, scheme="fer7")
    (c5,), (c7,) = list(seed5), list(fer7)
    assert c7.labels.tolist() == list(range(7))
    assert c5.labels.tolist() == [0, 1, 3, 2, 4]  # FER 0,1,3,4,5 -> anger, disgust, happiness, sad, surprise
    assert c5.row_ids.tolist() == [2, 3, 5, 6, 7]  # fear (line 4) and neutral (line 8) dropped
    assert (seed5.report.rows_read, seed5.report.rows_kept, seed5.report.dropped_by_scheme, seed5.report.bad_rows) == (
        8,
        5,
        2,
        1,
    )
    assert (fer7.report.rows_kept, fer7.report.dropped_by_scheme, fer7.report.bad_rows) == (7, 0, 1)
    assert "2 dropped by scheme seed5" in str(seed5.report) and "1 bad" in str(seed5.report)


def test_line_numbers_are_file_lines_with_blank_lines_crlf_and_chunks(tmp_path):
    p = [pixel_text(pixels(i)) for i in range(5)]
    text = f"emotion,pixels,Usage\r\n0,{p[0]},Training\r\n\r\n3,{p[1]},Training\r\n0,{p[2]},Training\r\n\r\n\r\n5,{p[3]},Training\r\n"
    path = write(tmp_path / "crlf.csv", text)
    chunks = list(read_kaggle(path, chunk_rows=2))
    assert [len(c) for c in chunks] == [2, 2]
    assert np.concatenate([c.row_ids for c in chunks]).tolist() == [2, 4, 5, 8]
    np.testing.assert_array_equal(chunks[1].images[1].reshape(-1), pixels(3))


# ---------------------------------------------------------------- bad rows


def bad_fer_file(tmp_path):
    """A FER file whose lines 3..10 are bad in eight different ways (lines 2 and 11 are good)."""
    good = pixel_text(pixels(0))
    short = pixel_text(pixels(0)[:-1])
    rows = [
        "0," + good + ",Training",  # 2 good
        "0," + short + ",Training",  # 3 wrong pixel count
        "0," + good.replace(" 1", " x1", 1) + ",Training",  # 4 non-numeric pixel
        "0," + "256 " + good.split(" ", 1)[1] + ",Training",  # 5 pixel > 255
        "0," + "-1 " + good.split(" ", 1)[1] + ",Training",  # 6 pixel < 0
        "7," + good + ",Training",  # 7 label out of 0..6
        "happy," + good + ",Training",  # 8 label not an int
        "0," + good,  # 9 missing field
        "0," + good + ",Validation",  # 10 unknown Usage
        "3," + good + ",PublicTest",  # 11 good
    ]
    return write(tmp_path / "bad.csv", "emotion,pixels,Usage\n" + "\n".join(rows) + "\n")


def test_lenient_reading_skips_bad_rows_and_reports_lines_and_reasons(tmp_path):
    reader = read_kaggle(bad_fer_file(tmp_path))
    chunks = list(reader)
    assert np.concatenate([c.row_ids for c in chunks]).tolist() == [2, 11]
    report = reader.report
    assert (report.rows_read, report.rows_kept, report.bad_rows) == (10, 2, 8)
    assert [line for line, _ in report.first_bad] == [3, 4, 5, 6, 7][:MAX_REPORTED_BAD]
    reasons = dict(report.first_bad)
    assert reasons[3] == "expected 2304 pixel values, found 2303"
    assert reasons[4].startswith("non-numeric pixel value 'x1") and reasons[4].endswith("(value 2)")
    assert "pixel value 256 out of range 0..255 (value 1)" == reasons[5]
    assert "pixel value -1 out of range" in reasons[6]
    assert "unknown emotion label '7'" in reasons[7]
    text = str(report)
    assert "line 3: expected 2304 pixel values" in text and "... and 3 more bad rows" in text


@pytest.mark.parametrize(
    "first_bad_line, reason",
    [
        (3, "expected 2304 pixel values, found 2303"),
        (4, "non-numeric pixel value"),
        (5, "out of range 0..255"),
        (6, "pixel value -1"),
        (7, "unknown emotion label '7'"),
        (8, "unknown emotion label 'happy'"),
        (9, "expected 3 fields, found 2"),
        (10, "unknown Usage 'Validation'"),
    ],
)
def test_strict_reading_stops_at_the_first_bad_row_with_file_line_and_reason(tmp_path, first_bad_line, reason):
    src = bad_fer_file(tmp_path).read_text().splitlines()
    # Keep the header, the good line 2, then the bad row under test as line 3 and a good row after it.
    path = write(tmp_path / "one_bad.csv", "\n".join([src[0], src[1], src[first_bad_line - 1], src[1]]) + "\n")
    with pytest.raises(UserError) as err:
        list(read_kaggle(path, strict=True))
    assert str(err.value).startswith(f"{path}:3: ") and reason in str(err.value)
    reader = read_kaggle(path)  # lenient: the same row is skipped and reported
    assert sum(len(c) for c in reader) == 2 and reader.report.first_bad[0][0] == 3


def test_bad_keypoint_rows(tmp_path):
    pix = pixel_text(pixels(0, KP_PIXELS))
    good = keypoint_values(0)

    def with_value(j, value):
        c = good.copy()
        c[j] = value
        return coord_text(c)

    rows = [
        (coord_text(good), pix),  # 2 good
        (with_value(0, 96.0), pix),  # 3 x outside [-0.5, 95.5]
        (with_value(3, -0.6), pix),  # 4 y outside
        (coord_text(good).replace(coord_text(good).split(",")[2], "abc", 1), pix),  # 5 non-numeric
        (with_value(1, np.nan), pix),  # 6 x without y
        (coord_text(np.full(30, np.nan)), pix),  # 7 no keypoints at all
        (with_value(0, 95.5), pixel_text(pixels(0, KP_PIXELS - 5))),  # 8 on the edge (ok) but short image
        (with_value(0, 95.5), pix),  # 9 good: 95.5 is the image's edge
    ]
    path = write(tmp_path / "training.csv", keypoints_csv(rows))
    reader = read_kaggle(path)
    (chunk,) = reader
    assert chunk.row_ids.tolist() == [2, 9] and chunk.keypoints[1, 0] == 95.5
    reasons = dict(reader.report.first_bad)
    assert reader.report.bad_rows == 6
    assert reasons[3] == "left_eye_center_x = 96 is outside the 96x96 image [-0.5, 95.5]"
    assert "right_eye_center_y = -0.6 is outside" in reasons[4]
    assert "non-numeric coordinate 'abc' in column right_eye_center_x" == reasons[5]
    assert reasons[6] == "keypoint left_eye_center has only one of x, y"
    assert reasons[7] == "no keypoint values"
    with pytest.raises(UserError, match=r"t2.csv:3: expected 9216 pixel values, found 9211"):
        list(read_kaggle(write(tmp_path / "t2.csv", keypoints_csv([rows[0], rows[6]])), strict=True))


def test_report_lists_only_the_first_few_bad_lines_but_counts_all(tmp_path):
    rows = [(0, "1 2 3")] * 12 + [(0, pixel_text(pixels(0)))]
    reader = read_kaggle(write(tmp_path / "many.csv", fer_csv(rows)))
    assert sum(len(c) for c in reader) == 1
    assert reader.report.bad_rows == 12 and [line for line, _ in reader.report.first_bad] == [2, 3, 4, 5, 6]
    assert "... and 7 more bad rows" in str(reader.report)


# ---------------------------------------------------------------- whole-file problems


def test_unknown_format_names_file_header_and_known_formats(tmp_path):
    path = write(tmp_path / "prices.csv", "date,price\n2024-01-01,3\n")
    with pytest.raises(UserError) as err:
        detect_format(path)
    message = str(err.value)
    assert str(path) in message and "'date,price'" in message
    assert all(name in message for name in ("fer2013", "icml_face_data", "fer_2col", "keypoints", "keypoints_test"))
    assert "\n" not in message


def test_missing_column_is_named(tmp_path):
    fer = write(tmp_path / "fer.csv", "emotion,Usage\n0,Training\n")
    with pytest.raises(UserError, match=r"fer.csv: header lacks column 'pixels' needed by format fer2013"):
        read_kaggle(fer)
    header = ",".join(c for c in KEYPOINT_COLUMNS if c != "nose_tip_y") + ",Image"
    kp = write(tmp_path / "kp.csv", header + "\n")
    with pytest.raises(UserError, match=r"lacks column 'nose_tip_y' needed by format keypoints"):
        detect_format(kp)


def test_empty_file_and_header_only_file(tmp_path):
    for path in (
        write(tmp_path / "empty.csv", ""),
        write(tmp_path / "empty.csv.gz", "", compress=True),
        write(tmp_path / "blank.csv", "\n\n"),
    ):
        with pytest.raises(UserError, match=r"is empty: expected a CSV header line"):
            read_kaggle(path)
    reader = read_kaggle(write(tmp_path / "header.csv", "emotion,pixels,Usage\n"))
    assert list(reader) == [] and reader.report.rows_read == 0


def test_binary_files_are_refused(tmp_path):
    random_bytes = tmp_path / "random.csv"
    random_bytes.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    png = tmp_path / "face.csv"
    buf = io.BytesIO()
    Image.fromarray(pixels(0).reshape(48, 48)).save(buf, format="PNG")
    png.write_bytes(buf.getvalue())
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("émotion,pixels\n".encode("latin-1"))
    for path in (random_bytes, png, latin1):
        with pytest.raises(UserError, match=rf"{path.name} is a binary file"):
            detect_format(path)


@pytest.mark.parametrize("strict", [False, True])
def test_truncated_gzip_is_an_error_in_both_modes(tmp_path, strict):
    rows = [(i % 7, pixel_text(pixels(i))) for i in range(60)]  # ~540 KB of text, more than the 64 KB sniffed
    data = gzip.compress(fer_csv(rows).encode())
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(data[: len(data) * 2 // 3])
    reader = read_kaggle(path, strict=strict)  # the header is fine
    with pytest.raises(UserError, match=r"cut.csv.gz: gzip data is truncated or corrupt after line \d+"):
        list(reader)
    tiny = tmp_path / "tiny.csv.gz"
    tiny.write_bytes(gzip.compress(b"emotion,pixels\n0,1 2 3\n")[:-12])
    with pytest.raises(UserError, match=r"tiny.csv.gz: gzip data is truncated or corrupt"):
        read_kaggle(tiny, strict=strict)
    corrupt = tmp_path / "corrupt.csv.gz"  # complete length, damaged bytes in the middle
    damaged = bytearray(data)
    damaged[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    corrupt.write_bytes(bytes(damaged))
    with pytest.raises(UserError, match=r"corrupt.csv.gz: gzip data is truncated or corrupt after line \d+"):
        list(read_kaggle(corrupt, strict=strict))


def test_missing_path_and_unknown_scheme(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        detect_format(tmp_path / "nope.csv")
    with pytest.raises(UserError, match="unknown emotion scheme 'seed6'"):
        read_kaggle(write(tmp_path / "f.csv", "emotion,pixels\n"), scheme="seed6")
