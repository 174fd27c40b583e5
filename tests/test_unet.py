"""The DiffSal Saliency-UNet (avsal_deploy.models.unet): shapes, gradients, conditioning, ECA, ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avsal_deploy.config import Config, load_config, scaled
from avsal_deploy.errors import ConfigError
from avsal_deploy.models.unet import (
    SaliencyUNet,
    attention_memory_bytes,
    attention_score_shapes,
    eca_kernels,
)

INPUT_NAMES = ["x_t", "t", "c0", "c1", "c2", "c3", "audio"]


def _audio_channels(cfg: Config, kind: str) -> int:
    return (
        scaled(1024, cfg.audio.soundnet_width) if kind == "soundnet" else scaled(512, cfg.audio.vggish_width)
    )


def _cond_channels(cfg: Config, variant: str) -> tuple[int, int, int, int]:
    return tuple(cfg.fusion.channels) if variant == "hybrid" else cfg.s3d_channels()  # type: ignore[return-value]


def _inputs(
    cfg: Config,
    variant: str = "hybrid",
    audio_kind: str = "soundnet",
    batch: int = 2,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[torch.Tensor, ...]:
    """Fake UNet inputs of the model contract's shapes, derived from the config."""
    g = torch.Generator().manual_seed(seed) if device == "cpu" else None

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device)

    conds = [
        rnd(batch, c, s.frames, s.height, s.width)
        for c, s in zip(_cond_channels(cfg, variant), cfg.video_scales(variant), strict=True)
    ]
    if audio_kind == "soundnet":  # SoundNet conv7: [B, C_a, T_a, 1, 1]
        audio = rnd(batch, _audio_channels(cfg, audio_kind), 3, 1, 1)
    else:  # VGGish + temporal transformer: [B, C_a, S, h_a, w_a]
        audio = rnd(batch, _audio_channels(cfg, audio_kind), cfg.audio.vggish_slices, 2, 2)
    t = torch.linspace(0, 999, batch, device=device)
    return (rnd(batch, 1, cfg.video.height, cfg.video.width), t, *conds, audio)


def _model(cfg: Config, variant: str = "hybrid", audio_kind: str = "soundnet", seed: int = 0) -> SaliencyUNet:
    torch.manual_seed(seed)
    return SaliencyUNet(cfg, _cond_channels(cfg, variant), _audio_channels(cfg, audio_kind))


@pytest.fixture(scope="module")
def tiny() -> Config:
    return load_config("tiny")


@pytest.mark.parametrize("variant", ["hybrid", "diffsal"])
@pytest.mark.parametrize("audio_kind", ["soundnet", "vggish"])
def test_output_shape_tiny(tiny: Config, variant: str, audio_kind: str) -> None:
    model = _model(tiny, variant, audio_kind).eval()
    with torch.no_grad():
        out = model(*_inputs(tiny, variant, audio_kind))
    assert out.shape == (2, *tiny.map_shape())
    assert torch.isfinite(out).all()


def test_output_shape_small(tiny: Config) -> None:
    cfg = load_config("small")
    model = _model(cfg, "diffsal", "vggish").eval()
    with torch.no_grad():
        out = model(*_inputs(cfg, "diffsal", "vggish", batch=1))
    assert out.shape == (1, *cfg.map_shape())


@pytest.mark.parametrize("variant", ["hybrid", "diffsal"])
def test_output_shape_paper_on_meta(variant: str) -> None:
    cfg = load_config("paper")
    kind = "soundnet" if variant == "hybrid" else "vggish"
    with torch.device("meta"):
        model = SaliencyUNet(cfg, _cond_channels(cfg, variant), _audio_channels(cfg, kind))
    out = model(*_inputs(cfg, variant, kind, device="meta"))
    assert out.shape == (2, 1, 224, 384)


def test_noise_features_sit_on_the_condition_grids() -> None:
    for profile in ("tiny", "small", "paper"):
        cfg = load_config(profile)
        with torch.device("meta"):
            model = SaliencyUNet(cfg, tuple(cfg.fusion.channels), 32)
            h = model.stem(torch.empty(1, 1, cfg.video.height, cfg.video.width))
            temb = model.time_embed(torch.zeros(1))
            for stage, scale, ch in zip(model.encoder, cfg.video_scales(), cfg.unet.channels, strict=True):
                h = stage(h, temb)
                assert tuple(h.shape[1:]) == (ch, scale.height, scale.width)


def test_gradients_reach_every_parameter(tiny: Config) -> None:
    model = _model(tiny, "hybrid", "vggish")
    inputs = _inputs(tiny, "hybrid", "vggish")
    loss = (model(*inputs) - torch.rand(2, *tiny.map_shape())).square().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient: {missing}"


def test_deterministic_under_seed(tiny: Config) -> None:
    a, b = _model(tiny, seed=7).eval(), _model(tiny, seed=7).eval()
    inputs = _inputs(tiny, seed=3)
    with torch.no_grad():
        out_a, out_b, again = a(*inputs), b(*inputs), a(*_inputs(tiny, seed=3))
    assert torch.equal(out_a, out_b) and torch.equal(out_a, again)
    with torch.no_grad():
        other = _model(tiny, seed=8).eval()(*inputs)
    assert not torch.allclose(out_a, other)


def test_output_depends_on_t_audio_and_video(tiny: Config) -> None:
    model = _model(tiny, "diffsal", "vggish").eval()
    x_t, t, c0, c1, c2, c3, audio = _inputs(tiny, "diffsal", "vggish")
    with torch.no_grad():
        base = model(x_t, t, c0, c1, c2, c3, audio)
        other_t = model(x_t, t + 100.0, c0, c1, c2, c3, audio)
        other_audio = model(x_t, t, c0, c1, c2, c3, torch.randn_like(audio))
        other_video = model(x_t, t, torch.randn_like(c0), c1, c2, c3, audio)
        other_x = model(torch.randn_like(x_t), t, c0, c1, c2, c3, audio)
    for changed in (other_t, other_audio, other_video, other_x):
        assert (changed - base).abs().max() > 1e-4


def test_batch_items_are_independent(tiny: Config) -> None:
    model = _model(tiny).eval()
    inputs = _inputs(tiny, batch=2)
    with torch.no_grad():
        both = model(*inputs)
        first = model(*(x[:1] for x in inputs))
    torch.testing.assert_close(both[:1], first, rtol=1e-5, atol=1e-5)


def test_efficient_and_standard_attention(tiny: Config) -> None:
    inputs = _inputs(tiny, "hybrid")
    for efficient in (True, False):
        cfg = tiny.replace({"unet.efficient_attention": efficient})
        model = _model(cfg).eval()
        keys: dict[int, int] = {}
        hooks = [
            stage.attn.norm_k.register_forward_hook(
                lambda m, a, out, i=i, k=keys: k.__setitem__(i, out.shape[1])
            )
            for i, stage in enumerate(model.mam)
        ]
        with torch.no_grad():
            out = model(*inputs)
        for h in hooks:
            h.remove()
        assert out.shape == (2, *cfg.map_shape())
        analytic = attention_score_shapes(cfg, "hybrid", efficient)
        assert [keys[i] for i in range(4)] == [n_kv for _, _, n_kv in analytic]
        has_conv = [stage.attn.compress_k is not None for stage in model.mam]
        assert has_conv == [efficient] * 4
    eff = attention_score_shapes(tiny, "hybrid", True)
    std = attention_score_shapes(tiny, "hybrid", False)
    assert all(e[1] == s[1] and e[2] < s[2] for e, s in zip(eff, std, strict=True))
    assert attention_memory_bytes(tiny, "hybrid", True) < attention_memory_bytes(tiny, "hybrid", False)


def test_attention_memory_at_paper_profile() -> None:
    cfg = load_config("paper")
    # ECA kernel 2^m at MAM stage m (m = 1 at the lowest resolution), clipped to each grid.
    assert eca_kernels(cfg) == ((9, 16, 16), (8, 8, 8), (4, 4, 4), (2, 2, 2))
    shapes = attention_score_shapes(cfg, "diffsal", True)
    assert shapes[0] == (4, 9 * 56 * 96, 1 * 4 * 6)  # 56 / 16 rounds up: no pixel dropped
    eff = attention_memory_bytes(cfg, "diffsal", True)
    std = attention_memory_bytes(cfg, "diffsal", False)
    assert std == 4 * 4 * sum(((s.frames + 1) * s.height * s.width) ** 2 for s in cfg.video_scales("diffsal"))
    assert std > 1000 * eff
    with pytest.raises(ConfigError, match="no Saliency-UNet"):
        attention_memory_bytes(cfg, "avrsp", True)


def test_rejects_bad_config_and_inputs(tiny: Config) -> None:
    with pytest.raises(ConfigError, match="heads"):
        SaliencyUNet(tiny.replace({"unet.heads": 3}), tuple(tiny.fusion.channels), 16)
    model = _model(tiny).eval()
    x_t, t, c0, c1, c2, c3, audio = _inputs(tiny)
    with pytest.raises(ValueError, match="c1"):
        model(x_t, t, c0, c1[..., :-1], c2, c3, audio)
    with pytest.raises(ValueError, match="x_t"):
        model(x_t[..., :-16], t, c0, c1, c2, c3, audio)


@pytest.mark.slow
def test_onnx_export_dynamic_batch(tiny: Config, tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = _model(tiny, "diffsal", "vggish").eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.onnx.export(
        model,
        _inputs(tiny, "diffsal", "vggish", batch=2),
        dynamo=True,
        input_names=INPUT_NAMES,
        output_names=["x0"],
        dynamic_shapes={name: {0: batch} for name in INPUT_NAMES},
        verbose=False,
    )
    path = tmp_path / "unet.onnx"
    program.save(str(path))
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Einsum" not in ops and "Loop" not in ops and "If" not in ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 2):
        inputs = _inputs(tiny, "diffsal", "vggish", batch=b, seed=10 + b)
        with torch.no_grad():
            ref = model(*inputs).numpy()
        out = session.run(None, {n: x.numpy() for n, x in zip(INPUT_NAMES, inputs, strict=True)})[0]
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)
