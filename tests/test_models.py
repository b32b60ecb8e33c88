"""Model tests: the course's exact parameter counts, shapes, input handling, memory format, autocast."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from emokp_ray.errors import UserError
from emokp_ray.models import (
    ModelConfig,
    build_model,
    emotion_config,
    emotion_resnet,
    emotion_resnet_wide,
    keypoint_config,
    keypoint_resnet,
    keypoint_resnet_wide,
    model_config,
    num_parameters,
)

KEYPOINT_PARAMS = 18_007_710  # the course's Keras summary, 96x96x1 input
EMOTION_PARAMS = 1_165_445


def with_random_output_layer(model):
    """The keypoint head's last layer starts at zero (every face predicted at the centre); tests of
    how inputs flow to outputs need it random, as after training."""
    torch.nn.init.normal_(model.head[-1].weight, std=0.01)
    return model


@pytest.fixture(scope="module")
def keypoint_model():
    torch.manual_seed(0)
    return with_random_output_layer(keypoint_resnet()).eval()


def test_untrained_keypoint_model_predicts_the_centre():
    with torch.no_grad():
        out = keypoint_resnet().eval()(raw_images(2, 96))
    assert torch.equal(out, torch.full_like(out, 48.0))


@pytest.fixture(scope="module")
def emotion_model():
    torch.manual_seed(0)
    return emotion_resnet().eval()


def raw_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """uint8 [n, 1, size, size] grey images."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)


# ---- parameter counts --------------------------------------------------------------------------


def test_course_parameter_counts_are_exact(keypoint_model, emotion_model):
    assert num_parameters(keypoint_model) == KEYPOINT_PARAMS
    assert num_parameters(emotion_model) == EMOTION_PARAMS
    # Every parameter is trainable; the BN running stats and the affine are buffers.
    assert num_parameters(keypoint_model, trainable_only=False) == KEYPOINT_PARAMS


def test_keypoint_affine_is_not_a_parameter():
    assert num_parameters(keypoint_resnet(keypoint_affine=False)) == KEYPOINT_PARAMS


@pytest.mark.parametrize("task, expected", [("keypoints", KEYPOINT_PARAMS), ("emotion", EMOTION_PARAMS)])
def test_adaptive_head_keeps_the_count_at_48(task, expected):
    cfg = model_config(task, input_size=48)
    assert cfg.feature_size == 2  # 48 -> 24 -> 11 -> 5 -> 2
    assert cfg.adaptive_pool == (2 if task == "keypoints" else 1)
    model = build_model(cfg).eval()
    assert num_parameters(model) == expected
    with torch.no_grad():
        out = model(raw_images(2, 48))
    assert out.shape == (2, cfg.num_outputs)


def test_course_pool_that_does_not_fit_asks_for_adaptive_pool():
    with pytest.raises(UserError, match="adaptive_pool"):
        ModelConfig(task="emotion", input_size=48)  # avg-pool 4 on a 2x2 map


def test_stronger_variants_build_with_more_parameters():
    kp, em = keypoint_resnet_wide(), emotion_resnet_wide()
    assert num_parameters(kp) > KEYPOINT_PARAMS
    assert num_parameters(em) > EMOTION_PARAMS
    assert em.cfg.input_size == 48
    with torch.no_grad():
        assert em.eval()(raw_images(2, 48)).shape == (2, 5)


def test_width_and_depth_are_arguments():
    cfg = emotion_config(width_mult=0.5, stage_depths=(1, 0))
    model = build_model(cfg)
    assert model.stages[-1][0].conv3.out_channels == 256  # 512 * 0.5
    assert [len(stage) for stage in model.stages] == [2, 1]  # ConvBlock + identity blocks
    assert model.head[-1].in_features == 256
    three = emotion_config(stage_filters=((64, 64, 256), (128, 128, 512), (256, 256, 1024)), adaptive_pool=1)
    assert three.stage_depths == (2, 2, 2) and three.feature_channels == 1024


# ---- shapes and outputs ------------------------------------------------------------------------


def test_shapes_at_96(keypoint_model, emotion_model):
    x = raw_images(3, 96)
    with torch.no_grad():
        features = keypoint_model.forward_features(keypoint_model.normalize(x))
        assert features.shape == (3, 512, 5, 5)
        assert keypoint_model(x).shape == (3, 30)
        assert emotion_model(x).shape == (3, 5)


def test_keypoint_output_is_centre_plus_scaled_offset():
    model = keypoint_resnet().eval()
    last = model.head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(0.5)  # raw offset 0.5 -> 48 + 48 * 0.5 = 72 px
        assert torch.equal(model(raw_images(2, 96)), torch.full((2, 30), 72.0))
    plain = keypoint_resnet(keypoint_affine=False).eval()
    with torch.no_grad():
        plain.head[-1].weight.zero_()
        plain.head[-1].bias.fill_(0.5)
        assert torch.equal(plain(raw_images(2, 96)), torch.full((2, 30), 0.5))


def test_uint8_float_and_channelless_inputs_agree(emotion_model):
    x = raw_images(4, 96)
    with torch.no_grad():
        from_uint8 = emotion_model(x)
        from_float = emotion_model(x.float())
        from_bhw = emotion_model(x[:, 0])
    assert torch.equal(from_uint8, from_float)
    assert torch.equal(from_uint8, from_bhw)


def test_normalization_follows_config():
    x = raw_images(2, 96)
    a = emotion_resnet(norm_mean=100.0, norm_std=50.0).eval()
    b = emotion_resnet().eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        assert torch.allclose(a.normalize(x), (x.float() - 100.0) / 50.0)
        assert torch.allclose(b.normalize(x), x.float() / 255.0)


def test_wrong_input_size_is_rejected(emotion_model):
    with pytest.raises(ValueError, match=r"\[B, 1, 96, 96\]"):
        emotion_model(raw_images(1, 48))


def test_eval_is_deterministic_and_train_mode_uses_dropout(keypoint_model):
    x = raw_images(2, 96)
    with torch.no_grad():
        assert torch.equal(keypoint_model(x), keypoint_model(x))
    model = with_random_output_layer(keypoint_resnet())
    model.load_state_dict(keypoint_model.state_dict())
    model.train()
    for m in model.modules():  # freeze BN so only dropout differs between the two passes
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


def test_every_parameter_gets_a_gradient():
    model = emotion_resnet(input_size=48).train()
    loss = torch.nn.functional.cross_entropy(model(raw_images(4, 48)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_channels_last_gives_the_same_outputs():
    model = emotion_resnet().eval()  # the backbone is the keypoint model's; the heads are dense
    x = raw_images(3, 96)
    with torch.no_grad():
        reference = model(x)
        model.to(memory_format=torch.channels_last)
        out = model(x.float().contiguous(memory_format=torch.channels_last))
        features = model.forward_features(model.normalize(x).contiguous(memory_format=torch.channels_last))
    assert features.is_contiguous(memory_format=torch.channels_last)  # the layout survives the blocks
    assert torch.allclose(out, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_returns_float32_close_to_fp32(emotion_model, dtype):
    x = raw_images(3, 96)
    with torch.no_grad():
        reference = emotion_model(x)
        with torch.autocast("cpu", dtype=dtype):
            out = emotion_model(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, reference, rtol=0.1, atol=0.1)


# ---- config ------------------------------------------------------------------------------------


def test_config_round_trips_through_json():
    for cfg in (keypoint_config(), emotion_config(input_size=48), model_config("emotion", "wide")):
        again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg
        assert build_model(again).head[-1].in_features == cfg.head_features


def test_config_defaults_follow_the_task():
    assert ModelConfig(task="keypoints") == keypoint_config()
    emotion = ModelConfig(task="emotion")
    assert (emotion.num_outputs, emotion.head_pool, emotion.head_hidden, emotion.keypoint_affine) == (5, 4, (), False)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"task": "keypoints", "widht_mult": 2}, "unknown model config key.*widht_mult"),
        ({"task": "faces"}, "task must be one of"),
        ({"num_outputs": 5}, "no 'task'"),
        ({"task": "emotion", "stage_depths": [2]}, "stage_depths"),
        ({"task": "emotion", "keypoint_affine": True}, "keypoints task only"),
        ({"task": "emotion", "input_size": 8}, "too small"),
    ],
)
def test_bad_configs_are_user_errors(raw, message):
    with pytest.raises(UserError, match=message):
        ModelConfig.from_dict(raw)


def test_unknown_variant_is_a_user_error():
    with pytest.raises(UserError, match="emotion/huge"):
        model_config("emotion", "huge")


def test_model_and_checkpoint_modules_do_not_import_ray():
    code = "import sys, emokp_ray.models, emokp_ray.artifacts.checkpoint; print('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
