"""Report figures: each writes a valid PNG of a sensible size, rejects malformed input, and neither
importing nor calling the module changes matplotlib's global backend."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from emokp_ray.evaluation import figures
from emokp_ray.labels import KEYPOINT_NAMES, SEED5


def _assert_png(path, min_size=(300, 200), max_size=(3000, 3000)):
    assert path.is_file()
    with Image.open(path) as im:
        assert im.format == "PNG"
        width, height = im.size
        assert min_size[0] <= width <= max_size[0] and min_size[1] <= height <= max_size[1], im.size
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 5  # something was drawn, not a blank canvas


def _faces(n=8, size=96, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    face = 255 * np.exp(-(((xx - size / 2) / (size / 3)) ** 2 + ((yy - size / 2) / (size / 2.5)) ** 2))
    images = np.clip(face[None] + rng.normal(0, 15, (n, size, size)), 0, 255).astype(np.uint8)
    truth = rng.uniform(20, size - 20, (n, 30))
    truth[n // 2 :, 4:20] = np.nan  # half the rows carry only some keypoints
    pred = truth + rng.normal(0, 2, truth.shape)
    pred[np.isnan(pred)] = size / 2
    return images, truth, pred


def test_learning_curves_keypoints_and_emotion(tmp_path):
    kp_rows = [
        {"epoch": e, "train/loss": 1 / e, "val/loss": 1.2 / e, "val/rmse_px": 5 / e + 1, "val/mean_shape_rmse_px": 3.2}
        for e in range(1, 6)
    ]
    kp_rows.append({"epoch": 5, "train/loss": 0.1})  # a resumed run repeating an epoch: last row wins
    _assert_png(figures.plot_learning_curves(kp_rows, tmp_path / "kp.png"), min_size=(900, 300))
    emo_rows = [
        {"epoch": e, "train/loss": 1 / e, "val/accuracy": 0.5 + e / 20, "val/macro_f1": 0.4 + e / 20}
        for e in range(1, 4)
    ]
    _assert_png(figures.plot_learning_curves(emo_rows, tmp_path / "sub" / "emo.png"), min_size=(900, 300))
    loss_only = figures.plot_learning_curves([{"train/loss": 2.0}, {"train/loss": 1.0}], tmp_path / "loss.png")
    _assert_png(loss_only)
    with pytest.raises(ValueError):
        figures.plot_learning_curves([], tmp_path / "none.png")


def test_series_keeps_last_row_per_epoch_and_skips_missing():
    rows = [
        {"epoch": 1, "val/loss": 3.0},
        {"epoch": 2},
        {"epoch": 2, "val/loss": 2.0},
        {"epoch": 1, "val/loss": 2.5},
        {"epoch": 3, "val/loss": None},
    ]
    assert figures._series(rows, "val/loss") == ([1.0, 2.0], [2.5, 2.0])


def test_confusion_matrix(tmp_path):
    confusion = [[50, 3, 2, 0, 1], [4, 6, 0, 0, 0], [5, 0, 40, 2, 3], [1, 0, 2, 90, 7], [0, 0, 0, 0, 0]]
    for normalize in (True, False):
        path = figures.plot_confusion_matrix(confusion, SEED5.classes, tmp_path / f"cm{normalize}.png", normalize)
        _assert_png(path, min_size=(400, 400))
    with pytest.raises(ValueError, match="shape"):
        figures.plot_confusion_matrix([[1, 2], [3, 4]], SEED5.classes, tmp_path / "bad.png")


def test_face_grid_variants(tmp_path):
    images, truth, pred = _faces()
    kp = figures.plot_face_grid(images, tmp_path / "kp.png", pred_keypoints=pred, true_keypoints=truth, ncols=4)
    _assert_png(kp, min_size=(600, 350))
    probs = np.random.default_rng(1).dirichlet(np.ones(5), size=len(images))
    emo = figures.plot_face_grid(
        images[:, ::2, ::2],
        tmp_path / "emo.png",
        true_labels=[0, 1, 2, 3, 4, -1, 3, 2],
        class_names=SEED5.classes,
        probabilities=probs,
    )
    _assert_png(emo, min_size=(600, 350))
    one = figures.plot_face_grid(images[:1], tmp_path / "one.png", pred_labels=[3], true_labels=[3])
    _assert_png(one, min_size=(150, 150))
    with pytest.raises(ValueError, match="rows"):
        figures.plot_face_grid(images, tmp_path / "bad.png", pred_keypoints=pred[:3])
    with pytest.raises(ValueError, match="grey"):
        figures.plot_face_grid(np.zeros((2, 96, 96, 3), np.uint8), tmp_path / "rgb.png")


def test_label_title_colours_right_and_wrong():
    probs = np.array([[0.1, 0.9], [0.7, 0.3]])
    assert figures._label_title(0, None, [1, 1], ["sad", "happy"], probs) == (
        "pred: happy (0.90)\ntrue: happy",
        figures.TRUE_COLOR,
    )
    assert figures._label_title(1, None, [1, 1], ["sad", "happy"], probs) == (
        "pred: sad (0.70)\ntrue: happy",
        figures.PRED_COLOR,
    )
    assert figures._label_title(0, [1, 0], [-1, -1], None, None) == ("pred: 1", "black")


def test_per_keypoint_rmse(tmp_path):
    per_kp = {name: 1.0 + i / 5 for i, name in enumerate(KEYPOINT_NAMES)}
    per_kp["mouth_left_corner"] = None  # undefined (never present) is drawn as n/a
    baseline = dict.fromkeys(KEYPOINT_NAMES, 3.0)
    _assert_png(figures.plot_per_keypoint_rmse(per_kp, tmp_path / "a.png", baseline=baseline), min_size=(600, 500))
    _assert_png(figures.plot_per_keypoint_rmse(per_kp, tmp_path / "b.png", baseline=3.1), min_size=(600, 500))
    _assert_png(figures.plot_per_keypoint_rmse(per_kp, tmp_path / "c.png"), min_size=(600, 500))


def test_import_and_plotting_leave_the_global_backend_alone():
    # A fresh interpreter so no other test has imported pyplot or chosen a backend first.
    code = (
        "import matplotlib, tempfile, os\n"
        "matplotlib.use('svg')\n"
        "from emokp_ray.evaluation import figures\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
        "figures.plot_confusion_matrix([[3, 1], [0, 4]], ['a', 'b'], os.path.join(tempfile.mkdtemp(), 'x.png'))\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
        "import sys; assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
