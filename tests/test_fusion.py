"""Tests of the AVRSP fusion decoder (ASPP + LIP, MS, RAVF, MRG, decoder) on fake encoder features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avsal_deploy.config import Config, load_config, scaled
from avsal_deploy.errors import ConfigError
from avsal_deploy.models.fusion import (
    ASPP3d,
    FusionDecoder,
    LIP3d,
    MultiScaleRegulator,
    MultiScaleSynergy,
    RAVFBlock,
    RegulatorGate,
    RelevanceCrossAttention,
    downsample_to,
    sinusoidal_code_3d,
    upsample_to,
)

OUTPUT_NAMES = ["saliency", "c0", "c1", "c2", "c3"]
INPUT_NAMES = ["v0", "v1", "v2", "v3", "audio"]


def audio_channels(cfg: Config) -> int:
    return scaled(1024, cfg.audio.soundnet_width)


def build(cfg: Config, seed: int = 0) -> FusionDecoder:
    torch.manual_seed(seed)
    return FusionDecoder(cfg, cfg.s3d_channels(), audio_channels(cfg))


def fake_inputs(
    cfg: Config, batch: int, t_a: int = 3, seed: int = 1, device: str = "cpu"
) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if device == "meta":
        vs = [torch.empty(batch, *s.as_tuple(), device="meta") for s in cfg.video_scales("avrsp")]
        return vs + [torch.empty(batch, audio_channels(cfg), t_a, 1, 1, device="meta")]
    vs = [torch.randn(batch, *s.as_tuple(), generator=g) for s in cfg.video_scales("avrsp")]
    # SoundNet conv7 features follow a ReLU: non-negative.
    return vs + [torch.rand(batch, audio_channels(cfg), t_a, 1, 1, generator=g)]


def expected_shapes(cfg: Config, batch: int) -> list[tuple[int, ...]]:
    return [(batch, *cfg.map_shape())] + [(batch, *s.as_tuple()) for s in cfg.fusion_scales("avrsp")]


# ------------------------------------------------------------------------------ whole decoder
@pytest.mark.parametrize("profile", ["tiny", "small"])
def test_output_shapes(profile: str) -> None:
    cfg = load_config(profile)
    model = build(cfg).eval()
    assert model.cond_channels == cfg.fusion.channels
    with torch.no_grad():
        outs = model(*fake_inputs(cfg, batch=2 if profile == "tiny" else 1))
    assert [tuple(o.shape) for o in outs] == expected_shapes(cfg, 2 if profile == "tiny" else 1)
    assert all(torch.isfinite(o).all() for o in outs)


def test_output_shapes_paper_on_meta() -> None:
    cfg = load_config("paper")
    with torch.device("meta"):
        model = FusionDecoder(cfg, cfg.s3d_channels(), audio_channels(cfg)).eval()
    outs = model(*fake_inputs(cfg, batch=2, device="meta"))
    assert [tuple(o.shape) for o in outs] == expected_shapes(cfg, 2)
    assert expected_shapes(cfg, 1)[0] == (1, 1, 224, 384)


@pytest.mark.parametrize("override", [{"fusion.ravf_blocks": 0}, {"fusion.aspp_rates": ()}])
def test_invalid_fusion_settings_are_config_errors(override: dict) -> None:
    cfg = load_config("tiny", override)
    with pytest.raises(ConfigError, match="fusion"):
        build(cfg)


def test_saliency_in_unit_interval_and_batch_independent() -> None:
    cfg = load_config("tiny")
    model = build(cfg).eval()
    inputs = fake_inputs(cfg, batch=3)
    with torch.no_grad():
        sal = model(*inputs)[0]
        sal_first = model(*[x[:1] for x in inputs])[0]
    assert float(sal.min()) >= 0.0 and float(sal.max()) <= 1.0
    assert float(sal.std()) > 0.0
    torch.testing.assert_close(sal[:1], sal_first, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("blocks", [1, 2])
def test_gradients_reach_every_parameter(blocks: int) -> None:
    cfg = load_config("tiny", fusion__ravf_blocks=blocks)
    model = build(cfg).train()
    outs = model(*fake_inputs(cfg, batch=2))
    loss = outs[0].mean() + sum(c.square().mean() for c in outs[1:])
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_deterministic_under_seed() -> None:
    cfg = load_config("tiny")
    a, b, c = build(cfg, seed=3).eval(), build(cfg, seed=3).eval(), build(cfg, seed=4).eval()
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    inputs = fake_inputs(cfg, batch=2)
    with torch.no_grad():
        out_a, out_b, out_c = a(*inputs), b(*inputs), c(*inputs)
    assert all(torch.equal(x, y) for x, y in zip(out_a, out_b, strict=True))
    assert not torch.equal(out_a[0], out_c[0])


@pytest.mark.parametrize(("t_a", "h_a", "w_a"), [(1, 1, 1), (3, 1, 1), (7, 1, 1), (2, 3, 2)])
def test_any_audio_grid(t_a: int, h_a: int, w_a: int) -> None:
    cfg = load_config("tiny")
    model = build(cfg).eval()
    vs = fake_inputs(cfg, batch=2)[:4]
    audio = torch.rand(2, audio_channels(cfg), t_a, h_a, w_a)
    with torch.no_grad():
        outs = model(*vs, audio)
    assert [tuple(o.shape) for o in outs] == expected_shapes(cfg, 2)


def test_audio_changes_the_map() -> None:
    cfg = load_config("tiny")
    model = build(cfg).eval()
    inputs = fake_inputs(cfg, batch=1)
    with torch.no_grad():
        sal = model(*inputs)[0]
        sal_silent = model(*inputs[:4], torch.zeros_like(inputs[4]))[0]
    assert not torch.allclose(sal, sal_silent, atol=1e-6)


# ----------------------------------------------------------------------------- ASPP, LIP, resize
def test_aspp_keeps_grid_and_sets_channels() -> None:
    aspp = ASPP3d(12, 16, (1, 2, 3)).eval()
    x = torch.randn(2, 12, 3, 5, 7)
    assert aspp(x).shape == (2, 16, 3, 5, 7)


def test_lip_is_a_local_weighted_average() -> None:
    torch.manual_seed(0)
    lip = LIP3d(6).eval()
    const = torch.full((2, 6, 3, 5, 7), 2.5)
    torch.testing.assert_close(lip(const), const)
    x = torch.randn(2, 6, 3, 5, 7)
    with torch.no_grad():
        y, w = lip(x), lip.importance(x)
    assert y.shape == x.shape
    # A convex combination of each 3x3 spatial neighbourhood: bounded by its min and max.
    flat = x.flatten(1, 2)
    local_max = F.max_pool2d(flat, 3, 1, 1).unflatten(1, (6, 3))
    local_min = -F.max_pool2d(-flat, 3, 1, 1).unflatten(1, (6, 3))
    assert bool((y <= local_max + 1e-5).all()) and bool((y >= local_min - 1e-5).all())
    assert float(w.min()) >= 1.0 and float(w.max()) <= float(np.exp(12.0)) * (1 + 1e-6)


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ((16, 56, 96), (8, 28, 48)),
        ((4, 7, 12), (2, 4, 6)),
        ((2, 4, 6), (1, 2, 3)),
        ((8, 28, 48), (8, 14, 24)),
        ((5, 9, 9), (2, 3, 4)),
    ],
)
def test_resize_to_explicit_grids(src: tuple[int, int, int], dst: tuple[int, int, int]) -> None:
    x = torch.randn(1, 2, *src)
    assert downsample_to(x, dst).shape[-3:] == dst
    assert upsample_to(downsample_to(x, dst), src).shape[-3:] == src


def test_downsample_is_a_local_mean() -> None:
    x = torch.arange(4.0).reshape(1, 1, 4, 1, 1).expand(1, 1, 4, 2, 2)
    y = downsample_to(x, (2, 1, 1))
    # time k3/s2/p1 (padding excluded): frames {0,1} and {1,2,3}; space: the mean of the 2x2 grid.
    torch.testing.assert_close(y.flatten(), torch.tensor([0.5, 2.0]))


# ------------------------------------------------------------------------------------------- MS
def test_ms_uses_neighbours_only() -> None:
    cfg = load_config("tiny")
    torch.manual_seed(0)
    ms = MultiScaleSynergy(cfg.fusion.channels).eval()
    feats = [torch.randn(1, *s.as_tuple()) for s in cfg.fusion_scales("avrsp")]
    with torch.no_grad():
        base = ms(feats)
        assert [tuple(e.shape) for e in base] == [tuple(f.shape) for f in feats]
        for k in range(4):
            changed = list(feats)
            changed[k] = feats[k] + torch.randn_like(feats[k])
            out = ms(changed)
            for i in range(4):
                moved = not torch.allclose(out[i], base[i], atol=1e-7)
                assert moved == (abs(i - k) <= 1), f"scale {k} -> scale {i}"


# ------------------------------------------------------------------------------------------ RAVF
DIM, HEADS, N_V, N_A = 16, 4, 6, 3


def _tokens(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, N_V, DIM, generator=g), torch.rand(2, N_A, DIM, generator=g) + 0.1


def _heads(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], x.shape[1], HEADS, DIM // HEADS).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], DIM)


def test_ravf_zero_audio_leaves_visual_path_intact() -> None:
    torch.manual_seed(0)
    block = RAVFBlock(DIM, HEADS, 2).eval()
    x_v, _ = _tokens()
    x_a = torch.zeros(2, N_A, DIM)
    attn = block.attn
    with torch.no_grad():
        assert torch.equal(attn.k_a(x_a), torch.zeros_like(x_a))
        assert torch.equal(attn.v_a(x_a), torch.zeros_like(x_a))
        out_v, _ = block(x_v, x_a)
        # The block by hand with the audio term of V2A removed: V2A = V_v. The audio stream's
        # A2V = mean_v(sigmoid(0) * V_v) = V_v.mean / 2 (Q_a = 0), which feeds the head weights.
        v_v = _heads(attn.v_v(x_v))
        v2a = v_v
        a2v = (0.5 * v_v.mean(dim=2, keepdim=True)).expand(-1, -1, N_A, -1)
        pooled = torch.cat([_merge(v2a).mean(1), _merge(a2v).mean(1)], dim=-1)
        w = torch.sigmoid(attn.head_mlp(pooled))[:, :, None, None]
        x = block.visual.norm1(x_v + attn.out_v(_merge(v2a * w)))
        ref = block.visual.norm2(x + block.visual.ffn(x))
    torch.testing.assert_close(out_v, ref, atol=1e-6, rtol=1e-5)


def test_ravf_retention_in_unit_interval_without_softmax() -> None:
    torch.manual_seed(0)
    attn = RelevanceCrossAttention(DIM, HEADS).eval()
    x_v, x_a = _tokens()
    with torch.no_grad():
        ret_a, ret_v = attn.retention(x_v, x_a)
    assert ret_a.shape == (2, HEADS, N_V, N_A) and ret_v.shape == (2, HEADS, N_A, N_V)
    for r in (ret_a, ret_v):
        assert float(r.min()) >= 0.0 and float(r.max()) <= 1.0
        assert not torch.allclose(r.sum(-1), torch.ones_like(r.sum(-1)), atol=1e-2)
    # Retention is what the forward pass weights the values by: V2A - V_v = mean_a(RetA * V_a).
    with torch.no_grad():
        v2a, _ = attn.integrate(x_v, x_a)
        expected = ret_a @ _heads(attn.v_a(x_a)) / N_A
        torch.testing.assert_close(v2a - _heads(attn.v_v(x_v)), expected, atol=1e-6, rtol=1e-5)


def test_ravf_zero_retention_makes_visual_output_independent_of_audio() -> None:
    torch.manual_seed(0)
    block = RAVFBlock(DIM, HEADS, 2).eval()
    attn = block.attn
    x_v, x_a = _tokens()
    x_a2 = torch.rand_like(x_a) * 3 + 0.1
    with torch.no_grad():
        control = (block(x_v, x_a)[0] - block(x_v, x_a2)[0]).abs().max()
        assert float(control) > 1e-4  # at initialisation audio does reach the visual stream
        # Q_v = 1 and K_a = -100 * sum(audio) per channel: Q_v K_a^T << 0 for non-negative audio.
        attn.q_v.weight.zero_()
        attn.q_v.bias.fill_(1.0)
        attn.k_a.weight.fill_(-100.0)
        for a in (x_a, x_a2):
            ret_a, _ = attn.retention(x_v, a)
            assert float(ret_a.max()) < 1e-30
            v2a, _ = attn.integrate(x_v, a)
            torch.testing.assert_close(v2a, _heads(attn.v_v(x_v)))
        # The head weights also read the audio stream (eq. 6); hold them fixed to isolate retention.
        attn.head_mlp[-1].weight.zero_()
        torch.testing.assert_close(block(x_v, x_a)[0], block(x_v, x_a2)[0])


def test_sinusoidal_code_distinguishes_positions() -> None:
    code = sinusoidal_code_3d(2, 3, 4, 32, torch.device("cpu"), torch.float32)
    assert code.shape == (24, 32)
    assert torch.cdist(code, code).add(torch.eye(24)).min() > 1e-3


# ------------------------------------------------------------------------------------------ MRG
def test_mrg_gate_in_unit_interval_and_cascade_shapes() -> None:
    cfg = load_config("tiny")
    torch.manual_seed(0)
    enhanced = [torch.randn(2, *s.as_tuple()) for s in cfg.fusion_scales("avrsp")]
    fused = torch.randn_like(enhanced[-1])
    mrg = MultiScaleRegulator(cfg.fusion.channels).eval()
    with torch.no_grad():
        conds = mrg(enhanced, fused)
        assert [c.shape for c in conds] == [e.shape for e in enhanced]
        assert torch.equal(conds[-1], fused)
        gate: RegulatorGate = mrg.gates[0]
        g = gate.gate(enhanced[0], gate.lift(enhanced[0], conds[1]))
    assert g.shape == (2, cfg.fusion.channels[0], 1, 1, 1)
    assert float(g.min()) >= 0.0 and float(g.max()) <= 1.0


def test_mrg_closed_gate_passes_the_visual_feature() -> None:
    torch.manual_seed(0)
    gate = RegulatorGate(8, 16).eval()
    visual, coarse = torch.randn(1, 8, 4, 6, 8), torch.randn(1, 16, 2, 3, 4)
    with torch.no_grad():
        gate.gate_conv.weight.zero_()
        gate.gate_conv.bias.fill_(-200.0)
        torch.testing.assert_close(gate(visual, coarse), visual)
        gate.gate_conv.bias.fill_(200.0)
        torch.testing.assert_close(gate(visual, coarse), visual + gate.lift(visual, coarse))


# ------------------------------------------------------------------------------------------ ONNX
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:.*axis name.*:UserWarning")
def test_onnx_export_dynamic_batch(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    cfg = load_config("tiny")
    model = build(cfg).eval()
    inputs = fake_inputs(cfg, batch=2)
    batch = torch.export.Dim("batch", min=1, max=64)
    path = tmp_path / "fusion.onnx"
    torch.onnx.export(
        model,
        tuple(inputs),
        str(path),
        dynamo=True,
        input_names=INPUT_NAMES,
        output_names=OUTPUT_NAMES,
        dynamic_shapes={name: {0: batch} for name in INPUT_NAMES},
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 2):
        feed = [x[:b] for x in inputs]
        with torch.no_grad():
            ref = model(*feed)
        got = sess.run(OUTPUT_NAMES, {n: x.numpy() for n, x in zip(INPUT_NAMES, feed, strict=True)})
        for name, g, r in zip(OUTPUT_NAMES, got, ref, strict=True):
            assert g.shape == tuple(r.shape), name
            np.testing.assert_allclose(g, r.numpy(), atol=1e-4, rtol=0, err_msg=name)
