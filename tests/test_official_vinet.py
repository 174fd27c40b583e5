"""Official ViNet and AViNet (samyak0210/ViNet) reproduced by avsal_deploy.models.official.vinet.

Parity against golden files made with the OFFICIAL modules, without the official code here.

How ``tests/golden/vinet.npz`` and ``tests/golden/avinet.npz`` were made
-----------------------------------------------------------------------
Official code: github.com/samyak0210/ViNet at commit 2a52666 (``model.py``, ``model_utils.py``),
extracted outside this repository, with a stub module ``block`` (``fusions = None``: ``model.py``
imports ``block.fusions`` and no class uses it), torch 2.13.0 (CPU), numpy 1.26, 2 threads.
The generator script (outside the repository) does, per family:

1. build the official module as the released inference script does:
   ``VideoSaliencyModel(transformer_in_channel=32, nhead=4, use_upsample=True, num_hier=3,
   num_clips=32)`` (``generate_result.py``) for ``vinet``;
   ``VideoAudioSaliencyModel(transformer_in_channel=512, nhead=4, use_upsample=True, num_hier=3,
   num_clips=32)`` (``generate_result_audio_visual.py --use_sound True``; ``use_transformer``
   at its default False) for ``avinet``, its constructor given a SoundNet state dict to load;
2. ``layout = tests/golden/weights.py:layout_json(model.state_dict())`` (stored as ``layout``),
   ``random_state(read_layout(layout), seed)`` (seed 0 for vinet, 1 for avinet; defaults
   ``gain=2``, no ``transposed``/``not_norm`` names) loaded strictly; ``eval()``;
3. inputs from :func:`_normal` below (``np.random.default_rng(seed).standard_normal(shape,
   dtype=float32) * scale``, absolute values for decoder features); the files store their seeds
   and checksums (sum, sum of |x|, first values), not the inputs:

   - vinet: frames [2,3,32,64,96] (seed 100); decoder features of the S3D output shapes at
     64x96 (v0..v3 = official y3..y0, seeds 101..104, absolute values);
   - avinet: audio [2,1,70560,1] (seed 201, scale 0.1: larger inputs saturate the random-weight
     sigmoid map), frames [2,3,32,224,384] (seed 200), decoder features of the 224x384 S3D
     shapes (seeds 202..205) and audio features [2,1024,3,1] (seed 206, absolute values);

4. official outputs under ``torch.no_grad()``: the backbone's four outputs (stored as
   ``video_v{i}_sub``, 8192 elements at ``np.linspace(0, n-1, 8192)`` of the flattened tensor,
   and ``video_v{i}_chmean``, the per-(batch, channel) means), SoundNet's output (``audio_feat``,
   avinet), the decoder alone on the features (``decoder_map``; for avinet the official forward
   after the encoders: ``maxpool``, ``bilinear``, ``view(B,1024,4,7,12)``, decoder), the whole
   model at batch 2 (``map``) and at batch 1 on the first window (``map_batch1``).

How ``tests/golden/vinet_inputs.npz`` was made (the official input computation)
------------------------------------------------------------------------------
The official loader functions of ``generate_result_audio_visual.py`` (the same code as
``dataloader.py``'s): ``make_dataset`` + ``get_audio_feature`` on synthetic 16-bit mono wavs at
22,050 Hz (two clips of 70 frames at fps "25" and "29.97", as a fold list gives them), through a
stub of torchaudio 0.4's ``load(path, normalization=False)`` (sox's int32 samples: ``s << 16``);
the windows of ``validate()`` for i = 31, 40, 69 (frames i-31..i), and for i < 62 the flipped
buffer ``torch.flip(audio, [2])`` that predicts frame i-31 (``*_reversed``). ``torch_transform``
(``Resize((224, 384))``, ``ToTensor``, ImageNet ``Normalize``) with the real torchvision 0.5.0
transforms (the pure-Python module of its wheel) and Pillow 13, on two synthetic PNG frames
(288x512: shrinking; 120x200: enlarging); the file stores each official tensor as its uint8
levels ``round((t * std + mean) * 255)``, from which ``(levels / 255 - mean) / std`` rebuilds the
official float32 tensor bit for bit (the generator asserts it).
"""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from avsal_deploy.config import family, family_config
from avsal_deploy.data.audio import soundnet_excerpt
from avsal_deploy.data.preprocess import preprocess_frames
from avsal_deploy.errors import ConfigError, WeightsError
from avsal_deploy.models.official import OfficialStages, build_stages, convert_state
from avsal_deploy.models.official import vinet as official_vinet
from tests.golden.weights import random_state, read_layout

GOLDEN = Path(__file__).parent / "golden"
TOL = 1e-4  # maps (in [0, 1]) and features: max abs difference
# ONNX Runtime's convolutions round differently from torch's: on the random-weight S3D features
# (magnitude up to ~180) they differ by up to ~2e-4, i.e. 1e-6 of the magnitude; features pass
# within this share of their largest magnitude (a wrong op is off by a share of order 1).
FEATURE_RTOL = 1e-5


def _normal(shape: tuple[int, ...], seed: int, scale: float = 1.0, absolute: bool = False) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) * np.float32(scale)
    return np.abs(x) if absolute else x


def _checksum(x: np.ndarray) -> np.ndarray:
    return np.array([x.sum(dtype=np.float64), np.abs(x).sum(dtype=np.float64), *x.ravel()[:6]], np.float64)


def _checked(x: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """``x`` after checking it is the input the golden file was made with (same random stream)."""
    np.testing.assert_allclose(_checksum(x), expected, rtol=1e-6, err_msg="input stream changed")
    return x


@cache
def _golden(variant: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / f"{variant}.npz") as data:
        return {k: data[k] for k in data.files}


@cache
def _official_state(variant: str) -> dict[str, torch.Tensor]:
    g = _golden(variant)
    state = random_state(read_layout(str(g["layout"])), int(g["seed"]))
    return {k: torch.from_numpy(v) for k, v in state.items()}


@cache
def _stages(variant: str) -> OfficialStages:
    stages = build_stages(family_config(variant), variant)
    converted = convert_state(_official_state(variant), variant)
    modules = {"video_encoder": stages.video_encoder, "fusion": stages.decoder}
    if stages.audio_encoder is not None:
        modules["audio_encoder"] = stages.audio_encoder
    for stage, module in modules.items():
        prefix = f"{stage}."
        part = {k[len(prefix) :]: v for k, v in converted.state.items() if k.startswith(prefix)}
        module.load_state_dict(part, strict=True)
        module.eval()
    return stages


def _max_diff(a: np.ndarray | torch.Tensor, b: np.ndarray) -> float:
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else a
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)))


def _check_video(feats: tuple[torch.Tensor, ...], g: dict[str, np.ndarray], batch: int) -> None:
    """Our S3D outputs against the official ones at the same batch size (the official batch-1 run
    is stored apart: CPU convolutions round differently at another batch size, by up to 2e-4 on
    these features of magnitude ~100)."""
    prefix = "video_" if batch == 2 else "video_b1_"
    for i, y in enumerate(feats):
        shape = tuple(int(s) for s in g[f"{prefix}v{i}_shape"])
        assert tuple(y.shape) == shape
        y = y.detach().numpy()
        index = np.linspace(0, y.size - 1, g[f"{prefix}v{i}_sub"].size).astype(np.int64)
        assert _max_diff(y.ravel()[index], g[f"{prefix}v{i}_sub"]) < TOL, f"v{i}"
        chmean = y.reshape(batch, y.shape[1], -1).mean(-1)
        assert _max_diff(chmean, g[f"{prefix}v{i}_chmean"]) < TOL, f"v{i} channel means"


# --------------------------------------------------------------------------- layout, convert
@pytest.mark.parametrize("variant", ["vinet", "avinet"])
def test_official_layout_is_the_golden_files(variant: str) -> None:
    """The converter knows the official layout exactly: names, shapes, dtypes and order."""
    assert official_vinet.official_layout(variant) == read_layout(str(_golden(variant)["layout"]))


@pytest.mark.parametrize("variant", ["vinet", "avinet"])
def test_detect_variant(variant: str) -> None:
    state = _official_state(variant)
    assert official_vinet.detect_variant(state) == variant
    if variant == "avinet":
        heads = {k: v for k, v in state.items() if "conv8" not in k}
        assert official_vinet.detect_variant(heads) == "avinet"  # the unused heads are optional
    renamed = {k.replace("backbone.", "base."): v for k, v in state.items()}
    assert official_vinet.detect_variant(renamed) is None
    grouped = dict(state)
    key = next(k for k in grouped if k.endswith("decoder.convtsp1.0.weight"))
    grouped[key] = torch.zeros(832, 32, 1, 3, 3)  # ViNet-S's grouped decoder: same names
    assert official_vinet.detect_variant(grouped) is None


def test_convert_drops_the_unused_soundnet_heads() -> None:
    converted = convert_state(_official_state("avinet"), "avinet")
    assert sorted(converted.dropped) == sorted(official_vinet.DROPPED["avinet"])
    assert not any("conv8" in k for k in converted.state)
    assert {k.split(".")[0] for k in converted.state} == {"video_encoder", "audio_encoder", "fusion"}
    assert convert_state(_official_state("vinet"), "vinet").dropped == []


def test_convert_refuses_unknown_missing_and_misshapen_keys() -> None:
    state = dict(_official_state("vinet"))
    bad = dict(state)
    bad["decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"1 unknown key\(s\): decoder\.extra\.weight") as err:
        convert_state(bad, "vinet")
    assert "\n" not in str(err.value)
    bad = {k: v for k, v in state.items() if not k.startswith("decoder.")}
    with pytest.raises(
        WeightsError, match=r"8 missing key\(s\): decoder\.convtsp1\.0\.weight, .* \(\+3 more\)"
    ):
        convert_state(bad, "vinet")
    bad = dict(state)
    bad["decoder.convtsp4.8.bias"] = torch.zeros(2)
    with pytest.raises(
        WeightsError, match=r"1 misshapen: decoder\.convtsp4\.8\.bias \[2\] \(expected \[1\]\)"
    ):
        convert_state(bad, "vinet")
    counters = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert official_vinet.detect_variant(counters) == "vinet"  # files before PyTorch 0.4.1
    converted = convert_state(counters, "vinet").state
    assert int(converted["video_encoder.base1.0.bn_s.num_batches_tracked"]) == 0
    with pytest.raises(WeightsError, match=r"\(its layout is that of avinet\)"):
        convert_state(_official_state("avinet"), "vinet")
    transformer = dict(_official_state("avinet"))
    transformer["transformer.pos_encoder.pe"] = torch.zeros(32, 1, 336)  # use_transformer=True
    with pytest.raises(WeightsError, match="unknown key"):
        convert_state(transformer, "avinet")


def test_read_official_state(tmp_path: Path) -> None:
    state = {k: v for k, v in list(_official_state("vinet").items())[:4]}
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    for path in (plain, wrapped):
        got = official_vinet.read_official_state(path)
        assert list(got) == list(state)
        assert all(torch.equal(got[k], state[k]) for k in state)

    def fails(path: Path, pattern: str) -> None:
        with pytest.raises(WeightsError, match=pattern) as err:
            official_vinet.read_official_state(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)

    fails(tmp_path / "absent.pt", "no such file")
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    fails(tmp_path / "text.pt", "not a readable PyTorch state dict file")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(plain.read_bytes()[: plain.stat().st_size // 2])
    fails(truncated, "not a readable PyTorch state dict file")
    obj = tmp_path / "object.pt"
    torch.save({"w": torch.zeros(1), "optimiser": io.BytesIO(b"x")}, obj)  # weights_only refuses it
    fails(obj, "not a readable PyTorch state dict file")
    scalars = tmp_path / "scalars.pt"
    torch.save({"w": torch.zeros(1), "epoch": 3}, scalars)
    fails(scalars, "entry 'epoch' is a int, not a tensor")
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    fails(listed, "holds a list, not a state dict of tensors")


def test_build_refuses_sizes_the_official_network_does_not_take() -> None:
    with pytest.raises(ConfigError, match="multiples of 32"):
        build_stages(family_config("vinet").replace({"video.height": 208}), "vinet")
    with pytest.raises(ConfigError, match="exactly 32 frames"):
        build_stages(family_config("vinet").replace({"video.clip_len": 16}), "vinet")
    with pytest.raises(ConfigError, match="224x384 only"):
        build_stages(family_config("avinet").replace({"video.height": 192}), "avinet")


# --------------------------------------------------------------------------- ViNet parity
def _vinet_inputs() -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = _golden("vinet")
    hw = tuple(int(s) for s in g["frames_hw"])
    frames = _checked(_normal((2, 3, 32, *hw), int(g["frames_seed"])), g["frames_checksum"])
    shapes = [tuple(int(s) for s in g[f"video_v{i}_shape"]) for i in range(4)]
    feats = [
        _checked(_normal(s, int(g["feats_seed"]) + i, absolute=True), g["feats_checksum"][i])
        for i, s in enumerate(shapes)
    ]
    return torch.from_numpy(frames), [torch.from_numpy(f) for f in feats]


@torch.no_grad()
@pytest.mark.parametrize("batch", [1, 2])
def test_vinet_matches_official(batch: int) -> None:
    g, stages = _golden("vinet"), _stages("vinet")
    frames, feats = _vinet_inputs()
    video = stages.video_encoder(frames[:batch])
    _check_video(video, g, batch)
    decoder_map = stages.decoder(*(f[:batch] for f in feats))  # type: ignore[misc]
    assert decoder_map.shape == (batch, 1, 64, 96)
    assert _max_diff(decoder_map[:, 0], g["decoder_map"][:batch]) < TOL
    out = stages.decoder(*video)  # type: ignore[misc]
    expected = g["map"] if batch == 2 else g["map_batch1"]
    assert _max_diff(out[:, 0], expected) < TOL
    assert expected.std() > 0.1  # the golden map carries signal


# --------------------------------------------------------------------------- AViNet parity
def _avinet_audio() -> torch.Tensor:
    g = _golden("avinet")
    wave = _normal((2, 1, 70560, 1), int(g["audio_seed"]), float(g["audio_scale"]))
    return torch.from_numpy(_checked(wave, g["audio_checksum"]))


@torch.no_grad()
@pytest.mark.parametrize("batch", [1, 2])
def test_avinet_audio_encoder_and_decoder_match_official(batch: int) -> None:
    g, stages = _golden("avinet"), _stages("avinet")
    feat = stages.audio_encoder(_avinet_audio()[:batch])  # type: ignore[misc]
    assert feat.shape == (batch, 1024, 3, 1, 1)
    assert _max_diff(feat[..., 0], g["audio_feat"][:batch]) < TOL
    shapes = [(2, 192, 16, 56, 96), (2, 480, 16, 28, 48), (2, 832, 8, 14, 24), (2, 1024, 4, 7, 12)]
    seed = int(g["feats_seed"])
    feats = [
        _checked(_normal(s, seed + i, absolute=True), g["feats_checksum"][i]) for i, s in enumerate(shapes)
    ]
    audio = _checked(_normal((2, 1024, 3, 1), seed + 4, absolute=True), g["feats_audio_checksum"])
    args = [torch.from_numpy(f[:batch]) for f in feats] + [torch.from_numpy(audio[:batch, ..., None])]
    out = stages.decoder(*args)  # type: ignore[misc]
    assert out.shape == (batch, 1, 224, 384)
    assert _max_diff(out[:, 0], g["decoder_map"][:batch]) < TOL


@pytest.mark.slow
@torch.no_grad()
def test_avinet_end_to_end_matches_official() -> None:
    g, stages = _golden("avinet"), _stages("avinet")
    frames = torch.from_numpy(
        _checked(_normal((2, 3, 32, 224, 384), int(g["frames_seed"])), g["frames_checksum"])
    )
    audio = _avinet_audio()
    for batch in (2, 1):
        video = stages.video_encoder(frames[:batch])
        _check_video(video, g, batch)
        out = stages.decoder(*video, stages.audio_encoder(audio[:batch]))  # type: ignore[misc]
        expected = g["map"] if batch == 2 else g["map_batch1"]
        assert _max_diff(out[:, 0], expected) < TOL
    assert 0.2 < g["map"].std() and 0.05 < ((g["map"] > 1e-3) & (g["map"] < 1 - 1e-3)).mean()
    silent = stages.decoder(*video, stages.audio_encoder(torch.zeros_like(audio[:1])))  # type: ignore[misc]
    assert _max_diff(silent, out.numpy()) > 1e-2  # the audio reaches the map


# --------------------------------------------------------------------------- ONNX
def _export_and_run(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path) -> Any:
    """Export ``module`` (dynamo, example batch 2, dynamic batch) as avsal's exporter does (opset 18,
    3-D convolutions folded to 2-D), audit its ops for TensorRT and compare ONNX Runtime with torch
    at batch 1 and 2; returns the session as a function of numpy inputs."""
    ort = pytest.importorskip("onnxruntime")
    from avsal_deploy.export.graph import fold_conv3d
    from avsal_deploy.export.onnx import OPSET, audit_tensorrt_ops

    names = [f"in{i}" for i in range(len(args))]
    batch = torch.export.Dim("batch", min=1, max=8)
    with torch.no_grad():
        program = torch.onnx.export(
            module.eval(),
            args,
            dynamo=True,
            input_names=names,
            dynamic_shapes=[{0: batch}] * len(args),
            opset_version=OPSET,
            optimize=True,
            verbose=False,
        )
    proto, _ = fold_conv3d(program.model_proto)
    assert not audit_tensorrt_ops(proto)
    path.write_bytes(proto.SerializeToString())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for b in (1, 2):
        with torch.no_grad():
            expected = module(*(a[:b] for a in args))
        expected = expected if isinstance(expected, tuple | list) else (expected,)
        got = session.run(None, {n: a[:b].numpy() for n, a in zip(names, args, strict=True)})
        assert len(got) == len(expected)
        for e, o in zip(expected, got, strict=True):
            bound = max(TOL, FEATURE_RTOL * float(e.abs().max()))
            assert _max_diff(o, e.numpy()) < bound, (path.name, b)
    return lambda *xs: session.run(None, dict(zip(names, xs, strict=True)))


@pytest.mark.slow
def test_vinet_stages_export_to_onnx(tmp_path: Path) -> None:
    stages = _stages("vinet")
    frames, feats = _vinet_inputs()
    video = _export_and_run(stages.video_encoder, (frames,), tmp_path / "video_encoder.onnx")
    decoder = _export_and_run(stages.decoder, tuple(feats), tmp_path / "fusion.onnx")  # type: ignore[arg-type]
    g = _golden("vinet")
    for batch, expected in ((2, g["map"]), (1, g["map_batch1"])):  # the maps through ONNX Runtime alone
        assert _max_diff(decoder(*video(frames[:batch].numpy()))[0][:, 0], expected) < TOL


@pytest.mark.slow
def test_avinet_stages_export_to_onnx(tmp_path: Path) -> None:
    stages = _stages("avinet")
    g = _golden("avinet")
    _export_and_run(stages.audio_encoder, (_avinet_audio(),), tmp_path / "audio_encoder.onnx")  # type: ignore[arg-type]
    shapes = [(2, 192, 16, 56, 96), (2, 480, 16, 28, 48), (2, 832, 8, 14, 24), (2, 1024, 4, 7, 12)]
    seed = int(g["feats_seed"])
    feats = [torch.from_numpy(_normal(s, seed + i, absolute=True)) for i, s in enumerate(shapes)]
    audio = torch.from_numpy(_normal((2, 1024, 3, 1), seed + 4, absolute=True)[..., None])
    _export_and_run(stages.decoder, (*feats, audio), tmp_path / "fusion.onnx")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- official inputs
def test_input_modes_are_the_official_loaders() -> None:
    for variant in ("vinet", "avinet"):
        c = family_config(variant)
        assert (c.clip_len(variant), c.video.height, c.video.width) == (32, 224, 384)
        assert c.video.mean == (0.485, 0.456, 0.406) and c.video.std == (0.229, 0.224, 0.225)
        assert c.video.resize == "pil" and c.window.mode == "causal"
    c = family_config("avinet")
    assert c.audio_input_shape("avinet") == (1, 70560, 1) and c.audio.soundnet_framing == "vinet"
    assert family("vinet").audio == "none" and c.audio_input_shape("vinet") == (0,)


@pytest.mark.parametrize("framing", ["vinet", "avsal"])
def test_avinet_audio_input_equals_the_official_loader(framing: str) -> None:
    """``audio.soundnet_framing="vinet"`` reproduces ``get_audio_feature`` bit for bit, forward and
    time-reversed windows; ours ("avsal") moves some by a sample (a reversed window's odd-length
    excerpt sits one sample off-centre, boundaries round differently at 25 fps)."""
    g = np.load(GOLDEN / "vinet_inputs.npz")
    config = family_config("avinet").replace({"audio.soundnet_framing": framing})
    worst = 0.0
    for c in (0, 1):
        wave = g[f"audio{c}_wav"].astype(np.float32) / np.float32(32768.0)  # decoders' float PCM
        fps = float(g[f"audio{c}_fps"])
        for i in (31, 40, 69):
            for reverse in (False, True):
                key = f"audio{c}_window{i}" + ("_reversed" if reverse else "")
                if key not in g.files:
                    continue
                frames = list(range(i, i - 32, -1)) if reverse else list(range(i - 31, i + 1))
                ours = soundnet_excerpt(wave, 22050, frames, fps, config)
                assert ours.shape == (1, 70560, 1)
                worst = max(worst, _max_diff(ours.reshape(-1), g[key]))
    if framing == "vinet":
        assert worst == 0.0
    else:
        assert worst > 1.0


@pytest.mark.parametrize("resize", ["pil", "antialias"])
def test_vinet_frames_equal_the_official_transform(resize: str) -> None:
    g = np.load(GOLDEN / "vinet_inputs.npz")
    config = family_config("vinet").replace({"video.resize": resize})
    mean = np.asarray(config.video.mean, np.float32)[:, None, None]
    std = np.asarray(config.video.std, np.float32)[:, None, None]
    for j in (0, 1):
        official = (g[f"frame{j}_levels"].astype(np.float32) / np.float32(255.0) - mean) / std
        ours = preprocess_frames(g[f"frame{j}"][None], config)[0]
        if resize == "pil":
            assert _max_diff(ours, official) == 0.0
        else:  # ours: no uint8 rounding, another filter precision: about one grey level
            assert 0.0 < _max_diff(ours, official) < 1.5 / 255 / 0.224
