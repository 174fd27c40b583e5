"""MViTv2-S (DiffSal's video backbone): torchvision layout, shapes, positional tables, ONNX, cost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from avsal_deploy.config import load_config
from avsal_deploy.errors import WeightsError
from avsal_deploy.models.build import build_model
from avsal_deploy.models.mvit import MViTv2S, build_mvit
from avsal_deploy.models.weights import load_backbone_weights

# ----------------------------------------------------------------------------- the public layout
# Written from torchvision's mvit_v2_s definition (models/video/mvit.py), independently of our module:
# per block (heads, input channels, output channels, q stride (h = w), kv stride (h = w)); kernels 3^3.
TV_HEADS = (1, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 8, 8)
TV_IN = (96, 96, 192, 192, 384, 384, 384, 384, 384, 384, 384, 384, 384, 384, 384, 768)
TV_OUT = (96, 192, 192, 384, 384, 384, 384, 384, 384, 384, 384, 384, 384, 384, 768, 768)
TV_STRIDE_Q = (1, 2, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1)
TV_STRIDE_KV = (8, 4, 4, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1)
TV_NUM_PARAMS = 34_537_744  # MViT_V2_S_Weights.KINETICS400_V1.meta["num_params"] (with the 400-way head)
TV_GFLOPS = 64.224  # its meta["_ops"] at 16x224x224


def torchvision_mvit_v2_s_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of torchvision's mvit_v2_s state dict with its shape (head included)."""
    sd: dict[str, tuple[int, ...]] = {
        "conv_proj.weight": (96, 3, 3, 7, 7),
        "conv_proj.bias": (96,),
        "pos_encoding.class_token": (96,),
    }
    size, t = 224 // 4, 16 // 2  # torchvision builds its tables at 16x224x224
    for i in range(16):
        cin, cout, heads = TV_IN[i], TV_OUT[i], TV_HEADS[i]
        hd = cout // heads
        p = f"blocks.{i}"
        sd[f"{p}.norm1.weight"] = sd[f"{p}.norm1.bias"] = (cin,)
        sd[f"{p}.norm2.weight"] = sd[f"{p}.norm2.bias"] = (cout,)
        sd[f"{p}.attn.qkv.weight"], sd[f"{p}.attn.qkv.bias"] = (3 * cout, cin), (3 * cout,)
        sd[f"{p}.attn.project.0.weight"], sd[f"{p}.attn.project.0.bias"] = (cout, cout), (cout,)
        for which in "qkv":
            sd[f"{p}.attn.pool_{which}.pool.weight"] = (hd, 1, 3, 3, 3)
            sd[f"{p}.attn.pool_{which}.norm_act.0.weight"] = (hd,)
            sd[f"{p}.attn.pool_{which}.norm_act.0.bias"] = (hd,)
        spatial = 2 * max(size // TV_STRIDE_Q[i], size // TV_STRIDE_KV[i]) - 1
        sd[f"{p}.attn.rel_pos_h"] = sd[f"{p}.attn.rel_pos_w"] = (spatial, hd)
        sd[f"{p}.attn.rel_pos_t"] = (2 * t - 1, hd)
        sd[f"{p}.mlp.0.weight"], sd[f"{p}.mlp.0.bias"] = (4 * cout, cout), (4 * cout,)
        sd[f"{p}.mlp.3.weight"], sd[f"{p}.mlp.3.bias"] = (cout, 4 * cout), (cout,)
        if cin != cout:
            sd[f"{p}.project.weight"], sd[f"{p}.project.bias"] = (cout, cin), (cout,)
        size //= TV_STRIDE_Q[i]
    sd["norm.weight"] = sd["norm.bias"] = (768,)
    sd["head.1.weight"], sd["head.1.bias"] = (400, 768), (400,)
    return sd


def generated_state_dict(seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape in torchvision_mvit_v2_s_shapes().items()}


@pytest.fixture(scope="module")
def mvit() -> MViTv2S:
    torch.manual_seed(0)
    return MViTv2S(8, 64, 96).eval()  # small clip: the table shapes do not depend on it


def test_layout_matches_torchvision_names_shapes_and_parameter_count(mvit: MViTv2S) -> None:
    ours = {k: tuple(v.shape) for k, v in mvit.state_dict().items()}
    public = torchvision_mvit_v2_s_shapes()
    head = {k for k in public if k.startswith("head.")}
    trained_here = {k for k in ours if k.startswith("stage_norms.")}
    assert trained_here == {f"stage_norms.{i}.{p}" for i in range(3) for p in ("weight", "bias")}
    assert {k: ours[k] for k in set(ours) - trained_here} == {k: public[k] for k in set(public) - head}
    n_head = sum(int(np.prod(public[k])) for k in head)
    n_trained_here = sum(int(np.prod(ours[k])) for k in trained_here)
    assert sum(p.numel() for p in mvit.parameters()) == TV_NUM_PARAMS - n_head + n_trained_here


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_kinetics_state_dict_loads_strictly_and_every_tensor_lands(
    mvit: MViTv2S, tmp_path: Path, suffix: str
) -> None:
    sd = generated_state_dict()
    path = tmp_path / f"mvit_v2_s{suffix}"
    if suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, str(path))  # read back with torch.load(weights_only=True)
    model = MViTv2S(16, 224, 384)  # the paper's clip: same table shapes, resized at run time
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("stage_norms.")}
    load_backbone_weights(model, path, "torchvision-mvit_v2_s")
    own = model.state_dict()
    for key, value in sd.items():
        if key.startswith("head."):
            continue
        assert torch.equal(own[key], value), key
    for key, value in before.items():  # not in the public weights: left as initialised
        assert torch.equal(own[key], value)


def mmaction_name(key: str) -> str:
    """torchvision name -> mmaction2 MViT name (written from mmaction2's module names)."""
    key = key.replace("conv_proj.", "patch_embed.projection.").replace(
        "pos_encoding.class_token", "cls_token"
    )
    key = (
        key.replace("attn.project.0.", "attn.proj.")
        .replace("mlp.0.", "mlp.fc1.")
        .replace("mlp.3.", "mlp.fc2.")
    )
    for w in "qkv":
        key = key.replace(f"attn.pool_{w}.pool.", f"attn.pool_{w}.").replace(
            f"attn.pool_{w}.norm_act.0.", f"attn.norm_{w}."
        )
    key = key.replace(".project.", ".proj.") if key.startswith("blocks.") and ".attn." not in key else key
    return "norm3." + key[len("norm.") :] if key.startswith("norm.") else key


def test_mmaction2_state_dict_of_the_official_code_loads_too(tmp_path: Path) -> None:
    model = MViTv2S(8, 64, 96)  # not the shared fixture: random N(0, 1) weights would leak into it
    tv = generated_state_dict(2)
    sd = {f"backbone.{mmaction_name(k)}": v for k, v in tv.items() if not k.startswith("head.")}
    sd["backbone.cls_token"] = tv["pos_encoding.class_token"].reshape(1, 1, 96)
    sd["cls_head.fc_cls.weight"], sd["cls_head.fc_cls.bias"] = torch.zeros(400, 768), torch.zeros(400)
    sd["backbone.norm1.weight"], sd["backbone.norm1.bias"] = torch.full((192,), 2.0), torch.zeros(192)
    path = tmp_path / "mvit-small-p244_16x4x1_kinetics400-rgb.pth"
    torch.save({"state_dict": sd, "meta": {}}, str(path))
    load_backbone_weights(model, path, "mmaction2-mvit_v2_s")
    own = model.state_dict()
    for key, value in tv.items():
        if not key.startswith("head."):
            assert torch.equal(own[key], value), key
    assert torch.equal(own["stage_norms.1.weight"], torch.full((192,), 2.0))  # DiffSal's per-stage norms


def test_load_through_the_full_diffsal_model() -> None:
    config = load_config("tiny", {"video.diffsal_backbone": "mvit_v2_s"})
    with torch.device("meta"):
        model = build_model(config, "diffsal")
    assert isinstance(model.video_encoder, MViTv2S)
    model = model.to_empty(device="cpu")
    load_backbone_weights(model, generated_state_dict(1), "torchvision-mvit_v2_s")
    assert torch.equal(model.video_encoder.conv_proj.bias, generated_state_dict(1)["conv_proj.bias"])


def test_missing_extra_and_misshaped_keys_fail_naming_file_and_key(mvit: MViTv2S, tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    cases = {
        "missing model keys blocks.7.attn.rel_pos_t": lambda sd: sd.pop("blocks.7.attn.rel_pos_t"),
        "unexpected checkpoint keys blocks.3.attn.extra": lambda sd: sd.update(
            {"blocks.3.attn.extra": torch.zeros(3)}
        ),
        "shape mismatch (checkpoint vs model) blocks.0.attn.rel_pos_h (5, 96) vs (111, 96)": lambda sd: (
            sd.update({"blocks.0.attn.rel_pos_h": torch.zeros(5, 96)})
        ),
    }
    for message, edit in cases.items():
        sd = generated_state_dict()
        edit(sd)
        save_file(sd, str(path))
        before = mvit.conv_proj.weight.clone()
        with pytest.raises(WeightsError) as err:
            load_backbone_weights(mvit, path, "torchvision-mvit_v2_s")
        assert str(path) in str(err.value) and message in str(err.value)
        assert torch.equal(mvit.conv_proj.weight, before)  # nothing loaded


def test_stage_outputs_follow_the_config(mvit: MViTv2S) -> None:
    config = load_config("tiny", {"video.diffsal_backbone": "mvit_v2_s"})
    assert config.frames_shape("diffsal") == (3, 8, 64, 96)
    encoder = build_mvit(config)
    with torch.no_grad():
        outs = encoder(torch.randn(2, 3, 8, 64, 96))
    assert [tuple(o.shape[1:]) for o in outs] == [s.as_tuple() for s in config.video_scales("diffsal")]
    assert [s.as_tuple() for s in config.video_scales("diffsal")] == [
        (96, 4, 16, 24),
        (192, 4, 8, 12),
        (384, 4, 4, 6),
        (768, 4, 2, 3),
    ]
    paper = load_config("paper")
    assert [s.as_tuple() for s in paper.video_scales("diffsal")] == [
        (96, 8, 56, 96),  # the official code's shapes (diff_model.py) for 16x224x384
        (192, 8, 28, 48),
        (384, 8, 14, 24),
        (768, 8, 7, 12),
    ]
    # odd sizes round up, as the module's convolutions do
    odd = load_config("tiny", {"video.diffsal_backbone": "mvit_v2_s", "video.height": 80, "video.width": 112})
    with torch.device("meta"):
        got = build_mvit(odd)(torch.empty(1, *odd.frames_shape("diffsal")))
    assert [tuple(o.shape[1:]) for o in got] == [s.as_tuple() for s in odd.video_scales("diffsal")]


def _rel_pos_reference(q: Tensor, attn_module: torch.nn.Module) -> Tensor:
    """torchvision's _add_rel_pos term written with einsum, tables resized by F.interpolate."""
    a = attn_module
    (qt, qh, qw), (kt, kh, kw) = a.q_grid, a.kv_grid

    def table(p: Tensor, q_n: int, k_n: int) -> Tensor:
        d = 2 * max(q_n, k_n) - 1
        if p.shape[0] != d:
            p = torch.nn.functional.interpolate(p.t()[None], size=d, mode="linear")[0].t()
        qr, kr = max(k_n / q_n, 1.0), max(q_n / k_n, 1.0)
        dist = torch.arange(q_n)[:, None] * qr - (torch.arange(k_n)[None, :] + (1.0 - k_n)) * kr
        return p[dist.long()]

    rt, rh, rw = table(a.rel_pos_t, qt, kt), table(a.rel_pos_h, qh, kh), table(a.rel_pos_w, qw, kw)
    b, heads, _, d = q.shape
    r_q = q[:, :, 1:].reshape(b, heads, qt, qh, qw, d)
    rel_t = torch.einsum("bythwc,tkc->bythwk", r_q, rt)
    rel_h = torch.einsum("bythwc,hkc->bythwk", r_q, rh)
    rel_w = torch.einsum("bythwc,wkc->bythwk", r_q, rw)
    rel = rel_t[..., :, None, None] + rel_h[..., None, :, None] + rel_w[..., None, None, :]
    return rel.reshape(b, heads, qt * qh * qw, kt * kh * kw)


def test_relative_positions_match_the_reference_on_a_non_square_grid() -> None:
    torch.manual_seed(0)
    model = MViTv2S(8, 96, 160)  # 24x40 tokens: height and width tables both resized
    for i in (0, 1, 14):  # q unpooled / pooled; kv pooled 8x, 4x, unpooled
        attn = model.blocks[i].attn
        qt, qh, qw = attn.q_grid
        q = torch.randn(2, attn.heads, 1 + qt * qh * qw, attn.head_dim)
        torch.testing.assert_close(attn._rel_pos(q), _rel_pos_reference(q, attn), rtol=1e-4, atol=1e-4)
    # at the paper's 224x384 the block-0 height table is used as trained, the width one stretched
    paper = MViTv2S(16, 224, 384)
    assert paper.blocks[0].attn.table_len == (15, 111, 191)
    assert tuple(paper.blocks[0].attn.rel_pos_w.shape) == (111, 96)


def test_multiply_adds_match_torchvision_at_the_kinetics_clip() -> None:
    with torch.device("meta"):
        model = MViTv2S(16, 224, 224)
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, 16, 224, 224))
    # FlopCounterMode counts 2 FLOPs per multiply-add; torchvision's "_ops" (GFLOPS) are multiply-adds.
    # Ours has 0.022 G more: the positional-table look-ups run as (weight-only) matmuls.
    assert counter.get_total_flops() / 2e9 == pytest.approx(TV_GFLOPS, rel=5e-4)


def _export_and_compare(module: torch.nn.Module, x: Tensor, path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from avsal_deploy.export.onnx import audit_tensorrt_ops

    with torch.no_grad():
        out = module(x)
        expected = [o.numpy() for o in (out if isinstance(out, list | tuple) else [out])]
        torch.onnx.export(
            module, (x,), str(path), dynamo=True, opset_version=18, optimize=True, verbose=False
        )
    proto = onnx.load(str(path))
    assert audit_tensorrt_ops(proto) == set()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


def test_onnx_export_of_pooling_blocks_matches_torch(mvit: MViTv2S, tmp_path: Path) -> None:
    # Blocks 1-3: q pooling with the max-pooled, projected shortcut, kv pooling 4x and 2x, every
    # table resized; block 3 has heads = q_t = q_h = 4 (a reshape/transpose fold of the exporter's
    # optimiser once broke exactly this case).
    blocks = torch.nn.Sequential(*mvit.blocks[1:4]).eval()
    t, h, w = mvit.blocks[1].attn.pool_q.grid
    x = torch.randn(1, 1 + t * h * w, 96)
    _export_and_compare(blocks, x, tmp_path / "blocks.onnx")


@pytest.mark.slow
def test_onnx_export_of_the_encoder_matches_torch(mvit: MViTv2S, tmp_path: Path) -> None:
    _export_and_compare(mvit, torch.randn(1, 3, 8, 64, 96), tmp_path / "mvit.onnx")
