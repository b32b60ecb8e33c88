"""Release-recipe pieces: random erasing, mixup/cutmix, weight EMA, named recipes, flip TTA and
temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emokp_ray.data.regularize import mix_batch, random_erase
from emokp_ray.errors import UserError
from emokp_ray.inference.calibration import fit_temperature, nll, reliability, softmax, temperature_of
from emokp_ray.inference.tta import forward_with_flip, mirror, unflip_keypoints
from emokp_ray.labels import flip_keypoints
from emokp_ray.training.loop import WeightEMA, make_loss
from emokp_ray.training.recipes import INIT_RECIPES, RECIPES, config_from_recipe


def _images(n=16, size=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


# ----------------------------------------------------------------------------- regularizers


def test_random_erasing_changes_one_rectangle_per_chosen_image_and_keeps_the_input():
    images = np.full((32, 48, 48), 128, np.uint8)
    rng = np.random.default_rng(0)
    assert (random_erase(images, 0.0, rng) == images).all()
    out = random_erase(images, 1.0, rng)
    assert (images == 128).all() and out.shape == images.shape  # input untouched
    for img in out:
        ys, xs = np.nonzero(img != 128)
        assert ys.size > 0
        # the changed pixels lie in one rectangle covering 2-25% of the image (noise may hit 128 inside it)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        assert 0.02 * 48 * 48 * 0.5 <= box <= 0.25 * 48 * 48 * 1.3


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mix_batch_pairs_each_image_with_a_partner_and_weights_the_labels(mode):
    images = _images()
    labels = np.arange(16) % 5
    alpha = {"mixup": (0.4, 0.0), "cutmix": (0.0, 1.0)}[mode]
    out = mix_batch({"image": images, "label": labels}, *alpha, np.random.default_rng(3))
    lam = out["mix_lam"]
    assert set(out) == {"image", "label", "label_mix", "mix_lam"} and (out["label"] == labels).all()
    assert np.all(lam == lam[0]) and 0.0 <= lam[0] <= 1.0
    assert sorted(out["label_mix"].tolist()) == sorted(labels.tolist())  # a permutation of the batch
    if mode == "cutmix":
        # lam is the share of each image's own pixels
        own = (out["image"] == images).mean(axis=(1, 2))
        assert np.all(own >= lam[0] - 0.01)
    else:
        # every pixel lies between the image's own value and its partner's
        partner = np.array([np.flatnonzero(labels == m)[0] for m in out["label_mix"]])  # labels repeat: same class
        assert out["image"].dtype == np.uint8 and out["image"].shape == images.shape
        assert partner.shape == (16,)
    # one row: nothing to mix with, same keys
    single = mix_batch({"image": images[:1], "label": labels[:1]}, *alpha, np.random.default_rng(0))
    assert single["mix_lam"].tolist() == [1.0] and single["label_mix"].tolist() == labels[:1].tolist()


def test_mixed_loss_is_the_lam_weighted_sum_of_both_labels():
    cfg = config_from_recipe("emotion", "d", "o", recipe="fast", label_smoothing=0.0, imbalance="none")
    loss = make_loss(cfg, None)
    logits = torch.randn(8, 5)
    a, b = torch.randint(0, 5, (8,)), torch.randint(0, 5, (8,))
    lam = torch.full((8,), 0.3)
    mixed = loss(logits, {"label": a, "label_mix": b, "mix_lam": lam})
    expected = 0.3 * torch.nn.functional.cross_entropy(logits, a) + 0.7 * torch.nn.functional.cross_entropy(logits, b)
    assert float(mixed) == pytest.approx(float(expected), rel=1e-5)


# ----------------------------------------------------------------------------- EMA and recipes


def test_weight_ema_follows_the_formula_with_warmup():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = WeightEMA(model, decay=0.9)
    start = [p.detach().clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    d = min(0.9, 2.0 / 11.0)  # first update: warm-up (1 + 1) / (10 + 1)
    for s, e, p in zip(start, ema.model.parameters(), model.parameters()):
        assert torch.allclose(e, d * s + (1 - d) * p)
        assert not e.requires_grad
    assert ema.model is not model


def test_recipes_are_typed_presets_that_flags_override():
    cfg = config_from_recipe("emotion", "data", "out")
    assert cfg.recipe == "release" and cfg.model == "fer48" and cfg.ema_decay > 0 and cfg.imbalance == "sampling"
    assert config_from_recipe("emotion", "data", "out", epochs=3, lr=None).epochs == 3  # None = flag not given
    assert config_from_recipe("keypoints", "data", "out", recipe="course").optimizer == "adam"
    for task, recipes in RECIPES.items():
        for name in recipes:  # every preset is a valid TrainConfig (finetune starts from a shipped model)
            init = {"init": f"builtin:{task}"} if name in INIT_RECIPES else {}
            config_from_recipe(task, "d", "o", recipe=name, **init)
    with pytest.raises(UserError, match="unknown recipe 'nope' for emotion.*course, release, fast"):
        config_from_recipe("emotion", "d", "o", recipe="nope")
    with pytest.raises(UserError, match="apply to emotion only"):
        config_from_recipe("keypoints", "d", "o", mixup_alpha=0.2)


# ----------------------------------------------------------------------------- flip TTA


def test_flip_tta_averages_a_keypoint_net_with_its_mirrored_view():
    crops = _images(4, 96)
    truth = np.random.default_rng(1).uniform(20, 70, (4, 30)).astype(np.float32)
    mirrored_crops = mirror(crops)

    def forward(batch):
        # a perfect net: the true points on the original crops, their mirror image on mirrored ones,
        # plus a bias of +1 px on x in both views (which the flip turns into -1: the average cancels it)
        out = []
        for c in batch:
            i = next((k for k in range(4) if np.array_equal(c, crops[k])), None)
            if i is not None:
                p = truth[i].reshape(15, 2).copy()
            else:
                i = next(k for k in range(4) if np.array_equal(c, mirrored_crops[k]))
                p = flip_keypoints(truth[i].reshape(15, 2), 96)
            p[:, 0] += 1.0
            out.append(p.reshape(30))
        return np.array(out, np.float32)

    assert np.allclose(forward_with_flip(forward, crops, "keypoints"), truth, atol=1e-4)
    assert np.allclose(unflip_keypoints(unflip_keypoints(truth, 96), 96), truth, atol=1e-4)  # an involution


def test_flip_tta_averages_emotion_logits():
    crops = _images(3, 48)
    forward = lambda b: b.reshape(len(b), 48 * 48)[:, :5].astype(np.float32)  # noqa: E731 - logits = first pixels
    direct, flipped = forward(crops), forward(mirror(crops))
    assert np.allclose(forward_with_flip(forward, crops, "emotion"), (direct + flipped) / 2)
    assert forward_with_flip(forward, crops[:0], "emotion").shape == (0, 5)


# ----------------------------------------------------------------------------- temperature scaling


def test_temperature_fit_recovers_the_temperature_that_generated_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20_000, 5))
    p = softmax(logits, 2.5)
    labels = np.array([rng.choice(5, p=row) for row in p])
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(2.5, rel=0.05)
    assert nll(logits, labels, t) < nll(logits, labels, 1.0)
    before, after = reliability(softmax(logits, 1.0), labels), reliability(softmax(logits, t), labels)
    assert after["ece"] < 0.02 < before["ece"]  # calibrated once divided by T
    assert sum(b["n"] for b in after["bins"]) == len(labels) and len(after["bins"]) == 15
    assert (softmax(logits, t).argmax(1) == softmax(logits, 1.0).argmax(1)).all()  # labels never change
    assert temperature_of({}) == 1.0 and temperature_of({"temperature": 1.7}) == 1.7


def test_an_ema_run_checkpoints_the_average_and_resumes_both_weights(tmp_path):
    from emokp_ray.artifacts.checkpoint import load_checkpoint
    from emokp_ray.training.train import run_training
    from tests.helpers import write_random_dataset

    data = write_random_dataset(tmp_path / "data", n_train=64, n_val=16, size=48)
    common = dict(
        task="emotion",
        data=str(data),
        out=str(tmp_path / "run"),
        recipe="fast",
        no_ray=True,
        batch_size=16,
        ema_decay=0.9,
        random_erasing=0.5,
        cutmix_alpha=1.0,
        keep_checkpoints=5,
    )
    run_training(config_from_recipe(**{**common, "epochs": 1}), log=lambda *_: None)
    first = load_checkpoint(tmp_path / "run" / "checkpoints" / "epoch-001")
    assert first.train_model_state is not None and first.extra_state["ema_updates"] == 4
    key = [k for k in first.train_model_state if k.startswith("head.") and k.endswith(".weight")][-1]
    assert not torch.equal(
        first.model.state_dict()[key], first.train_model_state[key]
    )  # the average is not the raw weights
    run_training(config_from_recipe(**{**common, "epochs": 2, "resume": True}), log=lambda *_: None)
    second = load_checkpoint(tmp_path / "run" / "checkpoints" / "epoch-002")
    assert second.extra_state["ema_updates"] == 8 and second.meta.epoch == 2
