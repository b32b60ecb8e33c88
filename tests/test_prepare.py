"""`prepare_dataset`: splits, counts, atomic output, determinism and stratification, real data."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from emokp_ray.data.near_duplicates import fingerprints, group_split, near_duplicate_groups
from emokp_ray.data.prepare import StratifiedSplitter, prepare_dataset
from emokp_ray.data.schema import DATASET_META, images_from_column, iter_split, keypoints_from_column, read_info
from emokp_ray.errors import UserError
from emokp_ray.labels import KEYPOINT_COLUMNS, SPARSE_KEYPOINTS

FER_GZ = Path("fer2013") / "fer2013.csv.gz"  # under ../shared/data (conftest's real_data fixture)
KEYPOINTS_GZ = Path("facial-keypoints") / "training.csv.gz"


def pixel_text(seed: int, side: int) -> str:
    return " ".join(map(str, np.random.default_rng(seed).integers(0, 256, side * side).tolist()))


def write(path: Path, lines: list[str], compress: bool = False) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def fer_file(path: Path, labels: list[int], usage: list[str] | None = None, compress: bool = False) -> Path:
    """fer2013 layout with `usage`, else the 2-column variant. Pixel text is shared to keep tests fast."""
    pix = pixel_text(0, 48)
    if usage is None:
        return write(path, ["emotion,pixels"] + [f"{lab},{pix}" for lab in labels], compress)
    return write(path, ["emotion,pixels,Usage"] + [f"{lab},{pix},{u}" for lab, u in zip(labels, usage)], compress)


def keypoints_file(path: Path, complete: list[bool]) -> Path:
    pix = pixel_text(1, 96)
    full = ",".join(f"{40 + (j % 7)}.25" for j in range(30))
    sparse = ",".join(
        f"{40 + (j % 7)}.25" if c[:-2] in SPARSE_KEYPOINTS else "" for j, c in enumerate(KEYPOINT_COLUMNS)
    )
    rows = [f"{full if c else sparse},{pix}" for c in complete]
    return write(path, [",".join(KEYPOINT_COLUMNS + ("Image",))] + rows)


def read_split(out: Path, split: str) -> pa.Table:
    tables = list(iter_split(out, split))
    return pa.concat_tables(tables) if tables else None


def split_of_rows(out: Path) -> dict[tuple[str, int], str]:
    mapping = {}
    for split in ("train", "val", "test"):
        table = read_split(out, split)
        if table is not None:
            for source, row in zip(table["source"].to_pylist(), table["row_id"].to_pylist()):
                mapping[(source, row)] = split
    return mapping


def test_fer_usage_decides_the_split_and_counts_per_class(tmp_path):
    labels = [0, 1, 2, 3, 4, 5, 6, 3, 3, 0]
    usage = [
        "Training",
        "Training",
        "Training",
        "PublicTest",
        "PrivateTest",
        "Training",
        "Training",
        "PrivateTest",
        "Training",
        "PublicTest",
    ]
    src = fer_file(tmp_path / "fer2013.csv.gz", labels, usage, compress=True)
    result = prepare_dataset(
        [src], tmp_path / "out", val_fraction=0.0, test_fraction=0.5
    )  # test_fraction: not for Usage files
    info = read_info(tmp_path / "out")
    assert info.tasks == ["emotion"] and info.scheme == "seed5" and info.image_sizes == [[48, 48]]
    assert info.counts["train"] == {
        "rows": 4,
        "keypoints": 0,
        "complete_keypoints": 0,
        "anger": 1,
        "disgust": 1,
        "sad": 0,
        "happiness": 1,
        "surprise": 1,
    }
    assert "val" not in info.counts
    # PublicTest and PrivateTest are the test split
    assert (
        info.counts["test"]["rows"] == 4 and info.counts["test"]["happiness"] == 2 and info.counts["test"]["sad"] == 1
    )
    assert info.extra["reports"][0]["dropped_by_scheme"] == 2 and info.extra["formats"] == {"fer2013.csv.gz": "fer2013"}
    test = read_split(tmp_path / "out", "test")
    assert test["row_id"].to_pylist() == [5, 6, 9, 11] and test["label"].to_pylist() == [3, 2, 3, 0]
    images = images_from_column(test["image"], 48, 48)
    assert images.shape == (4, 48, 48) and images[0].reshape(-1).tolist()[:3] == [
        int(v) for v in pixel_text(0, 48).split()[:3]
    ]
    text = result.summary()
    assert "2 dropped by scheme seed5" in text and "-> train 4, test 4" in text
    assert "happiness" in text and "complete_keypoints" not in text


def test_keypoints_and_test_csv_together(tmp_path):
    kp = keypoints_file(tmp_path / "training.csv", [True, False, True])
    pix = pixel_text(2, 96)
    test = write(tmp_path / "test.csv", ["ImageId,Image", f"1,{pix}", f"2,{pix}"])
    prepare_dataset([kp, test], tmp_path / "out", val_fraction=0.0, test_fraction=0.0)
    info = read_info(tmp_path / "out")
    assert info.tasks == ["keypoints"] and info.scheme is None and info.image_sizes == [[96, 96]]
    assert info.counts["train"] == {"rows": 3, "keypoints": 3, "complete_keypoints": 2}
    assert info.counts["test"] == {"rows": 2, "keypoints": 0, "complete_keypoints": 0}
    table = read_split(tmp_path / "out", "test")
    assert np.isnan(keypoints_from_column(table["keypoints"])).all() and set(table["label"].to_pylist()) == {-1}
    kps = keypoints_from_column(read_split(tmp_path / "out", "train")["keypoints"])
    assert np.isnan(kps[1]).sum() == 22 and kps[0, 0] == 40.25


def test_stratified_split_is_deterministic_and_keeps_class_proportions(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 1, 3, 4, 5], size=1000, p=[0.15, 0.05, 0.4, 0.25, 0.15]).tolist()
    src = fer_file(tmp_path / "two.csv", labels)
    kwargs = dict(val_fraction=0.2, test_fraction=0.1, chunk_rows=64)
    prepare_dataset([src], tmp_path / "a", seed=7, **kwargs)
    prepare_dataset([src], tmp_path / "b", seed=7, **kwargs)
    prepare_dataset([src], tmp_path / "c", seed=8, **kwargs)
    a, b, c = split_of_rows(tmp_path / "a"), split_of_rows(tmp_path / "b"), split_of_rows(tmp_path / "c")
    assert a == b and len(a) == 1000
    assert sum(a[k] != c[k] for k in a) > 200  # another seed shuffles differently
    per_class = Counter(labels)
    counts = read_info(tmp_path / "a").counts
    for cls, name in zip([0, 1, 3, 4, 5], ["anger", "disgust", "happiness", "sad", "surprise"]):
        n = per_class[cls]
        # Exact at each 20-row block boundary; the last partial block moves at most a few rows.
        assert abs(counts["val"][name] - 0.2 * n) <= 4, (name, counts["val"][name], n)
        assert abs(counts["test"][name] - 0.1 * n) <= 2, (name, counts["test"][name], n)
    assert counts["train"]["rows"] + counts["val"]["rows"] + counts["test"]["rows"] == 1000
    # The split of a row does not depend on how the file is chunked.
    prepare_dataset([src], tmp_path / "d", seed=7, val_fraction=0.2, test_fraction=0.1, chunk_rows=1000)
    assert split_of_rows(tmp_path / "d") == a


def test_keypoint_rows_are_stratified_by_completeness(tmp_path):
    complete = [bool(i % 3) for i in range(300)]  # 200 complete, 100 partial
    prepare_dataset(
        [keypoints_file(tmp_path / "data.csv", complete)],
        tmp_path / "out",
        val_fraction=0.1,
        seed=3,
        test_fraction=0.0,
        group_near_duplicates=False,
    )  # the fixture's faces are all one image
    counts = read_info(tmp_path / "out").counts
    assert counts["val"]["rows"] == 30 and counts["val"]["complete_keypoints"] == 20


def test_splitter_quota_is_exact_at_block_boundaries():
    splitter = StratifiedSplitter(seed=0, val_fraction=0.15, test_fraction=0.05)
    strata = np.repeat([0, 1], [200, 100])
    out = np.concatenate([splitter.assign("f", strata[:150]), splitter.assign("f", strata[150:])])
    for stratum, n in ((0, 200), (1, 100)):
        got = Counter(out[strata == stratum])
        assert (got["val"], got["test"], got["train"]) == (round(0.15 * n), round(0.05 * n), n - round(0.2 * n))


def test_a_failing_input_leaves_the_previous_output_untouched(tmp_path):
    good = fer_file(tmp_path / "good.csv", [0, 3], ["Training", "PublicTest"])
    rows = fer_file(tmp_path / "big.csv", [i % 7 for i in range(60)], ["Training"] * 60).read_bytes()
    cut = tmp_path / "cut.csv.gz"
    data = gzip.compress(rows)
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    prepare_dataset([good], out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="cut.csv.gz: gzip data is truncated"):
        prepare_dataset([good, cut], out)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    with pytest.raises(UserError, match=r"bad.csv:3: expected 2304 pixel values"):
        prepare_dataset(
            [good, write(tmp_path / "bad.csv", ["emotion,pixels", "0," + pixel_text(0, 48), "0,1 2"])],
            tmp_path / "fresh",
            strict=True,
        )
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp dirs left


def test_inputs_without_usable_rows_are_errors(tmp_path):
    header_only = write(tmp_path / "h.csv", ["emotion,pixels,Usage"])
    with pytest.raises(UserError, match="h.csv has a header but no data rows"):
        prepare_dataset([header_only], tmp_path / "out")
    fear_only = fer_file(tmp_path / "fear.csv", [2, 2], ["Training", "Training"])
    with pytest.raises(UserError, match="no usable rows.*2 dropped by scheme seed5"):
        prepare_dataset([fear_only], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="is not a known Kaggle CSV format"):
        prepare_dataset([fear_only, write(tmp_path / "x.csv", ["a,b", "1,2"])], tmp_path / "out")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(val_fraction=1.0), "val_fraction must be in"),
        (dict(val_fraction=0.6, test_fraction=0.4), "below 1"),
        (dict(seed=-1), "seed must be"),
        (dict(scheme="seven"), "unknown emotion scheme"),
    ],
)
def test_bad_options(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        prepare_dataset([fer_file(tmp_path / "f.csv", [0])], tmp_path / "out", **kwargs)


def head_gz(src: Path, dst: Path, lines: int) -> Path:
    with gzip.open(src, "rt", newline="") as f:
        text = "".join(f.readline() for _ in range(lines))
    dst.write_bytes(gzip.compress(text.encode(), compresslevel=1))
    return dst


@pytest.mark.realdata
def test_first_rows_of_the_real_files(tmp_path, real_data):
    fer = head_gz(real_data / FER_GZ, tmp_path / "fer2013.csv.gz", 301)
    kp = head_gz(real_data / KEYPOINTS_GZ, tmp_path / "training.csv.gz", 301)
    result = prepare_dataset([fer, kp], tmp_path / "out", strict=True)
    with gzip.open(fer, "rt") as f:
        fer_labels = [int(line.split(",", 1)[0]) for line in f.read().splitlines()[1:]]
    kept = sum(label in (0, 1, 3, 4, 5) for label in fer_labels)
    fer_report, kp_report = result.reports
    assert (fer_report.rows_read, fer_report.rows_kept, fer_report.bad_rows) == (300, kept, 0)
    assert (kp_report.rows_read, kp_report.rows_kept, kp_report.bad_rows) == (300, 300, 0)
    info = json.loads((tmp_path / "out" / DATASET_META).read_text())
    assert info["image_sizes"] == [[48, 48], [96, 96]] and info["tasks"] == ["keypoints", "emotion"]
    assert sum(c["rows"] for c in info["counts"].values()) == kept + 300


@pytest.mark.slow
@pytest.mark.realdata
def test_full_real_files_give_the_documented_counts(tmp_path, real_data):
    """The whole of both files: ~5 s on the idle 2-core dev machine."""
    fer = prepare_dataset([real_data / FER_GZ], tmp_path / "fer", strict=True).info.counts
    # val = a stratified 10% of Training (19,647 seed5 rows), test = PublicTest
    assert (fer["train"]["rows"], fer["val"]["rows"], fer["test"]["rows"]) == (17_683, 1_964, 2_486)
    assert fer["val"]["disgust"] == 43 and fer["train"]["disgust"] + fer["val"]["disgust"] == 436
    # training_people.csv lies beside training.csv.gz: whole people per split
    kp_info = prepare_dataset([real_data / KEYPOINTS_GZ], tmp_path / "kp", strict=True).info
    kp = kp_info.counts
    assert sum(c["keypoints"] for c in kp.values()) == 3_383
    assert sum(c["complete_keypoints"] for c in kp.values()) == 2_376
    assert (kp["train"]["rows"], kp["val"]["rows"], kp["test"]["rows"]) == (2_676, 356, 351)
    people = kp_info.extra["people"][Path(KEYPOINTS_GZ).name]
    assert people["people"] == {"train": 221, "val": 28, "test": 29} and not kp_info.extra["near_duplicates"]
    person_of = {
        int(row): person
        for row, person in (
            line.split(",")
            for line in (real_data / KEYPOINTS_GZ).with_name("training_people.csv").read_text().split()[1:]
        )
    }
    people_in = {
        s: {person_of[r - 2] for (_, r), split in split_of_rows(tmp_path / "kp").items() if split == s}
        for s in ("train", "val", "test")
    }
    assert not (people_in["train"] & people_in["test"]) and not (people_in["train"] & people_in["val"])
    assert not (people_in["val"] & people_in["test"])
    # without a people file (a user's own CSV): near-duplicate groups
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "training.csv.gz").symlink_to(real_data / KEYPOINTS_GZ)
    kp_info = prepare_dataset([alone / "training.csv.gz"], tmp_path / "kp_near", strict=True).info
    kp = kp_info.counts
    assert (kp["train"]["rows"], kp["val"]["rows"], kp["test"]["rows"]) == (2_534, 339, 510)
    near = kp_info.extra["near_duplicates"]["training.csv.gz"]
    assert near["groups"] == 3_014 and len(near["holdout_row_ids"]) == 170


# ----------------------------------------------------------------------------- near-duplicate groups


def _faces(n: int, seed: int) -> np.ndarray:
    """n distinct random 96x96 'faces' (smooth noise, so their fingerprints differ)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 12, 12)).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(s).resize((96, 96), Image.BILINEAR)) for s in small])


def test_near_duplicates_group_jittered_copies_and_nothing_else():
    faces = _faces(40, 0)
    rng = np.random.default_rng(1)
    # rows 40..49: copies of faces 0..9 with noise and a brightness change (another frame of one video)
    twins = np.clip(faces[:10].astype(np.int16) + rng.integers(-6, 7, faces[:10].shape) + 12, 0, 255).astype(np.uint8)
    groups = near_duplicate_groups(fingerprints(np.concatenate([faces, twins])))
    assert all(groups[40 + i] == groups[i] for i in range(10))
    assert len(set(groups[:40].tolist())) == 40  # distinct faces stay apart
    assert groups.tolist()[:3] == [0, 1, 2]  # ids in order of first appearance


def test_group_split_keeps_groups_whole_and_flags_the_holdout():
    groups = np.repeat(np.arange(300), [1 + (g % 3) for g in range(300)])  # groups of 1, 2 and 3 rows
    strata = (groups % 5 == 0).astype(int)
    splits, holdout = group_split(groups, strata, seed=4, val_fraction=0.1, test_fraction=0.1)
    again, again_holdout = group_split(groups, strata, seed=4, val_fraction=0.1, test_fraction=0.1)
    assert (splits == again).all() and (holdout == again_holdout).all()
    clean = ~holdout
    for g in np.unique(groups):
        assert len(set(splits[(groups == g) & clean])) <= 1, g  # a group never straddles splits...
    n = len(groups)
    # quotas per stratum, overshot by at most one group (3 rows) in each of the 2 strata
    assert abs((splits[clean] == "test").sum() - 0.1 * n) <= 6 and abs((splits == "val").sum() - 0.1 * n) <= 6
    # ... except the holdout: one member of a trained-on group, scored apart in test
    assert holdout.sum() == round(0.5 * (splits[clean] == "test").sum())
    for i in np.flatnonzero(holdout):
        assert splits[i] == "test" and (splits[groups == groups[i]] == "train").any()


def test_prepare_puts_a_keypoint_file_s_near_duplicates_in_one_split(tmp_path):
    faces = _faces(200, 2)
    images = np.concatenate([faces, faces[:50]])  # 50 exact repeats: groups of two
    full = ",".join(f"{40 + (j % 7)}.25" for j in range(30))
    rows = [f"{full}," + " ".join(map(str, img.ravel().tolist())) for img in images]
    src = write(tmp_path / "training.csv", [",".join(KEYPOINT_COLUMNS + ("Image",))] + rows)
    info = prepare_dataset([src], tmp_path / "out", val_fraction=0.1, test_fraction=0.2, seed=1).info
    mapping = split_of_rows(tmp_path / "out")
    held = set(info.extra["near_duplicates"]["training.csv"]["holdout_row_ids"])
    assert info.extra["near_duplicates"]["training.csv"]["rows_with_near_duplicate"] == 100
    for i in range(50):  # row ids: line numbers, header = 1
        a, b = mapping[("training.csv", i + 2)], mapping[("training.csv", 200 + i + 2)]
        if i + 2 in held or 200 + i + 2 in held:
            assert "test" in (a, b) and "train" in (a, b)
        else:
            assert a == b
    assert held and all(mapping[("training.csv", r)] == "test" for r in held)


# ----------------------------------------------------------------------------- people files


def _people_file(path: Path, rows: int, frames: int) -> Path:
    return write(path, ["row,person"] + [f"{r},p{r // frames:03d}" for r in range(rows)])


def test_a_people_file_beside_the_input_keeps_each_person_in_one_split(tmp_path):
    faces = _faces(120, 3)
    full = ",".join(f"{40 + (j % 7)}.25" for j in range(30))
    rows = [f"{full}," + " ".join(map(str, img.ravel().tolist())) for img in faces]
    src = write(tmp_path / "training.csv", [",".join(KEYPOINT_COLUMNS + ("Image",))] + rows)
    _people_file(tmp_path / "training_people.csv", 120, frames=6)  # 20 people, 6 distinct frames each
    info = prepare_dataset([src], tmp_path / "out", val_fraction=0.1, test_fraction=0.2, seed=1).info
    record = info.extra["people"]["training.csv"]
    assert record["people_file"] == "training_people.csv" and sum(record["people"].values()) == 20
    assert record["people"]["test"] >= 3 and record["people"]["val"] >= 1
    assert not info.extra["near_duplicates"]
    mapping = split_of_rows(tmp_path / "out")
    for person in range(20):  # row ids are file lines: data row r is line r + 2
        assert len({mapping[("training.csv", r + 2)] for r in range(6 * person, 6 * person + 6)}) == 1
    # the same file named explicitly gives the same split
    again = prepare_dataset(
        [src], tmp_path / "again", val_fraction=0.1, test_fraction=0.2, seed=1, people=tmp_path / "training_people.csv"
    )
    assert split_of_rows(tmp_path / "again") == mapping and again.info.counts == info.counts


@pytest.mark.parametrize(
    "lines, message",
    [
        (["row,who", "0,a"], r"people\.csv:1: a people file has the header 'row,person'"),
        (["row,person", "0,a", "x,b"], r"people\.csv:3: expected 'ROW,PERSON'"),
        (["row,person", "0,a", "0,b"], r"people\.csv:3: row 0 is listed twice"),
        (["row,person", "0,a"], r"people\.csv has no person for data row 1 \(file line 3\)"),
    ],
)
def test_a_bad_people_file_is_one_error_and_writes_nothing(tmp_path, lines, message):
    src = keypoints_file(tmp_path / "training.csv", [True, True])
    people = write(tmp_path / "people.csv", lines)
    with pytest.raises(UserError, match=message):
        prepare_dataset([src], tmp_path / "out", people=people)
    assert not (tmp_path / "out").exists()
