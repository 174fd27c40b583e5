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

Compared here: the converter (layout, detection, strictness), the decoders alone on the stored
features and AViNet's SoundNet; then the golden weights saved as the official script saves them
through ``avsal convert`` and the engines: torch and ONNX Runtime (``avsal export``)
``predict_window`` against the official maps (the S3D outputs recorded from the same call);
and the input mode through the real pipeline (frames of a video file, AViNet's audio buffers).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from media_utils import write_video
from PIL import Image

from avsal_deploy.config import family, family_config
from avsal_deploy.data.audio import soundnet_excerpt
from avsal_deploy.data.preprocess import preprocess_frames
from avsal_deploy.engine import open as open_engine
from avsal_deploy.errors import ConfigError, WeightsError
from avsal_deploy.models.build import checkpoint_config
from avsal_deploy.models.official import OfficialStages, build_stages, convert_state
from avsal_deploy.models.official import vinet as official_vinet
from tests.golden.parity import (
    convert_cli,
    export_cli,
    no_audio,
    predict_recorded,
    save_official,
    small_shape,
)
from tests.golden.weights import random_state, read_layout

GOLDEN = Path(__file__).parent / "golden"
TOL = 1e-4  # maps (in [0, 1]) and features: max abs difference


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


def _check_video(feats: tuple[torch.Tensor | np.ndarray, ...], g: dict[str, np.ndarray], batch: int) -> None:
    """Our S3D outputs against the official ones at the same batch size (the official batch-1 run
    is stored apart: CPU convolutions round differently at another batch size, by up to 2e-4 on
    these features of magnitude ~100)."""
    prefix = "video_" if batch == 2 else "video_b1_"
    for i, y in enumerate(feats):
        shape = tuple(int(s) for s in g[f"{prefix}v{i}_shape"])
        assert tuple(y.shape) == shape
        y = y.detach().numpy() if isinstance(y, torch.Tensor) else y
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
    assert official_vinet.detect(state) == variant
    if variant == "avinet":
        heads = {k: v for k, v in state.items() if "conv8" not in k}
        assert official_vinet.detect(heads) == "avinet"  # the unused heads are optional
    renamed = {k.replace("backbone.", "base."): v for k, v in state.items()}
    assert official_vinet.detect(renamed) is None
    grouped = dict(state)
    key = next(k for k in grouped if k.endswith("decoder.convtsp1.0.weight"))
    grouped[key] = torch.zeros(832, 32, 1, 3, 3)  # ViNet-S's grouped decoder: same names
    assert official_vinet.detect(grouped) is None


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
        WeightsError, match=r"1 misshapen key\(s\): decoder\.convtsp4\.8\.bias \[2\] \(expected \[1\]\)"
    ):
        convert_state(bad, "vinet")
    counters = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert official_vinet.detect(counters) == "vinet"  # files before PyTorch 0.4.1
    converted = convert_state(counters, "vinet").state
    assert int(converted["video_encoder.base1.0.bn_s.num_batches_tracked"]) == 0
    with pytest.raises(WeightsError, match=r"\(its layout is that of avinet\)"):
        convert_state(_official_state("avinet"), "vinet")
    transformer = dict(_official_state("avinet"))
    transformer["transformer.pos_encoder.pe"] = torch.zeros(32, 1, 336)  # use_transformer=True
    with pytest.raises(WeightsError, match="unknown key"):
        convert_state(transformer, "avinet")


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
def test_vinet_decoder_matches_official(batch: int) -> None:
    g, stages = _golden("vinet"), _stages("vinet")
    _, feats = _vinet_inputs()
    decoder_map = stages.decoder(*(f[:batch] for f in feats))  # type: ignore[misc]
    assert decoder_map.shape == (batch, 1, 64, 96)
    assert _max_diff(decoder_map[:, 0], g["decoder_map"][:batch]) < TOL


# --------------------------------------------------------------------------- AViNet parity
def _avinet_audio() -> torch.Tensor:
    g = _golden("avinet")
    wave = _normal((2, 1, 70560, 1), int(g["audio_seed"]), float(g["audio_scale"]))
    return torch.from_numpy(_checked(wave, g["audio_checksum"]))


@torch.no_grad()
def test_avinet_audio_encoder_and_decoder_match_official() -> None:
    """SoundNet on the official audio input, and the fusion + decoder on the stored features
    (batch 2); the decoder's map changes with the audio features (batch 1, silent)."""
    g, stages = _golden("avinet"), _stages("avinet")
    feat = stages.audio_encoder(_avinet_audio())  # type: ignore[misc]
    assert feat.shape == (2, 1024, 3, 1, 1)
    assert _max_diff(feat[..., 0], g["audio_feat"]) < TOL
    shapes = [(2, 192, 16, 56, 96), (2, 480, 16, 28, 48), (2, 832, 8, 14, 24), (2, 1024, 4, 7, 12)]
    seed = int(g["feats_seed"])
    feats = [
        _checked(_normal(s, seed + i, absolute=True), g["feats_checksum"][i]) for i, s in enumerate(shapes)
    ]
    audio = _checked(_normal((2, 1024, 3, 1), seed + 4, absolute=True), g["feats_audio_checksum"])
    args = [torch.from_numpy(f) for f in feats] + [torch.from_numpy(audio[..., None])]
    out = stages.decoder(*args)  # type: ignore[misc]
    assert out.shape == (2, 1, 224, 384)
    assert _max_diff(out[:, 0], g["decoder_map"]) < TOL
    silent = stages.decoder(*(a[:1] for a in args[:4]), torch.zeros_like(args[4][:1]))  # type: ignore[misc]
    assert _max_diff(silent[:, 0], g["decoder_map"][:1]) > 1e-2


# --------------------------------------------------------------------------- the engines
@pytest.fixture(scope="module")
def vinet_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The golden ViNet weights saved as the official script saves them (``torch.save`` of the
    state dict), converted by ``avsal convert --from vinet`` at 64 x 96."""
    d = tmp_path_factory.mktemp("vinet")
    source = save_official(_official_state("vinet"), d / "vinet.pt")
    return convert_cli(source, d / "vinet.safetensors", "vinet", *small_shape(64, 96))


@pytest.fixture(scope="module")
def vinet_export(vinet_checkpoint: Path) -> Path:
    return export_cli(vinet_checkpoint, vinet_checkpoint.parent / "export")


@pytest.fixture(scope="module")
def vinet_torch_maps(vinet_checkpoint: Path):  # type: ignore[no-untyped-def]
    """``batch -> the torch engine's maps``, computed and checked once per batch size (the torch
    test and the ONNX Runtime comparison share them, whichever runs first)."""
    return cache(lambda batch: _vinet_torch_window(vinet_checkpoint, batch))


def _vinet_torch_window(checkpoint: Path, batch: int) -> np.ndarray:
    """``predict_window`` of the torch engine on the golden frames: the S3D outputs (recorded from
    the same call) and the map against the official ones at the same batch size."""
    g = _golden("vinet")
    frames, _ = _vinet_inputs()
    with open_engine(checkpoint, "torch") as engine:
        assert engine.variant == "vinet" and engine.config.frames_shape("vinet") == (3, 32, 64, 96)
        maps, seen = predict_recorded(engine, frames[:batch].numpy(), no_audio(batch))
    _check_video(tuple(seen["video_encoder"][n] for n in official_vinet.VIDEO_OUTPUTS), g, batch)
    expected = g["map"] if batch == 2 else g["map_batch1"]
    assert maps.shape == (batch, 1, 64, 96)
    assert _max_diff(maps[:, 0], expected) < TOL
    assert expected.std() > 0.1  # the golden map carries signal
    return maps


@pytest.mark.parametrize("batch", [1, 2])
def test_vinet_torch_engine_gives_the_official_maps(vinet_torch_maps, batch: int) -> None:
    assert vinet_torch_maps(batch).shape == (batch, 1, 64, 96)


def test_vinet_onnxruntime_engine_gives_the_official_maps(vinet_export: Path, vinet_torch_maps) -> None:
    """``avsal export`` then ONNX Runtime at batch 1 and 2: the official maps, and the torch
    engine's, within 1e-4."""
    g = _golden("vinet")
    frames, _ = _vinet_inputs()
    with open_engine(vinet_export, "onnxruntime") as engine:
        for batch in (1, 2):
            maps = engine.predict_window(frames[:batch].numpy(), no_audio(batch), 0)
            expected = g["map"] if batch == 2 else g["map_batch1"]
            assert _max_diff(maps[:, 0], expected) < TOL, batch
            assert _max_diff(maps, vinet_torch_maps(batch)) < TOL, batch


def _official_vinet_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """``torch_transform`` of ``generate_result.py`` on a decoded RGB frame, as the official
    environment (torchvision 0.5, a Pillow of its time) computes it: ``Resize`` = Pillow's BILINEAR resize
    (Pillow up to 9 always resampled the width first, then the height, rounding to 8 bits after
    each pass), ``ToTensor`` (/ 255), ImageNet ``Normalize``; float32 [3, height, width]."""
    img = Image.fromarray(frame)
    img = img.resize((width, img.height), Image.Resampling.BILINEAR)
    img = img.resize((width, height), Image.Resampling.BILINEAR)
    x = np.asarray(img).transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    mean = np.asarray((0.485, 0.456, 0.406), np.float32).reshape(3, 1, 1)
    std = np.asarray((0.229, 0.224, 0.225), np.float32).reshape(3, 1, 1)
    return (x - mean) / std


def test_vinet_prediction_uses_the_official_input_mode(vinet_export: Path, tmp_path: Path) -> None:
    """A video through the real pipeline (decode, windower, engine) gives, for its computed frames,
    the engine's map of the window built here as ``generate_result.py`` builds it: each frame
    through the official transform, frames ``t-31 .. t`` for the map of frame t, and for t < 31
    the clip of frames ``t+31 .. t`` (the first clip flipped in time)."""
    from avsal_deploy.data.source import MediaSource
    from avsal_deploy.pipeline import Predictor, normalize_map

    video = write_video(tmp_path / "clip.mp4", n=40, fps=25, size=(72, 80))  # H shrinks, W grows
    source = MediaSource(video)
    try:
        official = [_official_vinet_frame(f, 64, 96) for f, _, _ in source.media()]
    finally:
        source.close()
    with open_engine(vinet_export, "onnxruntime") as engine:
        prediction = Predictor(engine, stride=64).predict(video)
        assert prediction.targets == [0, 39]
        for target, indices in ((0, range(31, -1, -1)), (39, range(8, 40))):
            clip = np.stack([official[i] for i in indices], axis=1)[None]
            expected = normalize_map(engine.predict_window(clip, no_audio(1), 0)[0, 0])
            assert _max_diff(prediction.frame_maps[target], expected) < TOL, target
            assert expected.std() > 0.05


def test_avinet_windows_through_the_pipeline_carry_the_official_audio(tmp_path: Path) -> None:
    """The decoder and the stream windower (what ``avsal predict``, scoring and ``avsal_stream``
    run) give each AViNet window the buffer the official loader gives it: a 70-frame video at
    25 fps whose soundtrack is the golden 16-bit wav at 22,050 Hz (PCM in Matroska: decoded
    exactly); the windows of frames 31, 40 and 69, and the start-up windows of frames 0 and 9
    (the official flipped buffers of frames 31..0 and 40..9), equal ``get_audio_feature``'s bit
    for bit. (The frames are kept small: the audio does not depend on them.)"""
    from avsal_deploy.data.source import MediaSource
    from avsal_deploy.data.stream import StreamWindower

    g = np.load(GOLDEN / "vinet_inputs.npz")
    assert float(g["audio0_fps"]) == 25.0
    wav = g["audio0_wav"].astype(np.float32) / np.float32(32768.0)
    video = write_video(
        tmp_path / "av.mkv", n=70, fps=25, size=(64, 96), audio="pcm_s16le", audio_rate=22050, samples=wav
    )
    config = family_config("avinet", {"video.height": 64, "video.width": 96})
    source = MediaSource(video)
    audio: dict[int, np.ndarray] = {}
    try:
        windower = StreamWindower(config, "avinet", fps=source.fps, audio_rate=source.audio_rate)
        for frame, ts, chunk in source.media():
            audio.update({w.window.target: w.audio for w in windower.push(frame, chunk, ts)})
    finally:
        source.close()
    audio.update({w.window.target: w.audio for w in windower.flush()})
    assert sorted(audio) == list(range(70))
    cases = {31: "window31", 40: "window40", 69: "window69", 0: "window31_reversed", 9: "window40_reversed"}
    for target, key in cases.items():
        assert audio[target].shape == (1, 70560, 1)
        assert np.array_equal(audio[target].reshape(-1), g[f"audio0_{key}"]), target


@pytest.mark.slow
def test_avinet_through_avsal_convert_and_the_engines(tmp_path: Path) -> None:
    """The golden AViNet weights saved as the official script saves them, SoundNet's unused conv8
    heads included, through ``avsal convert --from avinet`` (224 x 384, the only size its fusion
    takes; the dropped heads recorded in the checkpoint); ``predict_window(frames, audio
    [B,1,70560,1], steps=0)``: the torch engine at batch 1 (its S3D and SoundNet outputs recorded
    from the same call) and ONNX Runtime (``avsal export``) at batch 1 and 2, the official maps
    within 1e-4."""
    g = _golden("avinet")
    source = save_official(_official_state("avinet"), tmp_path / "avinet.pt")
    checkpoint = convert_cli(source, tmp_path / "avinet.safetensors", "avinet")
    _, variant, meta = checkpoint_config(checkpoint)
    assert variant == "avinet"
    assert sorted(meta["converted_from"]["dropped_keys"]) == sorted(official_vinet.DROPPED["avinet"])
    frames = _checked(_normal((2, 3, 32, 224, 384), int(g["frames_seed"])), g["frames_checksum"])
    audio = _avinet_audio().numpy()
    with open_engine(checkpoint, "torch") as engine:
        torch_map, seen = predict_recorded(engine, frames[:1], audio[:1])
    _check_video(tuple(seen["video_encoder"][n] for n in official_vinet.VIDEO_OUTPUTS), g, 1)
    assert _max_diff(seen["audio_encoder"]["audio_feat"][..., 0], g["audio_feat"][:1]) < TOL
    assert _max_diff(torch_map[:, 0], g["map_batch1"]) < TOL
    assert 0.2 < g["map"].std() and 0.05 < ((g["map"] > 1e-3) & (g["map"] < 1 - 1e-3)).mean()
    export = export_cli(checkpoint, tmp_path / "export")
    with open_engine(export, "onnxruntime") as engine:
        for batch in (1, 2):
            maps = engine.predict_window(frames[:batch], audio[:batch], 0)
            expected = g["map"] if batch == 2 else g["map_batch1"]
            assert _max_diff(maps[:, 0], expected) < TOL, batch
        assert _max_diff(maps[:1], torch_map) < TOL


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
