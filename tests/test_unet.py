"""The DiffSal Saliency-UNet (avsal_deploy.models.unet): shapes, gradients, conditioning, ECA, ONNX."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avsal_deploy.config import LEGACY_DEFAULTS, Config, load_config, scaled
from avsal_deploy.errors import ConfigError
from avsal_deploy.models.attention_memory import measure_attention_peak, validate_method
from avsal_deploy.models.build import load_trained
from avsal_deploy.models.unet import (
    SaliencyUNet,
    SpatioTemporalCrossAttention,
    attention_memory_bytes,
    attention_score_shapes,
    eca_extra_parameters,
    eca_kernels,
)
from avsal_deploy.models.weights import read_checkpoint_metadata

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


@pytest.mark.parametrize("mode", ["eca", "standard", "eca3d"])
def test_attention_modes_key_counts(tiny: Config, mode: str) -> None:
    """Keys per attention group as the analytic shapes say: per frame (noise slot included)
    ceil(H/k) ceil(W/k) for ECA, H W for standard; one group of all frames for eca3d."""
    cfg = tiny.replace({"unet.attention": mode})
    model = _model(cfg).eval()
    keys: dict[int, tuple[int, ...]] = {}
    hooks = [
        stage.attn.norm_k.register_forward_hook(
            lambda m, a, out, i=i, k=keys: k.__setitem__(i, tuple(out.shape[:2]))
        )
        for i, stage in enumerate(model.mam)
    ]
    batch = 2
    with torch.no_grad():
        out = model(*_inputs(tiny, "hybrid", batch=batch))
    for h in hooks:
        h.remove()
    assert out.shape == (batch, *cfg.map_shape())
    analytic = attention_score_shapes(cfg, "hybrid", mode)
    assert [keys[i] for i in range(4)] == [(batch * g, n_kv) for g, _, _, n_kv in analytic]
    for s, (groups, heads, n_q, n_kv), kernel in zip(
        cfg.video_scales("hybrid"), analytic, eca_kernels(cfg, mode), strict=True
    ):
        assert heads == cfg.unet.heads
        if mode == "eca3d":
            assert groups == 1 and n_q == (s.frames + 1) * s.height * s.width
            continue
        assert (groups, n_q) == (s.frames + 1, s.height * s.width)
        assert kernel[0] == 1  # (1, k, k), clipped per axis to small grids
        want = math.ceil(s.height / kernel[1]) * math.ceil(s.width / kernel[2]) if mode == "eca" else n_q
        assert n_kv == want
    has_conv = [stage.attn.compress_k is not None for stage in model.mam]
    assert has_conv == [mode != "standard"] * 4


def _attention(mode: str, channels: int = 8, grid: tuple[int, int, int] = (4, 7, 12), k: int = 4):
    torch.manual_seed(0)
    kernel = (1, k, k) if mode != "eca3d" else (2, k, k)
    block = SpatioTemporalCrossAttention(channels, 2, kernel, mode).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, channels, *grid, generator=g)
    f_avs = torch.randn(2, channels, *grid, generator=g)
    return block, x, f_avs


@pytest.mark.parametrize("mode", ["eca", "standard"])
@pytest.mark.parametrize("frame", [0, 2, 3])  # 3 = the noise slot (the last of T + 1 frames)
def test_per_frame_attention_keeps_frames_apart(mode: str, frame: int) -> None:
    """Changing frame j of f_avs (the keys) or of [f_v, f_s] changes frame j's output only."""
    block, x, f_avs = _attention(mode)
    with torch.no_grad():
        base = block(x, f_avs)
        f2 = f_avs.clone()
        f2[:, :, frame] += torch.randn_like(f2[:, :, frame])
        by_keys = block(x, f2)
        x2 = x.clone()
        x2[1, :, frame] += 1.0
        by_values = block(x2, f_avs)
    assert base.shape == x.shape  # all T + 1 frames, the noise slot included, come out
    others = [i for i in range(x.shape[2]) if i != frame]
    torch.testing.assert_close(by_keys[:, :, others], base[:, :, others], rtol=0, atol=0)
    assert (by_keys[:, :, frame] - base[:, :, frame]).abs().max() > 1e-4
    torch.testing.assert_close(by_values[:, :, others], base[:, :, others], rtol=0, atol=0)
    torch.testing.assert_close(by_values[0], base[0], rtol=0, atol=0)  # batch items apart too
    assert (by_values[1, :, frame] - base[1, :, frame]).abs().max() > 1e-4


def test_eca3d_mixes_frames_through_the_keys() -> None:
    """The legacy 3-D form is NOT per frame: one frame's keys reach the other frames' outputs."""
    block, x, f_avs = _attention("eca3d")
    with torch.no_grad():
        base = block(x, f_avs)
        f2 = f_avs.clone()
        f2[:, :, 3] += 1.0
        changed = block(x, f2)
    assert (changed[:, :, 0] - base[:, :, 0]).abs().max() > 1e-4


def test_eca_pads_instead_of_dropping_pixels() -> None:
    """7 x 12 with k = 4: 2 x 3 keys; the last row and column (not multiples of 4) still count."""
    block, x, f_avs = _attention("eca", grid=(2, 7, 12), k=4)
    keys: list[tuple[int, ...]] = []
    hook = block.norm_k.register_forward_hook(lambda m, a, out: keys.append(tuple(out.shape)))
    with torch.no_grad():
        base = block(x, f_avs)
        f2 = f_avs.clone()
        f2[:, :, :, -1, :] += 1.0  # the 7th row, alone in its key row
        changed = block(x, f2)
    hook.remove()
    assert keys[0] == (2 * 2, 2 * 3, 8)
    assert (changed - base).abs().max() > 1e-4
    with pytest.raises(ConfigError, match="temporal kernel of 1"):
        SpatioTemporalCrossAttention(8, 2, (2, 4, 4), "eca")


def test_attention_memory_at_paper_profile() -> None:
    cfg = load_config("paper")
    # Official kernel_kv = stride_kv = [2, 4, 8, 16] from the lowest resolution up: 2^m at MAM stage m.
    assert eca_kernels(cfg) == ((1, 16, 16), (1, 8, 8), (1, 4, 4), (1, 2, 2))
    assert eca_kernels(cfg, "eca3d") == ((9, 16, 16), (8, 8, 8), (4, 4, 4), (2, 2, 2))
    assert eca_kernels(cfg, "standard") == ((1, 1, 1),) * 4
    eca = attention_score_shapes(cfg, "diffsal", "eca")
    # 9 frames (8 + the noise slot; MViTv2-S keeps T/2 at every scale) per window, 24 keys per
    # frame: 56 / 16 rounds up.
    assert eca == (
        (9, 4, 56 * 96, 4 * 6),
        (9, 4, 28 * 48, 4 * 6),
        (9, 4, 14 * 24, 4 * 6),
        (9, 4, 7 * 12, 4 * 6),
    )
    s3d = cfg.replace({"video.diffsal_backbone": "s3d"})  # S3D halves time at scales 2 and 3
    assert [shape[0] for shape in attention_score_shapes(s3d, "diffsal", "eca")] == [9, 9, 5, 3]
    assert attention_score_shapes(cfg, "diffsal", "standard")[0] == (9, 4, 5376, 5376)
    assert attention_score_shapes(cfg, "diffsal", "eca3d")[0] == (1, 4, 9 * 56 * 96, 1 * 4 * 6)
    std = attention_memory_bytes(cfg, "diffsal", "standard")
    frames = [(s.frames + 1) * (s.height * s.width) ** 2 for s in cfg.video_scales("diffsal")]
    assert std == 4 * 4 * sum(frames)
    assert std > 100 * attention_memory_bytes(cfg, "diffsal", "eca")
    assert attention_memory_bytes(cfg, "diffsal") == attention_memory_bytes(cfg, "diffsal", "eca")
    with pytest.raises(ConfigError, match="no Saliency-UNet"):
        attention_memory_bytes(cfg, "avrsp", "eca")
    with pytest.raises(ConfigError, match="attention mode"):
        attention_memory_bytes(cfg, "diffsal", "sparse")


def test_eca_parameter_count_at_paper_profile() -> None:
    """The docstring's figures: ECA adds 2 sum C_i k_i^2 = 57,344 parameters at the paper profile
    (92,160 at the paper's widths 96..768); the legacy 3-D form 454,656."""
    counts = {}
    for mode in ("eca", "standard", "eca3d"):
        cfg = load_config("paper", {"unet.attention": mode})
        with torch.device("meta"):
            model = SaliencyUNet(cfg, _cond_channels(cfg, "diffsal"), _audio_channels(cfg, "vggish"))
        counts[mode] = sum(p.numel() for p in model.parameters())
    paper = load_config("paper")
    assert counts["eca"] - counts["standard"] == eca_extra_parameters(paper) == 57_344
    assert counts["eca3d"] - counts["standard"] == eca_extra_parameters(paper, "eca3d") == 454_656
    wide = paper.replace({"unet.channels": (96, 192, 384, 768)})
    assert eca_extra_parameters(wide) == 92_160


def test_attention_config_and_legacy_migration(tiny: Config, legacy_checkpoint) -> None:
    """New profiles default to per-frame ECA; a stored config from before unet.attention (the
    first shipped checkpoint's: efficient_attention = true) maps to the 3-D form and its fingerprint."""
    assert all(load_config(p).unet.attention == "eca" for p in ("paper", "small", "tiny"))
    assert LEGACY_DEFAULTS["unet.attention"] == "eca3d"
    meta = read_checkpoint_metadata(legacy_checkpoint)
    stored = meta["config"]
    assert "attention" not in stored["unet"] and stored["unet"]["efficient_attention"] is True
    migrated = Config.from_dict(stored)
    assert migrated.unet.attention == "eca3d"
    assert migrated.architecture_fingerprint() == meta["fingerprint"]
    # A stored config lacking both fields means the legacy form too; one at today's default does not.
    bare = {**stored, "unet": {k: v for k, v in stored["unet"].items() if k != "efficient_attention"}}
    assert Config.from_dict(bare).unet.attention == "eca3d"
    assert Config.from_dict(bare).architecture_fingerprint() == meta["fingerprint"]
    new = migrated.replace({"unet.attention": "eca"})
    assert Config.from_dict(new.to_dict()).unet.attention == "eca"
    assert new.architecture_fingerprint() != meta["fingerprint"]
    with pytest.raises(ConfigError, match="no equivalent"):
        Config.from_dict({**stored, "unet": {**stored["unet"], "efficient_attention": False}})
    with pytest.raises(ConfigError, match="unet.attention"):
        tiny.replace({"unet.efficient_attention": True})
    with pytest.raises(ConfigError, match="choose one of"):
        tiny.replace({"unet.attention": "sparse"})


def test_legacy_checkpoint_loads_with_the_3d_attention(legacy_checkpoint) -> None:
    model, _ = load_trained(legacy_checkpoint)  # strict load
    config = model.config
    assert config.unet.attention == "eca3d"
    convs = [stage.attn.compress_k for stage in model.unet.mam]
    assert all(isinstance(c, torch.nn.Conv3d) for c in convs)
    assert [tuple(c.kernel_size) for c in convs] == list(eca_kernels(config, "eca3d"))


@pytest.mark.slow
def test_attention_memory_counters_agree_with_tensor_sizes() -> None:
    """The measurement method (fresh process, peak RSS and torch allocator events) on one MatMul
    reports its output's size; at the small profile standard attention needs more than ECA and at
    least its score tensor."""
    check = validate_method(2048)
    for key in ("peak_bytes", "torch_peak_bytes"):
        assert abs(check[key] - check["expected_bytes"]) <= 0.1 * check["expected_bytes"]
    cfg = load_config("small")
    eca = measure_attention_peak(cfg, "diffsal", "eca")
    std = measure_attention_peak(cfg, "diffsal", "standard")
    largest = max(math.prod(s) for s in attention_score_shapes(cfg, "diffsal", "standard")) * 4
    assert std["peak_bytes"] >= 2 * largest * 0.95  # scores and softmax output live together
    assert std["torch_peak_bytes"] >= 2 * largest
    assert 0 < eca["peak_bytes"] < std["peak_bytes"] / 10
    assert [st["input_shape"] for st in eca["stages"]][0] == [1, 32, 9, 28, 48]


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
