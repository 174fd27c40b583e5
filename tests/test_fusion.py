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
    AudioVisualSync,
    FusionDecoder,
    LIP3d,
    MultiScaleRegulator,
    MultiScaleSynergy,
    RAVFBlock,
    RegulatorGate,
    RelevanceCrossAttention,
    SaliencyDecoder,
    TemporalReduction,
    downsample_to,
    sinusoidal_code_3d,
    target_slot,
    upsample_to,
)

OUTPUT_NAMES = ["saliency", "c0", "c1", "c2", "c3"]


def input_names(cfg: Config) -> list[str]:
    envelope = ["envelope"] if cfg.uses_envelope("avrsp") else []
    return ["v0", "v1", "v2", "v3", "audio", *envelope, *(["frames"] if cfg.uses_binding("avrsp") else [])]


def audio_channels(cfg: Config) -> int:
    return scaled(1024, cfg.audio.soundnet_width)


def build(cfg: Config, seed: int = 0) -> FusionDecoder:
    torch.manual_seed(seed)
    return FusionDecoder(cfg, cfg.s3d_channels(), audio_channels(cfg))


def fake_inputs(
    cfg: Config, batch: int, t_a: int = 3, seed: int = 1, device: str = "cpu"
) -> list[torch.Tensor]:
    """v0..v3, audio features, (with fusion.av_sync or binding) the per-frame envelope and (with
    fusion.binding) the window's frames."""
    g = torch.Generator().manual_seed(seed)
    env = cfg.envelope_shape("avrsp") if cfg.uses_envelope("avrsp") else None
    frames = cfg.frames_shape("avrsp") if cfg.uses_binding("avrsp") else None
    if device == "meta":
        vs = [torch.empty(batch, *s.as_tuple(), device="meta") for s in cfg.video_scales("avrsp")]
        out = vs + [torch.empty(batch, audio_channels(cfg), t_a, 1, 1, device="meta")]
        out += [torch.empty(batch, *env, device="meta")] if env else []
        return out + ([torch.empty(batch, *frames, device="meta")] if frames else [])
    vs = [torch.randn(batch, *s.as_tuple(), generator=g) for s in cfg.video_scales("avrsp")]
    # SoundNet conv7 features follow a ReLU: non-negative; envelope values are log energies in [0, 1].
    out = vs + [torch.rand(batch, audio_channels(cfg), t_a, 1, 1, generator=g)]
    out += [torch.rand(batch, *env, generator=g)] if env else []
    return out + ([torch.randn(batch, *frames, generator=g)] if frames else [])


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
    if model.readout is not None:
        # The binding read-out's last conv starts at zero (neutral until trained), which by design
        # stops gradients to the convs before it at step 0; give it weights to see the graph.
        with torch.no_grad():
            model.readout.net[-1].weight.normal_(0, 0.1)
    outs = model(*fake_inputs(cfg, batch=2))
    loss = outs[0].mean() + sum(c.square().mean() for c in outs[1:])
    loss.backward()
    # The ASPP pool branch's bias is a constant added over the grid before the fuse's BatchNorm: in
    # training its gradient sums to zero over the batch (up to rounding) whenever its ReLU is open.
    structural_zero = {f"adapters.{i}.0.pool_branch.0.bias" for i in range(4)}
    missing = [
        n
        for n, p in model.named_parameters()
        if n not in structural_zero and (p.grad is None or not bool(p.grad.abs().sum() > 0))
    ]
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
    inputs = fake_inputs(cfg, batch=2)
    audio = torch.rand(2, audio_channels(cfg), t_a, h_a, w_a)
    with torch.no_grad():
        outs = model(*inputs[:4], audio, *inputs[5:])
    assert [tuple(o.shape) for o in outs] == expected_shapes(cfg, 2)


def test_audio_changes_the_map() -> None:
    cfg = load_config("tiny")
    model = build(cfg).eval()
    inputs = fake_inputs(cfg, batch=1)
    with torch.no_grad():
        outs = model(*inputs)
        outs_silent = model(*inputs[:4], torch.zeros_like(inputs[4]), *inputs[5:])
    # RAVF's output (c3) moves clearly; the map, far downstream of it at random init, moves a little.
    assert float((outs[4] - outs_silent[4]).abs().max()) > 1e-2
    assert not torch.equal(outs[0], outs_silent[0])


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
    names = input_names(cfg)
    assert "envelope" in names  # the tiny profile has AV sync
    batch = torch.export.Dim("batch", min=1, max=64)
    path = tmp_path / "fusion.onnx"
    torch.onnx.export(
        model,
        tuple(inputs),
        str(path),
        dynamo=True,
        input_names=names,
        output_names=OUTPUT_NAMES,
        dynamic_shapes={name: {0: batch} for name in names},
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 2):
        feed = [x[:b] for x in inputs]
        with torch.no_grad():
            ref = model(*feed)
        got = sess.run(OUTPUT_NAMES, {n: x.numpy() for n, x in zip(names, feed, strict=True)})
        for name, g, r in zip(OUTPUT_NAMES, got, ref, strict=True):
            assert g.shape == tuple(r.shape), name
            np.testing.assert_allclose(g, r.numpy(), atol=1e-4, rtol=0, err_msg=name)


# ------------------------------------------------------------------------- temporal reduction
def test_target_slot_follows_the_window_mode() -> None:
    assert [target_slot(t, 8, "causal") for t in (4, 4, 2, 1)] == [3, 3, 1, 0]  # the LAST slot
    assert [target_slot(t, 32, "causal") for t in (16, 16, 8, 4)] == [15, 15, 7, 3]
    assert [target_slot(t, 16, "centre") for t in (8, 8, 4, 2)] == [4, 4, 2, 1]  # frame 8 of 16


def _decoder_conds(cfg: Config, batch: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *s.as_tuple(), generator=g) for s in cfg.fusion_scales("avrsp")]


def test_conv_reduction_singles_out_the_target_frame() -> None:
    """Conv mode: each scale goes to ONE frame by a valid temporal conv over its whole window plus
    the target slot's own feature; with the convs at zero only the target (last) slot is seen."""
    cfg = load_config("tiny")
    model = build(cfg).eval()
    decoder = model.decoder
    assert decoder.reduce is not None and all(isinstance(r, TemporalReduction) for r in decoder.reduce)
    frames = [s.frames for s in cfg.fusion_scales("avrsp")]
    assert [r.conv.kernel_size[0] for r in decoder.reduce] == frames
    assert [r.slot for r in decoder.reduce] == [t - 1 for t in frames]  # causal: the last slot
    conds = _decoder_conds(cfg)
    reduced = decoder.reduce[0](conds[0])
    assert reduced.shape == (2, cfg.fusion.channels[0], 1, *conds[0].shape[3:])
    earlier = [c.clone() for c in conds]
    for c in earlier:
        c[:, :, :-1] += torch.randn_like(c[:, :, :-1])  # every slot but the target's
    with torch.no_grad():
        base = decoder(conds)
        assert not torch.allclose(decoder(earlier), base)  # the learned reduction sees the window
        for r in decoder.reduce:
            r.conv.weight.zero_()
        base = decoder(conds)
        torch.testing.assert_close(decoder(earlier), base, rtol=0, atol=0)  # only the target slot
        last = [c.clone() for c in conds]
        last[0][:, :, -1] += 1.0
        assert not torch.allclose(decoder(last), base)
    with pytest.raises(ValueError, match="time slots"):
        decoder.reduce[0](conds[0][:, :, :2])


def test_mean_reduction_is_the_legacy_decoder() -> None:
    """``fusion.temporal_reduction = "mean"`` builds the decoder of checkpoints that predate the
    field: no reduction convs, 3-tap temporal convs, and the map is the head of the time mean."""
    cfg = load_config("tiny", {"fusion.temporal_reduction": "mean"})
    decoder = build(cfg).eval().decoder
    assert decoder.reduce is None
    assert all(block[0][3].kernel_size == (3, 1, 1) for block in decoder.blocks)
    conds = _decoder_conds(cfg)
    with torch.no_grad():
        x = decoder.blocks[-1](conds[-1])
        for i in range(len(conds) - 2, -1, -1):
            x = decoder.blocks[i](torch.cat([upsample_to(x, tuple(conds[i].shape[2:])), conds[i]], dim=1))
        expected = torch.sigmoid(
            F.interpolate(decoder.head(x.mean(dim=2)), size=cfg.map_shape()[1:], mode="bilinear")
        )
        torch.testing.assert_close(decoder(conds), expected)
    with pytest.raises(ConfigError, match="temporal_reduction"):
        SaliencyDecoder((8, 16, 24, 32), (64, 96), reduction="max")


def test_shipped_checkpoint_loads_strictly_and_matches_its_fusion_export() -> None:
    """The shipped checkpoint (the tiny profile: the learned temporal reduction and the
    binding map with its read-out) loads strictly and reproduces its exported fusion graph."""
    ort = pytest.importorskip("onnxruntime")
    from avsal_deploy.engine import DEFAULT_CHECKPOINT, DEFAULT_EXPORT
    from avsal_deploy.training.checkpoints import load_trained_model

    model, cfg, _, _ = load_trained_model(DEFAULT_CHECKPOINT)  # strict: every tensor lands
    assert cfg.fusion.temporal_reduction == "conv" and model.fusion is not None
    assert model.fusion.decoder.reduce is not None
    assert model.fusion.binding is not None and model.fusion.readout is not None
    sess = ort.InferenceSession(str(DEFAULT_EXPORT / "fusion.onnx"), providers=["CPUExecutionProvider"])
    inputs = fake_inputs(cfg, batch=2, t_a=2)
    names = [i.name for i in sess.get_inputs()]
    got = sess.run(None, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})
    with torch.no_grad():
        ref = model.fusion(*inputs)
    for name, g, r in zip(OUTPUT_NAMES, got, ref, strict=True):
        np.testing.assert_allclose(g, r.numpy(), atol=1e-4, rtol=0, err_msg=name)


# ------------------------------------------------------------------------------------- AV sync
def test_paper_profile_has_no_sync_and_tiny_needs_the_envelope() -> None:
    paper = load_config("paper")
    assert not paper.fusion.av_sync and not paper.uses_envelope("hybrid")
    with torch.device("meta"):
        assert FusionDecoder(paper, paper.s3d_channels(), audio_channels(paper)).sync is None
    cfg = load_config("tiny")
    assert cfg.uses_envelope("hybrid") and cfg.uses_envelope("avrsp") and not cfg.uses_envelope("diffsal")
    model = build(cfg).eval()
    with pytest.raises(ConfigError, match="envelope"):
        model(*fake_inputs(cfg, batch=1)[:5])


@pytest.mark.parametrize("override", [{"fusion.sync_scale": 4}, {"fusion.sync_heads": 3}])
def test_invalid_sync_settings_are_config_errors(override: dict) -> None:
    with pytest.raises(ConfigError, match="sync"):
        load_config("tiny", override)


def _sync_inputs(batch: int = 2, channels: int = 16, t: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    visual = torch.randn(batch, channels, t, 4, 6, generator=g)
    envelope = torch.rand(batch, 9, 2 * t, generator=g)
    return visual, envelope


def test_sync_silence_and_flat_sound_keep_no_audio() -> None:
    torch.manual_seed(0)
    sync = AudioVisualSync(16, 9, heads=2).eval()
    visual, envelope = _sync_inputs()
    with torch.no_grad():
        # Digital silence: all-zero envelope -> the visual feature comes back exactly.
        assert torch.equal(sync(visual, torch.zeros_like(envelope)), visual)
        # A constant envelope (flat loudness): zero covariance everywhere, so the retention is the
        # same at every location (sigmoid of the head bias), whatever the visual content.
        flat = torch.full_like(envelope, 0.4)
        sync.bias.copy_(torch.tensor([0.3, -1.0]))
        r = sync.retention(visual, flat)
        expected = torch.sigmoid(sync.bias)[None, :, None, None].expand_as(r)
        # The envelope encoder's zero padding makes the first/last audio tokens differ from the
        # others, so the covariance is not exactly zero: it is small and spatially smooth.
        assert (r - expected).abs().max() < 0.05
        # A sound that changes over time does change the output where it is retained.
        assert not torch.allclose(sync(visual, envelope), visual)
    with torch.no_grad():
        r = sync.retention(visual, envelope)
    assert r.shape == (2, 2, 4, 6) and float(r.min()) >= 0 and float(r.max()) <= 1


def test_fusion_returns_its_auxiliary_sync_map() -> None:
    """``return_aux=True`` hands back the synchrony the AV sync gate used (what the objective
    supervises) and leaves the five outputs of the exported graph unchanged."""
    cfg = load_config("tiny")
    model = build(cfg).eval()
    inputs = fake_inputs(cfg, batch=2)
    with torch.no_grad():
        plain = model(*inputs)
        outputs, aux = model(*inputs, return_aux=True)
        enhanced = model.synergy([a(v) for a, v in zip(model.adapters, inputs[:4], strict=True)])
        assert model.sync is not None
        envelope = inputs[5]  # v0..v3, audio, envelope (, frames with fusion.binding)
        expected = model.sync.synchrony(enhanced[cfg.fusion.sync_scale], envelope)
    assert isinstance(plain, tuple) and len(plain) == 5
    for a, b in zip(plain, outputs, strict=True):
        assert torch.equal(a, b)
    s = cfg.fusion_scales("avrsp")[cfg.fusion.sync_scale]
    assert aux.synchrony is not None and aux.synchrony.shape == (2, cfg.fusion.sync_heads, s.height, s.width)
    torch.testing.assert_close(aux.synchrony, expected, rtol=0, atol=0)
    no_sync = load_config("tiny", {"fusion.av_sync": False})
    _, aux = build(no_sync).eval()(*fake_inputs(no_sync, batch=1), return_aux=True)
    assert aux.synchrony is None


def test_sync_exports_to_onnx_with_dynamic_batch(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    sync = AudioVisualSync(16, 9, heads=2).eval()
    visual, envelope = _sync_inputs(batch=2)
    path = tmp_path / "sync.onnx"
    batch = torch.export.Dim("batch", min=1, max=16)
    torch.onnx.export(
        sync,
        (visual, envelope),
        str(path),
        dynamo=True,
        input_names=["visual", "envelope"],
        dynamic_shapes={"visual": {0: batch}, "envelope": {0: batch}},
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 2):
        with torch.no_grad():
            ref = sync(visual[:b], envelope[:b]).numpy()
        (got,) = sess.run(None, {"visual": visual[:b].numpy(), "envelope": envelope[:b].numpy()})
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def _pulse_task(n: int, g: torch.Generator, shuffle_time: bool = False):
    """Visual tokens at 3 locations, each pulsing at its own rate (plus noise); the envelope follows
    the rhythm of one of them; the answer is that location. Only timing tells them apart."""
    t_vis, locs = 8, 3
    times = torch.arange(2 * t_vis, dtype=torch.float32) / 25.0  # envelope: one column per frame
    rates = 2.0 + 4.0 * torch.rand(n, locs, generator=g)
    phases = 2 * torch.pi * torch.rand(n, locs, generator=g)
    pulse = (0.5 * (1 + torch.cos(2 * torch.pi * rates[..., None] * times + phases[..., None]))) ** 2
    visual = torch.zeros(n, 16, t_vis, 1, locs)
    # The visual grid has half the frames (S3D halves time): each step averages two frames.
    visual[:, 0, :, 0, :] = pulse.reshape(n, locs, t_vis, 2).mean(-1).transpose(1, 2)
    visual[:, 1:] = 0.3 * torch.randn(n, 15, t_vis, 1, locs, generator=g)
    source = torch.randint(0, locs, (n,), generator=g)
    env = pulse[torch.arange(n), source]  # [n, 2T]
    if shuffle_time:
        env = env[:, torch.randperm(env.shape[1], generator=g)]
    envelope = torch.cat([env[:, None].expand(n, 8, -1) * 0.8, env[:, None]], dim=1)
    return visual, envelope, source


@pytest.mark.parametrize("shuffle_time", [False, True])
def test_sync_learns_which_location_moves_with_the_sound(shuffle_time: bool) -> None:
    """Trained on the pulse task, the synchrony map points at the source location; with the
    envelope's frames shuffled (same sound, timing destroyed) it cannot beat chance (1/3)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    sync = AudioVisualSync(16, 9, heads=2)
    opt = torch.optim.Adam(sync.parameters(), lr=1e-2)
    for _ in range(150):
        visual, envelope, source = _pulse_task(64, g, shuffle_time)
        logits = sync.retention(visual, envelope).mean(dim=1).flatten(1).logit(eps=1e-6)
        loss = F.cross_entropy(logits, source)
        opt.zero_grad()
        loss.backward()
        opt.step()
    visual, envelope, source = _pulse_task(600, torch.Generator().manual_seed(99), shuffle_time)
    with torch.no_grad():
        pick = sync.retention(visual, envelope).mean(dim=1).flatten(1).argmax(dim=1)
    accuracy = float((pick == source).float().mean())
    if shuffle_time:
        assert accuracy < 0.45, accuracy
    else:
        assert accuracy > 0.9, accuracy
