"""Honest sizes: the multiply-add counter, ``avsal info`` at the paper size, the diffsal backbone
setting and the config migration that keeps old checkpoints loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from avsal_deploy.cli import main
from avsal_deploy.config import LEGACY_DEFAULTS, Config, load_config
from avsal_deploy.models.build import build_model, forward_flops
from avsal_deploy.models.mvit import MViTv2S
from avsal_deploy.models.s3d import S3D
from avsal_deploy.models.weights import read_checkpoint_metadata


class Known(nn.Module):
    """A conv, a linear layer and an attention product with hand-counted multiply-adds."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # [1, 8, 16, 16]
        tokens = self.fc(y.flatten(2).transpose(1, 2))  # [1, 256, 4]
        q = tokens.reshape(1, 256, 2, 2).transpose(1, 2)  # 2 heads of 2 channels
        attn = torch.softmax(q @ q.transpose(-2, -1), dim=-1)  # [1, 2, 256, 256]
        return attn @ q


KNOWN_MACS = (
    16 * 16 * 8 * 3 * 3 * 3  # conv: every output pixel x out channel x (in channels x kernel)
    + 256 * 8 * 4  # linear
    + 2 * 256 * 256 * 2  # q k^T per head
    + 2 * 256 * 256 * 2  # attn v per head
)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_flop_counter_counts_two_per_multiply_add(device: str) -> None:
    with torch.device(device):
        module = Known()
        x = torch.randn(1, 3, 16, 16)
    assert forward_flops(lambda: module(x)) == 2 * KNOWN_MACS


def test_paper_profile_diffsal_uses_mvit_and_the_paper_widths() -> None:
    paper = load_config("paper")
    assert paper.video_backbone("diffsal") == "mvit_v2_s"
    assert paper.video_backbone("hybrid") == paper.video_backbone("avrsp") == "s3d"
    assert paper.unet_channels("diffsal") == (96, 192, 384, 768)
    assert paper.unet_channels("hybrid") == paper.unet.channels == (64, 128, 192, 256)
    for name in ("small", "tiny"):  # unchanged: the S3D DiffSal
        cfg = load_config(name)
        assert cfg.video_backbone("diffsal") == "s3d" and cfg.unet_channels("diffsal") == cfg.unet.channels
    with torch.device("meta"):
        s3d_diffsal = build_model(paper.replace({"video.diffsal_backbone": "s3d"}), "diffsal")
        mvit_diffsal = build_model(paper, "diffsal")
    assert isinstance(s3d_diffsal.video_encoder, S3D) and isinstance(mvit_diffsal.video_encoder, MViTv2S)
    assert mvit_diffsal.unet is not None
    assert (
        mvit_diffsal.unet.cond_proj[3].in_channels == 768 and mvit_diffsal.unet.lateral[2].in_channels == 768
    )
    with pytest.raises(Exception, match="diffsal_backbone"):
        paper.replace({"video.diffsal_backbone": "resnet"})


def test_export_specs_follow_the_backbone() -> None:
    from avsal_deploy.export.components import component_specs

    paper = load_config("paper")
    specs = component_specs(paper, "diffsal")
    shapes = [t.shape for t in specs["video_encoder"].outputs]
    assert shapes == [s.as_tuple() for s in paper.video_scales("diffsal")]
    assert shapes[3] == (768, 8, 7, 12)
    unet_inputs = {t.name: t.shape for t in specs["unet_step"].inputs}
    assert unet_inputs["c0"] == (96, 8, 56, 96)


def test_info_reports_parameters_macs_and_flops_beside_the_paper(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--variant", "diffsal", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)["variants"]["diffsal"]
    assert rep["video_backbone"] == "mvit_v2_s"
    assert rep["inputs"]["frames"] == [None, 3, 16, 224, 384]
    assert rep["parameters"]["video_encoder"] == 34_231_488  # torchvision's 34,537,744 - head + stage norms
    for key, flops in rep["flops"].items():
        if key != "steps":
            assert rep["macs"][key] * 2 == flops
    assert (
        rep["macs"]["forward"]
        == rep["macs"]["video_encoder"] + rep["macs"]["audio_encoder"] + rep["macs"]["unet_step"]
    )
    assert rep["paper"]["parameters"] == 76.57e6 and rep["paper"]["flops_as_printed"] == 187.31e9
    # the MViTv2-S alone: 127.9 G multiply-adds on 16x224x384 (twice that in FLOPs exceeds the paper's total)
    assert 127e9 < rep["macs"]["video_encoder"] < 129e9
    assert main(["info", "--variant", "diffsal"]) == 0
    text = capsys.readouterr().out
    assert "MACs" in text and "FLOPs" in text and "76.57 M" in text and "187.31 G" in text


def test_stored_configs_without_the_new_fields_keep_their_architecture() -> None:
    paper = load_config("paper")
    stored = paper.to_dict()
    for dotted in LEGACY_DEFAULTS:
        section, name = dotted.split(".")
        del stored[section][name]
    old = Config.from_dict(stored)
    assert old.video.diffsal_backbone == "s3d" and old.unet_channels("diffsal") == old.unet.channels
    explicit = paper.replace(
        dict(LEGACY_DEFAULTS)
    )  # every field at the value a stored config lacking it means
    assert old.architecture_fingerprint() == explicit.architecture_fingerprint()
    assert old.architecture_fingerprint() != paper.architecture_fingerprint()
    # a complete dict (a new checkpoint) is taken as it is
    assert Config.from_dict(paper.to_dict()) == paper


def test_shipped_checkpoint_loads_and_predicts_as_its_export() -> None:
    from avsal_deploy import engine as engines
    from avsal_deploy.training.checkpoints import SHIPPED_CHECKPOINT, load_trained_model

    if not SHIPPED_CHECKPOINT.is_file():
        pytest.skip("shipped checkpoint not built")
    model, config, variant, _ = load_trained_model(SHIPPED_CHECKPOINT)  # strict, fingerprint checked
    stored = read_checkpoint_metadata(SHIPPED_CHECKPOINT)["config"]
    # retrained with today's architecture: its stored config names the per-frame ECA and the learned temporal
    # reduction, and it is the plain tiny profile of today
    assert stored["unet"]["attention"] == "eca" and stored["fusion"]["temporal_reduction"] == "conv"
    assert config == load_config("tiny")
    ort = engines.open(SHIPPED_CHECKPOINT.parent / "hybrid-synthetic", "onnxruntime")
    try:
        rng = np.random.default_rng(0)
        frames = rng.standard_normal((1, *config.frames_shape(variant))).astype(np.float32)
        audio = rng.standard_normal((1, *config.audio_input_shape(variant))).astype(np.float32)
        envelope = rng.random((1, *config.envelope_shape(variant))).astype(np.float32)
        noise = rng.standard_normal((1, *config.map_shape())).astype(np.float32)
        expected = ort.predict_window(frames, audio, 2, noise, envelope=envelope)
        with torch.no_grad():
            got = model(
                torch.from_numpy(frames),
                torch.from_numpy(audio),
                steps=2,
                noise=torch.from_numpy(noise),
                envelope=torch.from_numpy(envelope),
            ).numpy()
    finally:
        ort.close()
    np.testing.assert_allclose(got, np.asarray(expected), atol=1e-4)
