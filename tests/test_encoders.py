"""S3D, SoundNet-8 and VGGish encoders: shapes from the config, gradients, determinism, ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from avsal_deploy.config import S3D_SCALE_CHANNELS, load_config, scaled
from avsal_deploy.errors import ConfigError
from avsal_deploy.models.audio import (
    SoundNet8,
    VGGishEncoder,
    build_audio_encoder,
    soundnet_output_frames,
    vggish_output_hw,
)
from avsal_deploy.models.s3d import S3D, build_s3d

PROFILES = ("tiny", "small", "paper")


def _video_shapes(outputs: tuple[torch.Tensor, ...]) -> list[tuple[int, ...]]:
    return [tuple(y.shape[1:]) for y in outputs]


def _run(module: nn.Module, x: torch.Tensor, meta: bool) -> object:
    with torch.no_grad():
        return module(x.to("meta") if meta else x)


def _build(profile: str, builder, *args):  # paper-profile modules live on the meta device
    if profile == "paper":
        with torch.device("meta"):
            return builder(*args)
    torch.manual_seed(0)
    return builder(*args).eval()


# ----------------------------------------------------------------------------- S3D
@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("variant", ["hybrid", "diffsal"])
def test_s3d_outputs_match_config_video_scales(profile: str, variant: str) -> None:
    config = load_config(profile, {"video.diffsal_backbone": "s3d"})  # the S3D DiffSal (MViT: test_mvit)
    model = _build(profile, build_s3d, config)
    frames = torch.randn(2, *config.frames_shape(variant))
    outputs = _run(model, frames, meta=profile == "paper")
    assert len(outputs) == 4
    assert _video_shapes(outputs) == [s.as_tuple() for s in config.video_scales(variant)]
    assert all(y.shape[0] == 2 for y in outputs)
    assert model.out_channels == config.s3d_channels()


def test_s3d_width_one_has_the_public_channels_and_parameter_count() -> None:
    with torch.device("meta"):
        model = S3D(1.0)
    assert model.out_channels == S3D_SCALE_CHANNELS
    # torchvision's s3d has 8,320,048 parameters; its Kinetics head Conv3d(1024, 400) has 410,000.
    assert sum(p.numel() for p in model.parameters()) == 8_320_048 - 410_000
    mixed_5c = model.base4[1]
    assert [mixed_5c.branch0[0].conv.out_channels, mixed_5c.branch1[1].conv_t.out_channels] == [384, 384]
    assert mixed_5c.branch3[1].conv.out_channels == 128


@pytest.mark.parametrize("width", [0.125, 0.3, 0.6, 0.75])
def test_s3d_block_widths_follow_scaled_for_any_width(width: float) -> None:
    with torch.device("meta"):
        model = S3D(width)
    assert model.out_channels == tuple(scaled(c, width) for c in S3D_SCALE_CHANNELS)
    y = model(torch.randn(1, 3, 8, 64, 64, device="meta"))
    assert [t.shape[1] for t in y] == list(model.out_channels)


def test_s3d_rejects_non_positive_width() -> None:
    with pytest.raises(ConfigError, match="s3d_width"):
        S3D(0.0)


# ----------------------------------------------------------------------------- SoundNet-8
@pytest.mark.parametrize("profile", PROFILES)
def test_soundnet_output_frames_matches_the_module(profile: str) -> None:
    config = load_config(profile)
    model = build_audio_encoder(config, "avrsp").eval()  # a real forward is cheap at any profile
    samples = config.soundnet_samples()
    wave = torch.randn(2, *config.audio_input_shape("avrsp"))
    out = _run(model, wave, meta=False)
    assert isinstance(model, SoundNet8)
    assert tuple(out.shape) == (
        2,
        scaled(1024, config.audio.soundnet_width),
        soundnet_output_frames(samples),
        1,
        1,
    )
    assert model.out_channels == out.shape[1]


def test_soundnet_paper_buffer_gives_three_frames_and_odd_lengths_agree() -> None:
    assert soundnet_output_frames(70_560) == 3  # ViNet: int(22050 / 10 * 32) samples -> 3 frames
    model = SoundNet8(0.125).eval()
    for samples in (8_000, 17_641, 30_001):
        out = _run(model, torch.randn(1, 1, samples, 1), meta=False)
        assert out.shape[2] == soundnet_output_frames(samples)
    with pytest.raises(ConfigError, match="too short"):
        soundnet_output_frames(100)


# ----------------------------------------------------------------------------- VGGish
@pytest.mark.parametrize("profile", PROFILES)
def test_vggish_encoder_shapes(profile: str) -> None:
    config = load_config(profile)
    model = _build(profile, build_audio_encoder, config, "diffsal")
    a = config.audio
    out = _run(model, torch.randn(2, *config.audio_input_shape("diffsal")), meta=profile == "paper")
    ha, wa = vggish_output_hw(a.vggish_slice_height, a.vggish_slice_width)
    assert isinstance(model, VGGishEncoder)
    assert tuple(out.shape) == (2, scaled(512, a.vggish_width), a.vggish_slices, ha, wa)
    assert model.out_channels == out.shape[1]
    assert len(model.layers) == a.transformer_layers


def test_vggish_output_hw_and_errors() -> None:
    assert vggish_output_hw(112, 192) == (7, 12)
    assert vggish_output_hw(96, 64) == (6, 4)  # torchvggish's native 0.96 s example
    with pytest.raises(ConfigError, match="too small"):
        vggish_output_hw(8, 64)
    with pytest.raises(ConfigError, match="transformer_heads"):
        VGGishEncoder(load_config("tiny", audio__transformer_heads=3))


def test_vggish_temporal_embedding_distinguishes_slices() -> None:
    """Identical slices must not give identical features: the positional embedding marks time."""
    config = load_config("tiny")
    torch.manual_seed(0)
    model = VGGishEncoder(config).eval()
    one = torch.randn(1, 1, 1, config.audio.vggish_slice_height, config.audio.vggish_slice_width)
    out = _run(model, one.expand(1, config.audio.vggish_slices, -1, -1, -1).contiguous(), meta=False)
    assert not torch.allclose(out[:, :, 0], out[:, :, 1])
    # ... and every output slice attends to the others (the transformer mixes time steps).
    x = torch.randn(1, *config.audio_input_shape("diffsal"))
    y = x.clone()
    y[:, -1] += 1.0
    a, b = _run(model, x, meta=False), _run(model, y, meta=False)
    assert not torch.allclose(a[:, :, 0], b[:, :, 0])


# ----------------------------------------------------------------------------- builders
def test_build_audio_encoder_picks_the_variants_encoder() -> None:
    config = load_config("tiny")
    assert isinstance(build_audio_encoder(config, "avrsp"), SoundNet8)
    assert isinstance(build_audio_encoder(config, "hybrid"), SoundNet8)
    assert isinstance(build_audio_encoder(config, "diffsal"), VGGishEncoder)
    with pytest.raises(ConfigError, match="unknown model family 'avsal'"):
        build_audio_encoder(config, "avsal")


# ----------------------------------------------------------------------------- training
def _tiny_encoders() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    config = load_config("tiny")
    return {
        "s3d": (build_s3d(config), config.frames_shape("hybrid")),
        "soundnet": (build_audio_encoder(config, "hybrid"), config.audio_input_shape("hybrid")),
        "vggish": (build_audio_encoder(config, "diffsal"), config.audio_input_shape("diffsal")),
    }


def _as_tuple(out: object) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)  # type: ignore[return-value]


@pytest.mark.parametrize("name", ["s3d", "soundnet", "vggish"])
def test_gradients_reach_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    model, shape = _tiny_encoders()[name]
    model.train()
    outputs = _as_tuple(model(torch.randn(2, *shape)))
    loss = sum((y * torch.randn_like(y)).sum() for y in outputs)
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not dead, f"no gradient for {dead}"


@pytest.mark.parametrize("name", ["s3d", "soundnet", "vggish"])
def test_construction_and_forward_are_deterministic(name: str) -> None:
    torch.manual_seed(123)
    a, shape = _tiny_encoders()[name]
    torch.manual_seed(123)
    b, _ = _tiny_encoders()[name]
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.randn(2, *shape)
    for ya, yb in zip(_as_tuple(_run(a.eval(), x, False)), _as_tuple(_run(b.eval(), x, False)), strict=True):
        assert torch.equal(ya, yb)
    torch.manual_seed(7)
    c, _ = _tiny_encoders()[name]
    assert any(not torch.equal(sa[k], v) for k, v in c.state_dict().items() if v.is_floating_point())


# ----------------------------------------------------------------------------- ONNX
def _well_conditioned(model: nn.Module) -> None:
    """Variance-preserving random weights and BN statistics, so eval outputs are O(1).

    With default init the activations vanish with depth (any tolerance would pass); calibrating
    BN on a batch instead amplifies near-constant channels and float32 noise with them.
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.uniform_(m.weight, 0.8, 1.2)
            nn.init.uniform_(m.bias, -0.1, 0.1)
            nn.init.uniform_(m.running_mean, -0.1, 0.1)
            nn.init.uniform_(m.running_var, 0.8, 1.2)
    model.eval()


@pytest.mark.parametrize("name", [pytest.param("s3d", marks=pytest.mark.slow), "soundnet", "vggish"])
@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # raised inside torch.export
def test_encoder_exports_to_onnx_with_dynamic_batch(name: str, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model, shape = _tiny_encoders()[name]
    _well_conditioned(model)
    path = tmp_path / f"{name}.onnx"
    batch = torch.export.Dim("batch", min=1, max=16)
    torch.onnx.export(model, (torch.randn(2, *shape),), str(path), dynamo=True, dynamic_shapes=({0: batch},))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    for b in (1, 2):
        x = torch.randn(b, *shape)
        ref = _as_tuple(_run(model, x, False))
        got = session.run(None, {inp.name: x.numpy()})
        assert len(got) == len(ref)
        for g, r in zip(got, ref, strict=True):
            assert g.shape == tuple(r.shape)
            assert float(r.abs().max()) > 0.1  # a meaningful comparison, not of vanishing values
            np.testing.assert_allclose(g, r.numpy(), rtol=0, atol=1e-4)
