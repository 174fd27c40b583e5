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

Compared: the decoder (both builds) at batch 1 and 2; the encoder and the end-to-end map at full
size (slow); ONNX Runtime against torch for each stage at batch 1 and 2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avsal_deploy.config import LEGACY_DEFAULTS, Config, family_config
from avsal_deploy.errors import ConfigError, WeightsError
from avsal_deploy.export.onnx import audit_tensorrt_ops
from avsal_deploy.models.official import build_stages, convert_state, tased, vinet_s
from avsal_deploy.models.official.vinet_s import Upsample2x
from tests.golden.parity import (
    MAP_ATOL,
    assert_feature_close,
    load_golden,
    load_stage,
    max_abs,
    official_state,
    onnx_session,
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


@pytest.mark.slow
def test_encoder_and_end_to_end_match_official_at_full_size(golden, converted) -> None:
    """32 x 224 x 384 (the only size the official module runs): the encoder's four outputs at the
    stored positions, and the map of both builds, at batch 1 and 2."""
    encoder, trilinear = stages(converted, "trilinear")
    _, bilinear = stages(converted, "bilinear")
    frames = golden_frames(golden)
    for batch in (2, 1):
        with torch.no_grad():
            feats = encoder(frames[:batch])
            for i, f in enumerate(reversed(feats)):  # official y0 = our v3 (Mixed_5c) ...
                index = golden[f"encoder_y{i}_index"]
                keep = index < f.numel()  # batch 1: the positions in the first clip
                got = f.flatten()[torch.from_numpy(index[keep])]
                assert_feature_close(got, golden[f"encoder_y{i}_value"][keep], f"encoder y{i}")
            for name, decoder in (("trilinear", trilinear), ("bilinear", bilinear)):
                out = decoder(*feats)
                assert out.shape == (batch, 1, 224, 384)
                assert max_abs(out[:, 0], golden[f"map_{name}"][:batch]) <= MAP_ATOL, name


@pytest.mark.slow
def test_onnx_runtime_matches_torch(golden, converted, tmp_path: Path) -> None:
    """Each stage exported (dynamo, example batch 2): ONNX Runtime within 1e-4 of torch at batch 1
    and 2; both decoder builds; every op TensorRT parses. (The encoder at 64 x 96: our S3D takes
    any size; the official module does not.)"""
    encoder, _ = stages(converted, "trilinear", 64, 96)
    frames = torch.from_numpy(np.random.default_rng(5).normal(0, 1, (2, 3, 32, 64, 96)).astype(np.float32))
    with torch.no_grad():
        feats = encoder(frames)
    session, proto = onnx_session(
        encoder, (frames,), ["frames"], vinet_s.VIDEO_OUTPUTS, tmp_path / "enc.onnx"
    )
    assert not audit_tensorrt_ops(proto)
    for batch in (1, 2):
        got = session.run(None, {"frames": frames[:batch].numpy()})
        for name, ours, ref in zip(vinet_s.VIDEO_OUTPUTS, got, feats, strict=True):
            assert_feature_close(ours, ref[:batch], f"{name} (ONNX Runtime)")
    inputs = decoder_inputs(golden, 2)
    for upsampling in BUILDS:
        _, decoder = stages(converted, upsampling, 64, 96)
        path = tmp_path / f"dec-{upsampling}.onnx"
        session, proto = onnx_session(decoder, inputs, vinet_s.VIDEO_OUTPUTS, ["map"], path)
        assert not audit_tensorrt_ops(proto)
        for batch in (1, 2):
            with torch.no_grad():
                ref = decoder(*(x[:batch] for x in inputs))
            (out,) = session.run(
                None, {n: x[:batch].numpy() for n, x in zip(vinet_s.VIDEO_OUTPUTS, inputs, strict=True)}
            )
            assert max_abs(out, ref) <= MAP_ATOL, (upsampling, batch)
            assert max_abs(out[:, 0], golden[f"decoder_{upsampling}"][:batch]) <= MAP_ATOL
