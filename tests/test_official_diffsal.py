"""The official DiffSal network (``diffsal-official``, ``diffsal-official-visual``) against golden
outputs of the released code.

Golden files ``tests/golden/diffsal-official.npz`` and ``diffsal-official-visual.npz`` were made
with the released code, github.com/junwenxiong/diff_sal at commit c9b8070, outside this
repository: a venv with torch 2.13.0 (CPU), numpy 1.26, einops 0.8, pyyaml, and tiny stand-ins
for what the model files import but do not use at inference (mmcv's Registry/get_logger,
timm's trunc_normal_/DropPath/to_2tuple, cv2, torchaudio, torchvision). The generator:

1. builds ``VideoSaliencyModel`` from ``cfgs/audio_visual.py`` (resp. ``cfgs/visual.py``) through
   the registry exactly as ``model.py`` does, with ``visual_net.pretrained`` removed,
   ``audio_net.pretrained=False`` and ``decoder_net.img_size=(128, 192)``; eval mode;
2. takes its ``state_dict()`` layout (names without ``module.``, shapes, dtypes: the ``layout``
   entry) and loads ``tests/golden/weights.py`` ``random_state(layout, seed)`` strictly (seed 11
   for the audio-visual file, 12 for the visual-only one; default gain 2, nothing transposed);
3. draws the inputs with ``np.random.default_rng(20240607)`` in this order, all standard normal
   float32: frames [2,3,16,128,192], audio [2,1,9,64,96], noise x_T [2,1,128,192], x_t
   [2,1,128,192], UNet conditions [2,768,8,4,6], [2,384,8,8,12], [2,192,8,16,24],
   [2,96,8,32,48] and the audio condition [2,512,9,4,6] (``frames_checksum`` guards the stream);
   t = (500, 120) for the UNet step;
4. records ``visual_net(frames)`` (``mvit_i``, every k-th value of the flat tensor; coarse first),
   ``forward_vggish(audio)[0]`` (``audio``, idem), ``decoder_net(x_t, t, conditions, audio
   condition)`` at batch 2 and at batch 1 (the first sample; ``unet_b*``), and the released
   sampler end to end: ``DiffusionTrainer.sample_image`` / ``sample_ddim`` with
   ``__init__``'s schedule, taken unchanged from ``diffusion_trainer.py`` (by its AST), with
   ``cfgs/diffusion.yml`` and ``sampling.timesteps`` = 1 and 4, from the noise, then
   ``inverse_data_transform`` (clamp to [0, 1]) and ``util/utils.py normalize_data`` before its
   uint8 cast (``e2e{steps}_b{batch}``; the clamped maps and the uint8 maps too);
5. for the visual-only file, the sampler again from another noise (``visual_noise_check``: the
   largest difference, 0).

The frame size 128x192 (not 64x96) is the smallest at which every attention of the UNet has more
than one key (6 per stage), so the audio keys and the noise slot actually act on the output.
"""

from __future__ import annotations

import logging
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

from avsal_deploy.config import family_config
from avsal_deploy.diffusion import DDIMScheduler, ddim_sample, normalize_maps
from avsal_deploy.errors import WeightsError
from avsal_deploy.models.official import diffsal as ds
from tests.golden.weights import random_state, read_layout

GOLDEN = Path(__file__).parent / "golden"
# resampy 0.4.2 resample(x, 44100, 16000)[[0, 1, 100, 361]] and (x, 16000, 22050)[[0, 1, 700, 1377]]
# for x = sin(0.05 n) + 0.5 cos(0.31 n), n < 1000 (test_resampy_kaiser_best_reimplementation)
RESAMPY_DOWN = [0.34704121353529116, 0.509628047684366, 0.5306240590800002, -0.07449824821769142]
RESAMPY_UP = [0.4803773931536547, 0.5743068928811738, 0.7252304206628134, -0.3556171965818741]
FAMILIES = ("diffsal-official", "diffsal-official-visual")
H, W, HA, WA = 128, 192, 64, 96
TOL = 1e-4


@cache
def golden(fam: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / f"{fam}.npz") as f:
        return {k: f[k] for k in f.files}


def official_state(fam: str) -> dict[str, torch.Tensor]:
    g = golden(fam)
    return {
        k: torch.from_numpy(v) for k, v in random_state(read_layout(str(g["layout"])), int(g["seed"])).items()
    }


def small_config(fam: str, h: int = H, w: int = W):
    return family_config(
        fam,
        {
            "video.height": h,
            "video.width": w,
            "audio.vggish_slice_height": h // 2,
            "audio.vggish_slice_width": w // 2,
        },
    )


def load_stages(stages: ds.OfficialStages, state: dict[str, torch.Tensor]) -> ds.OfficialStages:
    for name in ("video_encoder", "audio_encoder", "unet"):
        module = getattr(stages, name)
        if module is not None:
            prefix = name + "."
            module.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    return stages


@cache
def converted(fam: str) -> ds.Converted:
    return ds.convert(official_state(fam), fam)


@cache
def stages(fam: str) -> ds.OfficialStages:
    return load_stages(ds.build(small_config(fam), fam), converted(fam).state)


@cache
def inputs(fam: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(int(golden(fam)["input_seed"]))
    out = {
        "frames": rng.standard_normal((2, 3, 16, H, W)).astype(np.float32),
        "audio": rng.standard_normal((2, 1, 9, HA, WA)).astype(np.float32),
        "noise": rng.standard_normal((2, 1, H, W)).astype(np.float32),
        "x_t": rng.standard_normal((2, 1, H, W)).astype(np.float32),
    }
    for i, (c, s) in enumerate(((768, 32), (384, 16), (192, 8), (96, 4))):
        out[f"cond{i}"] = rng.standard_normal((2, c, 8, H // s, W // s)).astype(np.float32)
    out["audio_cond"] = rng.standard_normal((2, 512, 9, HA // 16, WA // 16)).astype(np.float32)
    checksum = golden(fam)["frames_checksum"]
    assert out["frames"].sum(dtype=np.float64) == pytest.approx(checksum[0], abs=1e-6)
    return out


@cache
def encoded(fam: str, batch: int) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Our MViT's four stages (fine first) and our audio features, at ``batch``."""
    st = stages(fam)
    x = inputs(fam)
    with torch.no_grad():
        vid = [v.numpy() for v in st.video_encoder.stage_outputs(torch.from_numpy(x["frames"][:batch]))]
        aud = None
        if st.audio_encoder is not None:
            aud = st.audio_encoder(torch.from_numpy(x["audio"][:batch])).numpy()
    return vid, aud


def subsampled_diff(ours: np.ndarray, fam: str, name: str) -> float:
    g = golden(fam)
    assert tuple(ours.shape) == tuple(g[f"{name}_shape"])
    return float(np.abs(ours.reshape(-1)[:: int(g[f"{name}_stride"])] - g[f"{name}_sub"]).max())


# ----------------------------------------------------------------------------- conversion
@pytest.mark.parametrize("fam", FAMILIES)
def test_checkpoint_layout_converts_key_for_key(fam: str) -> None:
    layout = read_layout(str(golden(fam)["layout"]))
    prefixes: dict[str, int] = {}
    for name, _, _ in layout:
        prefixes[name.split(".")[0]] = prefixes.get(name.split(".")[0], 0) + 1
    av = fam == "diffsal-official"
    want = {"visual_net": 401, "decoder_net": 215}
    if av:
        want.update({"audio_net": 18, "spatiotemp_net": 20, "fc": 4})
    assert prefixes == want
    assert ds.detect_variant({name: None for name, _, _ in layout}) == fam
    conv = converted(fam)
    ours = ds._stage_shapes(fam)
    assert set(conv.state) == set(ours)
    dropped_prefixes = sorted({".".join(k.split(".")[:2]) for k in conv.dropped})
    if av:
        assert dropped_prefixes == [
            "audio_net.embeddings",
            "fc.0",
            "fc.2",
            "spatiotemp_net.pos_embedding",
        ] + ["spatiotemp_net.to_patch_embedding"]
        assert len(conv.dropped) == 6 + 4 + 1 + 6
    else:
        assert len(conv.dropped) == 8 and all(".align_conv." in k for k in conv.dropped)
    assert len(conv.state) + len(conv.dropped) == len(layout)


def test_convert_refuses_missing_unknown_and_misshapen_keys() -> None:
    fam = "diffsal-official-visual"
    state = official_state(fam)
    key = "decoder_net.invpt_decoder.mt_proj.0.weight"
    missing = {k: v for k, v in state.items() if k != key}
    with pytest.raises(WeightsError, match=r"missing keys \(1: unet\.invpt_decoder\.mt_proj\.0\.weight\)"):
        ds.convert(missing, fam)
    with pytest.raises(
        WeightsError, match=r"wrong shapes \(1: decoder_net\.invpt_decoder\.mt_proj\.0\.weight"
    ):
        ds.convert({**state, key: torch.zeros(3, 3)}, fam)
    with pytest.raises(WeightsError, match=r"unknown keys \(1: decoder_net\.extra\)"):
        ds.convert({**state, "decoder_net.extra": torch.zeros(1)}, fam)
    # an audio-visual file is not a visual-only one: its audio keys are unknown there
    with pytest.raises(WeightsError, match=r"unknown keys \(2: audio_net\.features\.0\.bias"):
        ds.convert(
            {
                **state,
                "audio_net.features.0.weight": torch.zeros(1),
                "audio_net.features.0.bias": torch.zeros(1),
            },
            fam,
        )
    # BatchNorm step counters may be absent
    counters = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(ds.convert(counters, fam).state) == len(converted(fam).state)


def _write_official_file(path: Path, state: dict[str, torch.Tensor]) -> None:
    params = [torch.nn.Parameter(torch.zeros(3))]
    optim = torch.optim.Adam(params, lr=1e-4)
    params[0].grad = torch.ones(3)
    optim.step()
    torch.save(
        {
            "state_dict": {"module." + k: v for k, v in state.items()},
            "optim_dict": optim.state_dict(),
            "epoch": 3,
            "step": 1234,
        },
        path,
    )


def test_read_official_checkpoint_and_its_errors(tmp_path: Path) -> None:
    state = {"visual_net.cls_token": torch.randn(1, 1, 96), "decoder_net.conv_in.bias": torch.randn(96)}
    good = tmp_path / "best.pth"
    _write_official_file(good, state)
    read = ds.read_official_checkpoint(good)
    assert set(read) == set(state) and all(torch.equal(read[k], state[k]) for k in state)

    def one_line_error(path: Path, match: str) -> None:
        with pytest.raises(WeightsError, match=match) as err:
            ds.read_official_checkpoint(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)

    one_line_error(tmp_path / "absent.pth", "no such file")
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    one_line_error(tmp_path / "text.pth", "not a readable torch checkpoint")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    one_line_error(truncated, "not a readable torch checkpoint")
    torch.save({"model": state}, tmp_path / "other.pth")
    one_line_error(tmp_path / "other.pth", "no 'state_dict' entry")
    _write_official_file(tmp_path / "s3d.pth", {"base.0.conv.weight": torch.zeros(1)})
    one_line_error(tmp_path / "s3d.pth", "not a DiffSal checkpoint")


# ----------------------------------------------------------------------------- components
@pytest.mark.parametrize("fam", FAMILIES)
def test_mvit_stages_match_official(fam: str) -> None:
    vid, _ = encoded(fam, 2)
    for i, stage in enumerate(vid[::-1]):  # the golden file holds them coarse first
        assert subsampled_diff(stage, fam, f"mvit_{i}") < TOL, f"stage {3 - i}"


def test_audio_encoder_matches_official() -> None:
    _, aud = encoded("diffsal-official", 2)
    assert aud is not None
    assert subsampled_diff(aud, "diffsal-official", "audio") < TOL


@pytest.mark.parametrize("batch", [2, 1])
@pytest.mark.parametrize("fam", FAMILIES)
def test_unet_step_matches_official(fam: str, batch: int) -> None:
    st, x, g = stages(fam), inputs(fam), golden(fam)
    args = [torch.from_numpy(x[f"cond{i}"][:batch]) for i in range(3)]
    if st.audio_encoder is not None:
        args.append(torch.from_numpy(x["audio_cond"][:batch]))
    with torch.no_grad():
        y = st.unet(torch.from_numpy(x["x_t"][:batch]), torch.from_numpy(g["t_step"][:batch]), *args).numpy()
    want = g[f"unet_b{batch}"]
    assert y.shape == want.shape
    assert float(np.abs(y - want).max()) < TOL
    assert want.std() > 0.02  # the golden output is not a constant map


def test_visual_only_unet_ignores_x_t_and_t() -> None:
    fam = "diffsal-official-visual"
    st, x = stages(fam), inputs(fam)
    conds = [torch.from_numpy(x[f"cond{i}"]) for i in range(3)]
    with torch.no_grad():
        a = st.unet(torch.from_numpy(x["x_t"]), torch.tensor([999.0, 0.0]), *conds)
        b = st.unet(torch.from_numpy(x["noise"]), torch.tensor([3.0, 250.0]), *conds)
    assert torch.equal(a, b)
    assert float(golden(fam)["visual_noise_check"]) == 0.0  # the released network too


# ----------------------------------------------------------------------------- end to end
def _sample(fam: str, batch: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Our stages composed with our sampler: (maps clamped to [0, 1], min-max normalised maps)."""
    st, x = stages(fam), inputs(fam)
    vid, aud = encoded(fam, batch)
    conds = [torch.from_numpy(v) for v in vid[::-1][:3]]
    if aud is not None:
        conds.append(torch.from_numpy(aud))
    scheduler = DDIMScheduler.from_config(small_config(fam))
    with torch.no_grad():
        x0 = ddim_sample(
            lambda x_t, t: st.unet(x_t, t, *conds),
            torch.from_numpy(x["noise"][:batch]),
            scheduler,
            steps,
            clip_x0=False,
        )
        return x0.clamp(0.0, 1.0).numpy(), normalize_maps(x0).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("batch", [2, 1])
@pytest.mark.parametrize("fam", FAMILIES)
def test_end_to_end_matches_official_sampler(fam: str, batch: int) -> None:
    g = golden(fam)
    for steps in (1, 4):
        clamped, maps = _sample(fam, batch, steps)
        assert float(np.abs(clamped - g[f"e2e{steps}_b{batch}_clamped"]).max()) < TOL, steps
        assert float(np.abs(maps - g[f"e2e{steps}_b{batch}"]).max()) < TOL, steps
        # the official uint8 maps: truncation of 255 * map, so at most one level off at a boundary
        u8 = np.clip(maps * 255.0, 0, 255).astype(np.uint8)
        assert int(np.abs(u8.astype(int) - g[f"e2e{steps}_b{batch}_uint8"].astype(int)).max()) <= 1
    if fam == "diffsal-official-visual":  # noise-free: one step and four give the same map
        np.testing.assert_array_equal(g["e2e1_b2"], g["e2e4_b2"])


# ----------------------------------------------------------------------------- ONNX
def _export(module: torch.nn.Module, args: tuple[torch.Tensor, ...], names: list[str]):  # type: ignore[no-untyped-def]
    import onnx
    import onnxruntime as ort

    from avsal_deploy.export.onnx import audit_tensorrt_ops

    batch = torch.export.Dim("batch", min=1, max=8)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            input_names=names,
            dynamic_shapes={n: {0: batch} for n in names},
            opset_version=18,
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    onnx.checker.check_model(proto)
    assert audit_tensorrt_ops(proto) == set()
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


@cache
def onnx_case(fam: str) -> tuple[ds.OfficialStages, dict[str, np.ndarray]]:
    """Stages with the converted official weights at 16x64x96 frames (the parameter shapes do not
    depend on the frame size) and batch-2 inputs for the ONNX checks."""
    h, w = 64, 96
    st = load_stages(ds.build(small_config(fam, h, w), fam), converted(fam).state)
    rng = np.random.default_rng(5)
    x = {
        "frames": rng.standard_normal((2, 3, 16, h, w)).astype(np.float32),
        "audio": rng.standard_normal((2, 1, 9, h // 2, w // 2)).astype(np.float32),
        "x_t": rng.standard_normal((2, 1, h, w)).astype(np.float32),
        "t": np.array([750.0, 0.0], np.float32),
    }
    return st, x


def _check_onnx(module: torch.nn.Module, names: list[str], inputs_: list[np.ndarray]) -> None:
    """Export at batch 2 with a dynamic batch; ONNX Runtime within 1e-4 of torch at batch 1 and 2."""
    session = _export(module, tuple(torch.from_numpy(a) for a in inputs_), names)
    for b in (1, 2):
        with torch.no_grad():
            want = module(*(torch.from_numpy(a[:b]) for a in inputs_))
        want = [want] if isinstance(want, torch.Tensor) else list(want)
        got = session.run(None, {n: a[:b] for n, a in zip(names, inputs_, strict=True)})
        assert len(got) == len(want)
        assert max(float(np.abs(g_ - w_.numpy()).max()) for g_, w_ in zip(got, want, strict=True)) < TOL, b


@pytest.mark.slow
def test_video_encoder_exports_to_onnx_with_a_dynamic_batch() -> None:
    st, x = onnx_case("diffsal-official")  # the same encoder code serves both families
    _check_onnx(st.video_encoder, ["frames"], [x["frames"]])


def test_audio_encoder_exports_to_onnx_with_a_dynamic_batch() -> None:
    st, x = onnx_case("diffsal-official")
    assert st.audio_encoder is not None
    _check_onnx(st.audio_encoder, ["audio"], [x["audio"]])


@pytest.mark.slow
@pytest.mark.parametrize("fam", FAMILIES)
def test_unet_step_exports_to_onnx_with_a_dynamic_batch(fam: str) -> None:
    st, x = onnx_case(fam)
    with torch.no_grad():
        conds = [v.numpy() for v in st.video_encoder(torch.from_numpy(x["frames"]))]
        names = ["x_t", "t", *ds.VIDEO_OUTPUTS]
        if st.audio_encoder is not None:
            conds.append(st.audio_encoder(torch.from_numpy(x["audio"])).numpy())
            names.append("audio_feat")
    _check_onnx(st.unet, names, [x["x_t"], x["t"], *conds])


# ----------------------------------------------------------------------------- input mode
# Golden files of the released loaders (made by the same generator setup, with resampy 0.4.2,
# soundfile and Pillow 9.4.0 in the official venv):
# - diffsal-official-audio.npz: for each case (rate, fps, n_frames, first 1-based frame index of
#   the 16-frame clip) a synthetic int16 WAV (wav{c}) read by datasets/saliency_db.py
#   make_mel_dataset; get_mel_feature's nine 64x64 examples (examples{c}) and the model input after
#   the loader's Resize((112, 192)) (input{c}, every third row and column);
# - diffsal-official-frames.npz: two synthetic 320x180 frames (frame{i}, saved as PNG), through
#   the AV loader's pil_loader + Scale + ToTensor(1) + Normalize (av{i}) and the DHF1K loader's
#   Resize((224, 384)) + ToTensor + ImageNet Normalize (visual{i}).
def test_official_audio_examples_match_the_released_loader() -> None:
    import json

    from avsal_deploy.data.audio import _centred, audio_input
    from avsal_deploy.data.diffsal_audio import (
        excerpt_bounds,
        fill_examples,
        log_mel_examples,
        official_buffer_samples,
    )
    from avsal_deploy.data.signal import AudioTrack

    with np.load(GOLDEN / "diffsal-official-audio.npz") as f:
        g = {k: f[k] for k in f.files}
    config = family_config("diffsal-official")
    cases = json.loads(str(g["cases"]))
    assert {c[0] for c in cases} == {16000, 22050, 44100, 48000}
    for c, (rate, fps, _, first) in enumerate(cases):
        track = AudioTrack(g[f"wav{c}"].astype(np.float32) / 32768.0, rate, float(fps))
        frames = list(range(first - 1, first + 15))  # the loader's 1-based clip, 0-based here
        got = audio_input(track, frames, config, "diffsal-official")
        assert got.shape == (1, 9, 112, 192) == (1, *config.audio_input_shape("diffsal-official")[1:])
        assert float(np.abs(got[:, :, ::3, ::3] - g[f"input{c}"]).max()) < TOL, (rate, fps, first)
        # before the resize: the nine examples themselves
        start, stop = excerpt_bounds(frames[0], frames[-1], float(fps), rate)
        buffer = _centred(track.samples[start:stop], official_buffer_samples(config)).astype(np.float64)
        examples = fill_examples(log_mel_examples(buffer, rate, config), 9)
        assert float(np.abs(examples - g[f"examples{c}"]).max()) < TOL, (rate, fps, first)


def test_resampy_kaiser_best_reimplementation() -> None:
    """Spot values of resampy.resample(x, 44100, 16000) and (x, 16000, 22050) (kaiser_best,
    resampy 0.4.2) of x = sin(0.05 n) + 0.5 cos(0.31 n), n = 0..999."""
    from avsal_deploy.data.diffsal_audio import kaiser_best_window, resample_kaiser_best

    n = np.arange(1000)
    x = np.sin(0.05 * n) + 0.5 * np.cos(0.31 * n)
    assert kaiser_best_window().shape == (409601,)
    down = resample_kaiser_best(x, 44100, 16000)
    up = resample_kaiser_best(x, 16000, 22050)
    assert down.shape == (362,) and up.shape == (1378,)
    np.testing.assert_allclose(down[[0, 1, 100, 361]], RESAMPY_DOWN, atol=1e-12)
    np.testing.assert_allclose(up[[0, 1, 700, 1377]], RESAMPY_UP, atol=1e-12)


@pytest.mark.parametrize(("fam", "key"), [("diffsal-official", "av"), ("diffsal-official-visual", "visual")])
def test_official_frame_preprocessing_matches_the_released_loader(fam: str, key: str) -> None:
    from avsal_deploy.data.preprocess import preprocess_frames

    with np.load(GOLDEN / "diffsal-official-frames.npz") as f:
        g = {k: f[k] for k in f.files}
    config = family_config(fam)
    got = preprocess_frames(np.stack([g["frame0"], g["frame1"]]), config)
    for i in range(2):
        assert float(np.abs(got[i] - g[f"{key}{i}"]).max()) < 1e-5


def test_official_input_mode_fields_keep_fingerprints() -> None:
    from avsal_deploy.config import ConfigError, load_config

    paper = load_config("paper")
    assert paper.video.resize == "antialias" and paper.video.pre_resize == ()
    official = family_config("diffsal-official")
    assert official.video.pre_resize == (240, 320) and official.video.resize == "pil"
    assert (
        paper.replace({"video.resize": "pil"}).architecture_fingerprint() == paper.architecture_fingerprint()
    )
    with pytest.raises(ConfigError, match="pre_resize needs"):
        paper.replace({"video.pre_resize": [240, 320]})
    with pytest.raises(ConfigError, match="resize"):
        paper.replace({"video.resize": "nearest"})
    stored = official.to_dict()
    del stored["video"]["pre_resize"], stored["video"]["resize"]
    from avsal_deploy.config import Config

    assert Config.from_dict(stored).video.pre_resize == ()
