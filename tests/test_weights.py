"""Public backbone layouts (generated from the public key-name rules) and full-model checkpoints."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from avsal_deploy import __version__
from avsal_deploy.config import load_config
from avsal_deploy.errors import WeightsError
from avsal_deploy.models.audio import SoundNet8, VGGishEncoder
from avsal_deploy.models.s3d import S3D
from avsal_deploy.models.weights import (
    LAYOUTS,
    load_backbone_weights,
    load_checkpoint,
    read_checkpoint_metadata,
    save_checkpoint,
)

# ----------------------------------------------------------------------------- public layouts
# Written from the public code, independently of our modules: (Sequential index, in_planes,
# b0_out, b1_mid, b1_out, b2_mid, b2_out, b3_out) of torchvision's / kylemin's S3D.
PUBLIC_S3D_MIXED = (
    (5, 192, 64, 96, 128, 16, 32, 32),
    (6, 256, 128, 128, 192, 32, 96, 64),
    (8, 480, 192, 96, 208, 16, 48, 64),
    (9, 512, 160, 112, 224, 24, 64, 64),
    (10, 512, 128, 128, 256, 24, 64, 64),
    (11, 512, 112, 144, 288, 32, 64, 64),
    (12, 528, 256, 160, 320, 32, 128, 128),
    (14, 832, 256, 160, 320, 32, 128, 128),
    (15, 832, 384, 192, 384, 48, 128, 128),
)
# (in, out, kernel) of the public SoundNet sound8 port's conv1..conv7.
PUBLIC_SOUNDNET = (
    (1, 16, 64),
    (16, 32, 32),
    (32, 64, 16),
    (64, 128, 8),
    (128, 256, 4),
    (256, 512, 4),
    (512, 1024, 4),
)
# torchvggish features: Sequential index -> (in, out).
PUBLIC_VGGISH = {0: (1, 64), 3: (64, 128), 6: (128, 256), 8: (256, 256), 11: (256, 512), 13: (512, 512)}


def _bn(sd: dict[str, Tensor], prefix: str, c: int, counters: bool = True) -> None:
    sd[f"{prefix}.weight"] = torch.rand(c) + 0.5
    sd[f"{prefix}.bias"] = torch.randn(c)
    sd[f"{prefix}.running_mean"] = torch.randn(c)
    sd[f"{prefix}.running_var"] = torch.rand(c) + 0.5
    if counters:
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(1000)


def torchvision_s3d_state_dict() -> dict[str, Tensor]:
    """torchvision.models.video.s3d naming: Conv3dNormActivation = (conv, bn, relu) Sequential,
    TemporalSeparableConv = (spatial CNA, temporal CNA) Sequential, SepInceptionBlock3D."""
    sd: dict[str, Tensor] = {}

    def cna(prefix: str, cin: int, cout: int, k: tuple[int, int, int]) -> None:
        sd[f"{prefix}.0.weight"] = torch.randn(cout, cin, *k)
        _bn(sd, f"{prefix}.1", cout)

    def tsc(prefix: str, cin: int, cout: int, k: int) -> None:
        cna(f"{prefix}.0", cin, cout, (1, k, k))
        cna(f"{prefix}.1", cout, cout, (k, 1, 1))

    tsc("features.0", 3, 64, 7)
    cna("features.2", 64, 64, (1, 1, 1))
    tsc("features.3", 64, 192, 3)
    for n, cin, b0, b1m, b1, b2m, b2, b3 in PUBLIC_S3D_MIXED:
        cna(f"features.{n}.branch0", cin, b0, (1, 1, 1))
        cna(f"features.{n}.branch1.0", cin, b1m, (1, 1, 1))
        tsc(f"features.{n}.branch1.1", b1m, b1, 3)
        cna(f"features.{n}.branch2.0", cin, b2m, (1, 1, 1))
        tsc(f"features.{n}.branch2.1", b2m, b2, 3)
        cna(f"features.{n}.branch3.1", cin, b3, (1, 1, 1))
    sd["classifier.1.weight"] = torch.randn(400, 1024, 1, 1, 1)
    sd["classifier.1.bias"] = torch.randn(400)
    return sd


def tased_s3d_state_dict(counters: bool = False) -> dict[str, Tensor]:
    """kylemin/S3D (S3D_kinetics400.pt) naming: BasicConv3d(conv, bn), SepConv3d(conv_s, bn_s,
    conv_t, bn_t), Mixed_* with branch Sequentials, head ``fc.0``. The released file predates
    BN step counters, hence ``counters=False`` by default."""
    sd: dict[str, Tensor] = {}

    def basic(prefix: str, cin: int, cout: int) -> None:
        sd[f"{prefix}.conv.weight"] = torch.randn(cout, cin, 1, 1, 1)
        _bn(sd, f"{prefix}.bn", cout, counters)

    def sep(prefix: str, cin: int, cout: int, k: int) -> None:
        sd[f"{prefix}.conv_s.weight"] = torch.randn(cout, cin, 1, k, k)
        _bn(sd, f"{prefix}.bn_s", cout, counters)
        sd[f"{prefix}.conv_t.weight"] = torch.randn(cout, cout, k, 1, 1)
        _bn(sd, f"{prefix}.bn_t", cout, counters)

    sep("base.0", 3, 64, 7)
    basic("base.2", 64, 64)
    sep("base.3", 64, 192, 3)
    for n, cin, b0, b1m, b1, b2m, b2, b3 in PUBLIC_S3D_MIXED:
        basic(f"base.{n}.branch0.0", cin, b0)
        basic(f"base.{n}.branch1.0", cin, b1m)
        sep(f"base.{n}.branch1.1", b1m, b1, 3)
        basic(f"base.{n}.branch2.0", cin, b2m)
        sep(f"base.{n}.branch2.1", b2m, b2, 3)
        basic(f"base.{n}.branch3.1", cin, b3)
    sd["fc.0.weight"] = torch.randn(400, 1024, 1, 1, 1)
    sd["fc.0.bias"] = torch.randn(400)
    return sd


def soundnet_block_state_dict() -> dict[str, Tensor]:
    """The block port (SoundNet8_pytorch): convI = Sequential(conv, bn, relu[, pool]); heads conv8 / conv8_2."""
    sd: dict[str, Tensor] = {}
    for i, (cin, cout, k) in enumerate(PUBLIC_SOUNDNET, start=1):
        sd[f"conv{i}.0.weight"] = torch.randn(cout, cin, k, 1)
        sd[f"conv{i}.0.bias"] = torch.randn(cout)
        _bn(sd, f"conv{i}.1", cout)
    for head, n in (("conv8", 1000), ("conv8_2", 401)):
        sd[f"{head}.0.weight"] = torch.randn(n, 1024, 8, 1)
        sd[f"{head}.0.bias"] = torch.randn(n)
    return sd


def soundnet_flat_state_dict() -> dict[str, Tensor]:
    """ViNet's port (soundnet8_final.pth): convI / batchnormI; heads conv8_objs / conv8_scns."""
    sd: dict[str, Tensor] = {}
    for i, (cin, cout, k) in enumerate(PUBLIC_SOUNDNET, start=1):
        sd[f"conv{i}.weight"] = torch.randn(cout, cin, k, 1)
        sd[f"conv{i}.bias"] = torch.randn(cout)
        _bn(sd, f"batchnorm{i}", cout)
    for head, n in (("conv8_objs", 1000), ("conv8_scns", 401)):
        sd[f"{head}.weight"] = torch.randn(n, 1024, 8, 1)
        sd[f"{head}.bias"] = torch.randn(n)
    return sd


def torchvggish_state_dict() -> dict[str, Tensor]:
    """harritaylor/torchvggish: ``features`` Sequential (conv, relu, pool) + ``embeddings`` MLP."""
    sd: dict[str, Tensor] = {}
    for n, (cin, cout) in PUBLIC_VGGISH.items():
        sd[f"features.{n}.weight"] = torch.randn(cout, cin, 3, 3)
        sd[f"features.{n}.bias"] = torch.randn(cout)
    # The fully connected head is ignored by the loader: uninitialised memory keeps this cheap.
    for n, (fin, fout) in {0: (512 * 4 * 6, 4096), 2: (4096, 4096), 4: (4096, 128)}.items():
        sd[f"embeddings.{n}.weight"] = torch.empty(fout, fin)
        sd[f"embeddings.{n}.bias"] = torch.empty(fout)
    return sd


def _vggish_encoder() -> VGGishEncoder:
    return VGGishEncoder(load_config("paper"))  # the public widths (vggish_width = 1.0)


# layout -> (state dict factory, encoder factory, [(public key, our key)] to spot-check)
CASES: dict[str, tuple[Callable[[], dict[str, Tensor]], Callable[[], nn.Module], list[tuple[str, str]]]] = {
    "torchvision-s3d": (
        torchvision_s3d_state_dict,
        S3D,
        [
            ("features.0.0.0.weight", "base1.0.conv_s.weight"),
            ("features.0.1.1.running_var", "base1.0.bn_t.running_var"),
            ("features.2.1.bias", "base1.2.bn.bias"),
            ("features.6.branch0.0.weight", "base2.1.branch0.0.conv.weight"),
            ("features.10.branch1.1.1.0.weight", "base3.2.branch1.1.conv_t.weight"),
            ("features.12.branch2.0.1.running_mean", "base3.4.branch2.0.bn.running_mean"),
            ("features.15.branch3.1.1.weight", "base4.1.branch3.1.bn.weight"),
        ],
    ),
    "tased-s3d": (
        tased_s3d_state_dict,
        S3D,
        [
            ("base.0.conv_t.weight", "base1.0.conv_t.weight"),
            ("base.3.bn_s.running_mean", "base1.3.bn_s.running_mean"),
            ("base.5.branch1.1.conv_s.weight", "base2.0.branch1.1.conv_s.weight"),
            ("base.11.branch3.1.conv.weight", "base3.3.branch3.1.conv.weight"),
            ("base.14.branch0.0.bn.bias", "base4.0.branch0.0.bn.bias"),
        ],
    ),
    "soundnet8": (
        soundnet_block_state_dict,
        SoundNet8,
        [
            ("conv1.0.weight", "conv1.0.weight"),
            ("conv5.1.running_var", "conv5.1.running_var"),
            ("conv7.0.bias", "conv7.0.bias"),
        ],
    ),
    "soundnet8 (flat)": (
        soundnet_flat_state_dict,
        SoundNet8,
        [
            ("conv1.weight", "conv1.0.weight"),
            ("batchnorm3.running_mean", "conv3.1.running_mean"),
            ("conv7.bias", "conv7.0.bias"),
            ("batchnorm7.weight", "conv7.1.weight"),
        ],
    ),
    "torchvggish": (
        torchvggish_state_dict,
        _vggish_encoder,
        [
            ("features.0.weight", "trunk.0.weight"),
            ("features.8.bias", "trunk.8.bias"),
            ("features.13.weight", "trunk.13.weight"),
        ],
    ),
}


def _layout(case: str) -> str:
    return case.split(" ")[0]


@pytest.mark.parametrize("case", list(CASES))
def test_public_layout_loads_strictly_into_the_right_parameters(case: str) -> None:
    make_sd, make_encoder, spots = CASES[case]
    torch.manual_seed(0)
    sd, encoder = make_sd(), make_encoder()
    load_backbone_weights(encoder, sd, _layout(case))
    own = encoder.state_dict()
    for public, ours in spots:
        assert torch.equal(own[ours], sd[public].to(own[ours].dtype)), (public, ours)
    # Every used public tensor landed at its translated key, and together they cover the encoder.
    spec = LAYOUTS[_layout(case)]
    translated = {spec.translate(k): k for k in sd if not spec.is_ignored(k)}
    for ours, public in translated.items():
        assert torch.equal(own[ours], sd[public].to(own[ours].dtype)), (public, ours)
    covered = {k for k in own if k.startswith(spec.covers) and not k.endswith("num_batches_tracked")}
    assert covered <= set(translated)


def test_tased_layout_keeps_bn_counters_optional_and_accepts_them() -> None:
    for counters in (False, True):
        load_backbone_weights(S3D(), tased_s3d_state_dict(counters=counters), "tased-s3d")


@pytest.mark.parametrize("case", list(CASES))
def test_public_layout_errors_name_the_key(case: str) -> None:
    make_sd, make_encoder, spots = CASES[case]
    encoder = make_encoder()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    public, ours = spots[-1]

    missing = make_sd()
    del missing[public]
    with pytest.raises(WeightsError, match=f"missing .*{re.escape(ours)}"):
        load_backbone_weights(encoder, missing, _layout(case))

    extra = make_sd()
    extra[f"{public}_extra"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=f"unexpected .*{re.escape(public)}_extra"):
        load_backbone_weights(encoder, extra, _layout(case))

    wrong = make_sd()
    wrong[public] = torch.zeros(*wrong[public].shape[:-1], wrong[public].shape[-1] + 1)
    with pytest.raises(WeightsError, match=f"shape mismatch .*{re.escape(public)}"):
        load_backbone_weights(encoder, wrong, _layout(case))

    after = encoder.state_dict()  # a refused checkpoint leaves the model untouched
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_heads_are_ignored_only_where_listed() -> None:
    sd = torchvision_s3d_state_dict()
    sd["classifier.2.weight"] = torch.zeros(3)  # not the listed head
    with pytest.raises(WeightsError, match=r"unexpected .*classifier\.2\.weight"):
        load_backbone_weights(S3D(), sd, "torchvision-s3d")
    pool = tased_s3d_state_dict()
    pool["base.1.weight"] = torch.zeros(3)  # a pool position has no parameters
    with pytest.raises(WeightsError, match=r"unexpected .*base\.1\.weight"):
        load_backbone_weights(S3D(), pool, "tased-s3d")


def test_mixed_soundnet_namings_are_duplicates() -> None:
    sd = soundnet_block_state_dict()
    sd["conv1.weight"] = sd["conv1.0.weight"].clone()
    with pytest.raises(WeightsError, match=r"duplicate .*conv1\.0\.weight / conv1\.weight"):
        load_backbone_weights(SoundNet8(), sd, "soundnet8")


def test_narrow_width_mismatch_names_the_width_setting() -> None:
    with pytest.raises(WeightsError, match=r"video\.s3d_width=1\.0, this model has 0\.5"):
        load_backbone_weights(S3D(0.5), torchvision_s3d_state_dict(), "torchvision-s3d")


class _FullModel(nn.Module):
    """Stand-in for AVSaliencyModel: the loader only looks at these attributes."""

    def __init__(self, audio: nn.Module) -> None:
        super().__init__()
        self.video_encoder = S3D(1.0)
        self.audio_encoder = audio


def test_full_model_routes_each_layout_to_its_encoder() -> None:
    model = _FullModel(SoundNet8(1.0))
    video, audio = tased_s3d_state_dict(), soundnet_flat_state_dict()
    load_backbone_weights(model, video, "tased-s3d")
    load_backbone_weights(model, audio, "soundnet8")
    assert torch.equal(
        model.video_encoder.base4[1].branch0[0].conv.weight, video["base.15.branch0.0.conv.weight"]
    )
    assert torch.equal(model.audio_encoder.conv2[0].weight, audio["conv2.weight"])
    with pytest.raises(WeightsError, match="loads into a VGGishEncoder .*this model has SoundNet8"):
        load_backbone_weights(model, torchvggish_state_dict(), "torchvggish")
    with pytest.raises(WeightsError, match="unknown weights layout 'resnet'"):
        load_backbone_weights(model, video, "resnet")


def test_vggish_layout_leaves_the_temporal_transformer_alone() -> None:
    torch.manual_seed(0)
    encoder = _vggish_encoder()
    before = {k: v.clone() for k, v in encoder.state_dict().items() if not k.startswith("trunk.")}
    load_backbone_weights(encoder, torchvggish_state_dict(), "torchvggish")
    after = encoder.state_dict()
    assert before and all(torch.equal(before[k], after[k]) for k in before)


def test_checkpoint_files_wrappers_and_prefixes(tmp_path) -> None:
    sd = soundnet_block_state_dict()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "sound.pth")
    torch.save({"model": sd}, tmp_path / "sound_model.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "sound.safetensors"))
    for name in ("sound.pth", "sound_model.pt", "sound.safetensors"):
        encoder = SoundNet8()
        load_backbone_weights(encoder, tmp_path / name, "soundnet8")
        assert torch.equal(encoder.conv4[1].running_mean, sd["conv4.1.running_mean"])

    with pytest.raises(WeightsError, match="no such weights file"):
        load_backbone_weights(SoundNet8(), tmp_path / "absent.pth", "soundnet8")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"junk\.pth: cannot read weights"):
        load_backbone_weights(SoundNet8(), tmp_path / "junk.pth", "soundnet8")
    torch.save({"conv1.0.weight": [1, 2]}, tmp_path / "lists.pth")
    with pytest.raises(WeightsError, match="not a tensor"):
        load_backbone_weights(SoundNet8(), tmp_path / "lists.pth", "soundnet8")


# ----------------------------------------------------------------------------- checkpoints
class _Tiny(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3)
        self.bn = nn.BatchNorm2d(width)


def test_checkpoint_round_trip_with_metadata(tmp_path) -> None:
    config = load_config("tiny")
    torch.manual_seed(0)
    src = _Tiny()
    path = tmp_path / "ckpt" / "model.safetensors"
    save_checkpoint(src, path, config, "hybrid", metadata={"epoch": 7, "val": {"cc": 0.5}})
    dst = _Tiny()
    meta = load_checkpoint(dst, path, config, "hybrid")
    assert all(
        torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True)
    )
    assert meta["fingerprint"] == config.architecture_fingerprint()
    assert meta["variant"] == "hybrid" and meta["profile"] == "tiny"
    assert meta["avsal_version"] == __version__
    assert meta["config"] == json.loads(config.to_json())
    assert meta["epoch"] == 7 and meta["val"] == {"cc": 0.5}
    assert read_checkpoint_metadata(path) == meta
    assert set(load_file(str(path))) == set(src.state_dict())
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(src, path, config, "hybrid", metadata={"variant": "x"})


def test_checkpoint_refusals_are_one_line_and_leave_the_model_untouched(tmp_path) -> None:
    tiny, small = load_config("tiny"), load_config("small")
    path = tmp_path / "m.safetensors"
    save_checkpoint(_Tiny(), path, tiny, "hybrid")
    model = _Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    cases = [
        (
            lambda: load_checkpoint(model, tmp_path / "none.safetensors", tiny, "hybrid"),
            "no such checkpoint file",
        ),
        (
            lambda: load_checkpoint(model, path, small, "hybrid"),
            "trained for profile tiny .*this model is profile small",
        ),
        (lambda: load_checkpoint(model, path, tiny, "diffsal"), "variant 'hybrid', this model is 'diffsal'"),
        (lambda: load_checkpoint(_Tiny(8), path, tiny, "hybrid"), r"shape mismatch .*conv\.weight"),
    ]
    extra = nn.Sequential(_Tiny())  # every key gains a "0." prefix
    cases.append(
        (lambda: load_checkpoint(extra, path, tiny, "hybrid"), r"missing 0\.bn\.bias.*unexpected bn\.bias")
    )
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    cases.append(
        (lambda: load_checkpoint(model, tmp_path / "corrupt.safetensors", tiny, "hybrid"), "not a readable")
    )
    save_file({"w": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    cases.append(
        (lambda: read_checkpoint_metadata(tmp_path / "foreign.safetensors"), "not an avsal checkpoint")
    )
    for call, message in cases:
        with pytest.raises(WeightsError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
