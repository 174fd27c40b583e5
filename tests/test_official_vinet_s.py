"""ViNet-S as released, reproduced by :mod:`avsal_deploy.models.official.vinet_s`: golden-file parity.

Golden file ``tests/golden/vinet_s.npz`` (made outside this repository, with the official code):

- official code: github.com/ViNet-Saliency/vinet_v2 at d09066b, ``ViNet_S/ViNet_S_model.py``
  ``VideoSaliencyModel(use_upsample=True, num_hier=3, num_clips=32, grouped_conv=True,
  root_grouping=True, depth=False, efficientnet=False, BiCubic=...)``: ``BiCubic=False`` is the
  inference script's build (trilinear), ``BiCubic=True`` the training script's (bilinear,
  ``align_corners=True``); eval mode, torch 2.13.0 CPU, 2 threads;
- weights: ``tests/golden/weights.py`` ``random_state(layout, seed=2025)`` over the official
  ``state_dict()`` layout (the same for both builds), ``load_state_dict(strict=True)``;
- decoder inputs (64 x 96 frames): ``np.random.default_rng(11)``, in the official order y0..y3
  (Mixed_5c [2,1024,4,2,3], Mixed_4f [2,832,8,4,6], Mixed_3c [2,480,16,8,12], base1
  [2,192,16,16,24]), each ``max(standard_normal(shape, float32), 0)``; outputs
  ``model.decoder(y0, y1, y2, y3)``: ``decoder_trilinear`` / ``decoder_bilinear`` [2, 64, 96];
- frames (the official module only runs 32 x 224 x 384: ``BackBone_Maxpool_Base1`` reshapes to
  a fixed [-1, 1024, 112, 192]): ``np.random.default_rng(12)``, uint8 pixels = a random field
  ``integers(0, 256, (2, 8, 28, 48, 3))`` repeated 4x in time and 8x in space plus
  ``normal(0, 24)`` (float32), clipped and rounded; normalised as the ViNet-S loader does
  (``/ 255``, ImageNet mean/std), [2, 3, 32, 224, 384], C-contiguous;
- encoder outputs ``model.backbone(frames)``: 4096 elements of each (``encoder_yI_index``, flat
  positions drawn by ``np.random.default_rng(13).choice(numel, 4096, replace=False)`` in the
  order y0..y3, and ``encoder_yI_value``); maps ``model.decoder(*feats)``: ``map_trilinear`` /
  ``map_bilinear`` [2, 224, 384] (the two builds differ by up to 0.74 on these weights).
  Input checksums (float64 sums) are stored to catch a change of NumPy's random streams.

Compared: the decoder alone (both builds, 64 x 96, batch 1 and 2); then the official file as a
user holds it (``conftest.vinet_s_official``: ``torch.save`` of the golden weights) through
``avsal convert`` and the engines at full size: torch and ONNX Runtime ``predict_window`` against
the official maps, the encoder's outputs at the stored positions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avsal_deploy.cli import main
from avsal_deploy.config import LEGACY_DEFAULTS, Config, family_config
from avsal_deploy.engine import open as open_engine
from avsal_deploy.errors import ConfigError, WeightsError
from avsal_deploy.models.build import checkpoint_config
from avsal_deploy.models.official import build_stages, convert_state, tased, vinet_s
from avsal_deploy.models.official.vinet_s import Upsample2x
from tests.golden.parity import (
    MAP_ATOL,
    assert_feature_close,
    convert_cli,
    load_golden,
    load_stage,
    max_abs,
    no_audio,
    official_state,
    predict_recorded,
)

BUILDS = ("trilinear", "bilinear")
MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1, 1)


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return load_golden("vinet_s")


@pytest.fixture(scope="module")
def converted(golden) -> dict[str, torch.Tensor]:
    return convert_state(official_state(golden), "vinet-s").state


def stages(converted, upsampling: str, height: int = 224, width: int = 384):
    config = family_config("vinet-s", {"video.height": height, "video.width": width})
    if upsampling != "trilinear":
        config = config.replace({"fusion.upsampling": upsampling})
    built = build_stages(config, "vinet-s")
    return load_stage(built.video_encoder, converted, "video_encoder"), load_stage(
        built.decoder, converted, "fusion"
    )


def decoder_inputs(golden, batch: int) -> list[torch.Tensor]:
    """The golden decoder inputs in OUR order (v0 = base1 .. v3 = Mixed_5c)."""
    rng = np.random.default_rng(11)
    shapes = [(2, 1024, 4, 2, 3), (2, 832, 8, 4, 6), (2, 480, 16, 8, 12), (2, 192, 16, 16, 24)]
    official = [np.maximum(rng.standard_normal(s, dtype=np.float32), 0) for s in shapes]
    sums = [float(y.astype(np.float64).sum()) for y in official]
    np.testing.assert_allclose(sums, golden["decoder_input_sums"], rtol=1e-12)
    return [torch.from_numpy(y[:batch]) for y in reversed(official)]


def golden_frames(golden) -> torch.Tensor:
    rng = np.random.default_rng(12)
    base = rng.integers(0, 256, (2, 8, 28, 48, 3)).astype(np.float32)
    up = base.repeat(4, 1).repeat(8, 2).repeat(8, 3)
    pixels = np.clip(up + rng.normal(0, 24, up.shape).astype(np.float32), 0, 255).round().astype(np.uint8)
    x = pixels.transpose(0, 4, 1, 2, 3).astype(np.float32) / np.float32(255)
    x = np.ascontiguousarray((x - MEAN) / STD)
    assert float(x.astype(np.float64).sum()) == pytest.approx(float(golden["frames_sum"]), rel=1e-12)
    return torch.from_numpy(x)


# ----------------------------------------------------------------------------- conversion, config
def test_convert_maps_every_official_key(golden, converted) -> None:
    state = official_state(golden)
    assert vinet_s.detect(state) and not tased.detect(state)
    assert set(converted) == set(vinet_s.expected_state()) and len(converted) == len(state)
    for key, value in state.items():
        stage, rest = key.split(".", 1)
        ours = ("video_encoder." if stage == "backbone" else "fusion.") + rest
        assert torch.equal(converted[ours], value.to(converted[ours].dtype))
    assert convert_state(state, "vinet-s").dropped == []


def test_detect_tells_vinet_s_from_vinet_and_tased(golden) -> None:
    state = official_state(golden)
    vinet_like = dict(state)  # ViNet's ungrouped decoder: same names, other shapes
    vinet_like["decoder.convtsp1.0.weight"] = torch.zeros(832, 1024, 1, 3, 3)
    vinet_like["decoder.convtsp2.0.weight"] = torch.zeros(480, 832, 3, 3, 3)
    assert not vinet_s.detect(vinet_like)
    with pytest.raises(WeightsError, match=r"2 misshapen key\(s\): decoder.convtsp1.0.weight"):
        vinet_s.convert(vinet_like)
    tased_like = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    assert not vinet_s.detect(tased_like) and not tased.detect(tased_like)
    with pytest.raises(WeightsError, match=r"unknown key\(s\): base1.0.conv_s.weight"):
        vinet_s.convert(tased_like)


def test_upsampling_is_a_config_field_with_a_legacy_default() -> None:
    config = family_config("vinet-s")
    assert config.fusion.upsampling == "trilinear" and LEGACY_DEFAULTS["fusion.upsampling"] == "trilinear"
    stored = config.to_dict()
    del stored["fusion"]["upsampling"]  # a config written before the field: the inference build
    assert Config.from_dict(stored).fusion.upsampling == "trilinear"
    bilinear = config.replace({"fusion.upsampling": "bilinear"})
    assert bilinear.architecture_fingerprint() != config.architecture_fingerprint()
    assert Config.from_dict(bilinear.to_dict()).fusion.upsampling == "bilinear"
    with pytest.raises(ConfigError, match="fusion.upsampling"):
        config.replace({"fusion.upsampling": "bicubic"})
    with pytest.raises(ConfigError, match="32 frames"):
        vinet_s.build(family_config("vinet-s", {"video.clip_len": 16}))
    with pytest.raises(ConfigError, match="multiples of 32"):
        vinet_s.build(family_config("vinet-s", {"video.width": 400}))


@pytest.mark.parametrize("mode", BUILDS)
def test_upsampling_equals_the_official_interpolation(mode: str) -> None:
    """Our per-frame 2-D resize equals the official 5-D trilinear Upsample / the official
    ``Interpolate`` (a [B*C, T, H, W] view, bilinear to (2H, 2W), align_corners=True)."""
    x = torch.randn(2, 5, 3, 7, 12)
    if mode == "trilinear":
        ref = F.interpolate(x, scale_factor=(1, 2, 2), mode="trilinear")
    else:
        ref = F.interpolate(x.view(10, 3, 7, 12), size=(14, 24), mode="bilinear", align_corners=True)
        ref = ref.view(2, 5, 3, 14, 24)
    assert max_abs(Upsample2x(mode)(x), ref) <= 1e-6


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("upsampling", BUILDS)
def test_decoder_matches_official(golden, converted, upsampling: str, batch: int) -> None:
    _, decoder = stages(converted, upsampling, 64, 96)
    with torch.no_grad():
        out = decoder(*decoder_inputs(golden, batch))
    assert out.shape == (batch, 1, 64, 96) and out.dtype == torch.float32
    assert max_abs(out[:, 0], golden[f"decoder_{upsampling}"][:batch]) <= MAP_ATOL


def test_the_two_builds_differ(golden) -> None:
    """The training build is another function of the same weights: the config must record it."""
    assert np.abs(golden["map_trilinear"] - golden["map_bilinear"]).max() > 0.5
    assert np.abs(golden["decoder_trilinear"] - golden["decoder_bilinear"]).max() > 0.1


# ----------------------------------------------------------------------------- the engines
@pytest.mark.slow
def test_both_builds_through_avsal_convert_and_the_engines(
    golden, vinet_s_official: Path, vinet_s_checkpoint: Path, vinet_s_export: Path, tmp_path: Path
) -> None:
    """The official file through ``avsal convert``: ``--from vinet-s`` is the inference build
    (trilinear), ``--set fusion.upsampling=bilinear`` the training build; each converted config
    records its build. ``predict_window(frames, zeros((B, 0)), steps=0)`` of the inference build
    gives the official maps within 1e-4 through the torch engine (batch 1, its encoder outputs
    checked at the stored positions) and ONNX Runtime (``avsal export``, batch 1 and 2). The
    training build's encoder is the same module with the same weights: its engines' decoder
    (``fusion``) runs on the encoder outputs recorded from those calls, torch at batch 1 and ONNX
    Runtime (``avsal export --components fusion``) at batch 1 and 2, and gives its official maps.
    32 x 224 x 384: the only size the official module runs (~6 s a window in the torch engine
    on 2 cores, ~1.5 s in ONNX Runtime)."""
    inference, variant, meta = checkpoint_config(vinet_s_checkpoint)
    assert variant == "vinet-s" and inference.fusion.upsampling == "trilinear"
    assert meta["converted_from"]["weights_licence"].startswith("CC BY-NC-SA 4.0")
    training_ckpt = convert_cli(
        vinet_s_official, tmp_path / "training.safetensors", "vinet-s", "--set", "fusion.upsampling=bilinear"
    )
    training = checkpoint_config(training_ckpt)[0]
    assert training.fusion.upsampling == "bilinear"
    assert training.replace({"fusion.upsampling": "trilinear"}) == inference
    frames = golden_frames(golden).numpy()

    with open_engine(vinet_s_checkpoint, "torch") as engine:
        torch_maps, seen = predict_recorded(engine, frames[:1], no_audio(1))
    feats = seen["video_encoder"]
    for i, name in enumerate(reversed(vinet_s.VIDEO_OUTPUTS)):  # official y0 = our v3 (Mixed_5c) ...
        index = golden[f"encoder_y{i}_index"]
        keep = index < feats[name].size  # the stored positions in the first clip
        got = feats[name].ravel()[index[keep]]
        assert_feature_close(got, golden[f"encoder_y{i}_value"][keep], f"encoder y{i}")
    assert torch_maps.shape == (1, 1, 224, 384)
    assert max_abs(torch_maps[:, 0], golden["map_trilinear"][:1]) <= MAP_ATOL
    with open_engine(training_ckpt, "torch") as engine:  # its decoder on the same encoder outputs
        torch_training = engine.run("fusion", feats)["one_shot"]
    assert max_abs(torch_training[:, 0], golden["map_bilinear"][:1]) <= MAP_ATOL

    decoder_only = tmp_path / "training-fusion"
    args = ["export", "--checkpoint", str(training_ckpt), "--components", "fusion"]
    assert main([*args, "--out", str(decoder_only)]) == 0
    with (
        open_engine(vinet_s_export, "onnxruntime") as ort,
        open_engine(decoder_only, "onnxruntime") as ort_training,
    ):
        assert set(ort_training.specs) == {"fusion"}
        for batch in (1, 2):
            maps, seen = predict_recorded(ort, frames[:batch], no_audio(batch))
            assert max_abs(maps[:1], torch_maps) <= MAP_ATOL, batch
            assert max_abs(maps[:, 0], golden["map_trilinear"][:batch]) <= MAP_ATOL, batch
            bilinear = ort_training.run("fusion", seen["video_encoder"])["one_shot"]
            assert max_abs(bilinear[:1], torch_training) <= MAP_ATOL, batch
            assert max_abs(bilinear[:, 0], golden["map_bilinear"][:batch]) <= MAP_ATOL, batch
