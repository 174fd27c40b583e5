"""The official DiffSal network (``diffsal-official``, ``diffsal-official-visual``) against golden
outputs of the released code, end to end through ``avsal convert``, the engines and ``avsal predict``.

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
   for both files; default gain 2, nothing transposed). ``visual_net.*`` comes first in both
   layouts, so both files hold the same video encoder weights: the visual-only family's ONNX
   Runtime test reuses the audio-visual export of that encoder (asserted below);
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
   uint8 cast (``e2e{steps}_b{batch}``; the clamped maps and the uint8 maps too); batch 1 is
   the first sample of each input, run on its own;
5. for the visual-only file, the sampler again from another noise (``visual_noise_check``: the
   largest difference, 0).

The frame size 128x192 (not 64x96) is the smallest at which every attention of the UNet has more
than one key (6 per stage), so the audio keys and the noise slot actually act on the output.

The tests save the rebuilt state dict as the released trainer saves ``best.pth``
(``{"state_dict": {"module." + key: tensor}, "optim_dict", "epoch", "step"}``), convert it with
``avsal convert`` at the golden size and compare ``engine.open(checkpoint, "torch")`` with the
official maps, then ``avsal export`` + ``engine.open(directory, "onnxruntime")`` with torch, at
batch 1 and 2. One conversion, one torch engine and one export per family serve the whole module.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from functools import cache, cached_property
from pathlib import Path

import numpy as np
import pytest
import torch

from avsal_deploy import engine as engines
from avsal_deploy.cli import main
from avsal_deploy.config import family_config
from avsal_deploy.engine.base import Engine
from avsal_deploy.errors import WeightsError
from avsal_deploy.export.components import component_specs
from avsal_deploy.models.official import diffsal as ds
from tests.golden.weights import random_state, read_layout

GOLDEN = Path(__file__).parent / "golden"
# resampy 0.4.2 resample(x, 44100, 16000)[[0, 1, 100, 361]] and (x, 16000, 22050)[[0, 1, 700, 1377]]
# for x = sin(0.05 n) + 0.5 cos(0.31 n), n < 1000 (test_resampy_kaiser_best_reimplementation)
RESAMPY_DOWN = [0.34704121353529116, 0.509628047684366, 0.5306240590800002, -0.07449824821769142]
RESAMPY_UP = [0.4803773931536547, 0.5743068928811738, 0.7252304206628134, -0.3556171965818741]
AV, VISUAL = "diffsal-official", "diffsal-official-visual"
FAMILIES = (AV, VISUAL)
FROM = {AV: "diffsal", VISUAL: "diffsal-visual"}
H, W, HA, WA = 128, 192, 64, 96
#: ``avsal convert --set``: the golden frame size (and audio example size) instead of 224x384.
SMALL = {
    AV: [
        f"video.height={H}",
        f"video.width={W}",
        f"audio.vggish_slice_height={HA}",
        f"audio.vggish_slice_width={WA}",
    ],
    VISUAL: [f"video.height={H}", f"video.width={W}"],
}
TOL = 1e-4


@cache
def golden(fam: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / f"{fam}.npz") as f:
        return {k: f[k] for k in f.files}


@cache
def official_state(fam: str) -> dict[str, torch.Tensor]:
    """The official state dict (keys as saved, ``module.`` stripped) the golden file was made with."""
    g = golden(fam)
    state = random_state(read_layout(str(g["layout"])), int(g["seed"]))
    return {k: torch.from_numpy(v) for k, v in state.items()}


def small_config(fam: str):  # type: ignore[no-untyped-def]
    return family_config(fam, {k: json.loads(v) for k, v in (s.split("=") for s in SMALL[fam])})


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
    if fam == VISUAL:
        out["audio"] = np.zeros((2, 0), np.float32)  # no audio encoder: the engine ignores it
    return out


def subsampled_diff(ours: np.ndarray, fam: str, name: str) -> float:
    g = golden(fam)
    assert tuple(ours.shape) == tuple(g[f"{name}_shape"])
    return float(np.abs(ours.reshape(-1)[:: int(g[f"{name}_stride"])] - g[f"{name}_sub"]).max())


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def write_official_file(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """``state`` saved as the released trainer saves ``best.pth`` (DataParallel keys, optimiser)."""
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
    return path


# ----------------------------------------------------------------------------- engines
def record_runs(engine: Engine) -> list[str]:
    """The list of the components ``engine`` runs from now on, in order (the caller clears it)."""
    calls: list[str] = []
    run = engine.run

    def counted(component, feeds):  # type: ignore[no-untyped-def]
        calls.append(component)
        return run(component, feeds)

    engine.run = counted  # type: ignore[method-assign]
    return calls


def engine_maps(engine: Engine, fam: str) -> dict[str, tuple[np.ndarray, int]]:
    """The engine's maps of the golden inputs (name -> (maps, UNet evaluations)), named as the
    golden file's official maps (``*_other_noise``: the same window from another x_T); for the
    audio-visual family also ``cond_b2``, the encoders' outputs at batch 2."""
    x = inputs(fam)
    calls = record_runs(engine)
    out: dict[str, tuple[np.ndarray, int]] = {}

    def record(name: str, maps: np.ndarray) -> None:
        out[name] = (maps, calls.count("unet_step"))
        calls.clear()

    if fam == AV:
        cond = engine.condition(x["frames"], x["audio"])  # predict_window = condition + sample
        out["cond_b2"] = (cond, 0)  # type: ignore[assignment]
        calls.clear()
        for steps in (1, 4):
            record(f"e2e{steps}_b2", engine.sample(cond, steps, x["noise"]))
        for steps in (1, 4):
            record(
                f"e2e{steps}_b1",
                engine.predict_window(x["frames"][:1], x["audio"][:1], steps, noise=x["noise"][:1]),
            )
    else:  # any step count runs the UNet once; x_T is not read
        record("e2e4_b2", engine.predict_window(x["frames"], x["audio"], 4, noise=x["noise"]))
        record("e2e4_b1", engine.predict_window(x["frames"][:1], x["audio"][:1], 4, noise=x["noise"][:1]))
        record(
            "e2e1_b1_other_noise",
            engine.predict_window(x["frames"][:1], x["audio"][:1], 1, noise=x["x_t"][:1]),
        )
    return out


class Family:
    """One family's official file, converted checkpoint, engines and export, made on first use."""

    def __init__(self, fam: str, root: Path, others: dict[str, Family]) -> None:
        self.fam, self.root, self.others = fam, root / fam, others
        self.root.mkdir(parents=True, exist_ok=True)

    @cached_property
    def official_file(self) -> Path:
        return write_official_file(self.root / "best.pth", official_state(self.fam))

    @cached_property
    def checkpoint(self) -> Path:
        out = self.root / f"{self.fam}.safetensors"
        sets = [a for s in SMALL[self.fam] for a in ("--set", s)]
        assert (
            main(["convert", str(self.official_file), "--from", FROM[self.fam], "--out", str(out), *sets])
            == 0
        )
        return out

    @cached_property
    def torch_engine(self) -> Engine:
        return engines.open(self.checkpoint, "torch")

    @cached_property
    def export_dir(self) -> Path:
        out = self.root / "export"
        if self.fam == AV:
            assert main(["export", "--checkpoint", str(self.checkpoint), "--out", str(out)]) == 0
            return out
        # The visual-only family: its UNet step exported by `avsal export`, beside the video encoder
        # graph of the audio-visual export, which holds the same weights (module docstring).
        state, av_state = official_state(self.fam), official_state(AV)
        video = [k for k in state if k.startswith("visual_net.")]
        assert len(video) == 401 and all(torch.equal(state[k], av_state[k]) for k in video)
        args = [
            "export",
            "--checkpoint",
            str(self.checkpoint),
            "--out",
            str(out),
            "--components",
            "unet_step",
        ]
        assert main(args) == 0
        av_dir = self.others[AV].export_dir
        av_manifest = json.loads((av_dir / "manifest.json").read_text())
        manifest = json.loads((out / "manifest.json").read_text())
        own = component_specs(small_config(VISUAL), VISUAL)["video_encoder"].to_manifest()
        assert {k: av_manifest["components"]["video_encoder"][k] for k in own} == own
        shutil.copy(av_dir / "video_encoder.onnx", out / "video_encoder.onnx")
        manifest["components"] = {
            "video_encoder": av_manifest["components"]["video_encoder"],
            **manifest["components"],
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return out

    @cached_property
    def ort_engine(self) -> Engine:
        return engines.open(self.export_dir, "onnxruntime")

    @cached_property
    def torch_maps(self) -> dict[str, tuple[np.ndarray, int]]:
        return engine_maps(self.torch_engine, self.fam)

    @cached_property
    def ort_maps(self) -> dict[str, tuple[np.ndarray, int]]:
        return engine_maps(self.ort_engine, self.fam)


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Family]]:
    root = tmp_path_factory.mktemp("diffsal-official")
    out: dict[str, Family] = {}
    out.update({fam: Family(fam, root, out) for fam in FAMILIES})
    yield out
    for case in out.values():  # engines and state dicts hold ~2 GB: not for the rest of the suite
        for name in ("torch_engine", "ort_engine"):
            if name in case.__dict__:
                case.__dict__.pop(name).close()
    out.clear()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def _release_state_dicts() -> Iterator[None]:
    """The rebuilt official state dicts (~600 MB) live as long as this module's tests."""
    yield
    official_state.cache_clear()


# ----------------------------------------------------------------------------- conversion
@pytest.mark.parametrize("fam", FAMILIES)
def test_checkpoint_layout_converts_key_for_key(fam: str) -> None:
    layout = read_layout(str(golden(fam)["layout"]))
    prefixes: dict[str, int] = {}
    for name, _, _ in layout:
        prefixes[name.split(".")[0]] = prefixes.get(name.split(".")[0], 0) + 1
    av = fam == AV
    want = {"visual_net": 401, "decoder_net": 215}
    if av:
        want.update({"audio_net": 18, "spatiotemp_net": 20, "fc": 4})
    assert prefixes == want
    assert ds.detect({name: None for name, _, _ in layout}) == fam
    conv = ds.convert(official_state(fam), fam)
    assert set(conv.state) == set(ds._stage_shapes(fam))
    dropped_prefixes = sorted({".".join(k.split(".")[:2]) for k in conv.dropped})
    if av:
        assert dropped_prefixes == [
            "audio_net.embeddings",
            "fc.0",
            "fc.2",
            "spatiotemp_net.pos_embedding",
            "spatiotemp_net.to_patch_embedding",
        ]
        assert len(conv.dropped) == 6 + 4 + 1 + 6
    else:
        assert len(conv.dropped) == 8 and all(".align_conv." in k for k in conv.dropped)
    assert len(conv.state) + len(conv.dropped) == len(layout)
    # a missing key is named as the official file names it
    for name, _, _ in layout:
        if name not in conv.dropped:
            assert ds.official_key(ds._translate(name, av) or "") == name


def test_convert_refuses_missing_unknown_and_misshapen_keys() -> None:
    fam = VISUAL
    state = official_state(fam)
    key = "decoder_net.invpt_decoder.mt_proj.0.weight"
    missing = {k: v for k, v in state.items() if k != key}
    with pytest.raises(
        WeightsError, match=r"missing keys \(1: decoder_net\.invpt_decoder\.mt_proj\.0\.weight\)"
    ):
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
    assert len(ds.convert(counters, fam).state) == len(ds._stage_shapes(fam))


@pytest.mark.parametrize("fam", FAMILIES)
def test_avsal_convert_records_the_family_and_its_input_size(fam: str, families: dict[str, Family]) -> None:
    from avsal_deploy.models.build import checkpoint_config

    config, variant, meta = checkpoint_config(families[fam].checkpoint)
    assert variant == fam
    assert (config.video.height, config.video.width) == (H, W)
    assert config.video.pre_resize == ((240, 320) if fam == AV else ())
    assert (config.diffusion.sampling_steps, config.diffusion.clip_x0) == (1, False)
    converted = meta["converted_from"]
    assert converted["family"] == fam and converted["file"] == "best.pth"
    assert len(converted["dropped_keys"]) == (17 if fam == AV else 8)


def test_avsal_convert_refuses_bad_files(
    families: dict[str, Family], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint of another model (either way round), a truncated file, a missing key and a
    wrong shape: one line on stderr naming the file, exit 2, nothing written."""
    from tests.golden.parity import load_golden
    from tests.golden.parity import official_state as other_official_state

    visual = official_state(VISUAL)
    key = "decoder_net.invpt_decoder.mt_proj.0.weight"
    tased = tmp_path / "tased.pth"
    torch.save({"module." + k: v for k, v in other_official_state(load_golden("tased")).items()}, tased)
    truncated = tmp_path / "truncated.pth"
    with families[AV].official_file.open("rb") as f:
        truncated.write_bytes(f.read(1 << 20))
    missing = write_official_file(tmp_path / "missing.pth", {k: v for k, v in visual.items() if k != key})
    misshapen = write_official_file(tmp_path / "misshapen.pth", {**visual, key: visual[key][:, :-1]})
    cases = [
        (tased, "diffsal", "a tased checkpoint, not diffsal-official"),
        (families[VISUAL].official_file, "tased", "a diffsal-official-visual checkpoint, not tased"),
        (truncated, "diffsal", "not a readable PyTorch checkpoint"),
        (missing, "diffsal-visual", f"missing keys \\(1: {key}\\)"),
        (misshapen, None, f"wrong shapes \\(1: {key} "),
    ]
    for i, (source, name, reason) in enumerate(cases):
        out = tmp_path / "out" / f"{i}.safetensors"
        capsys.readouterr()
        args = ["convert", str(source), "--out", str(out), *(["--from", name] if name else [])]
        assert main(args) == 2, source
        err = capsys.readouterr().err
        assert err.endswith("\n") and err.count("\n") == 1, err
        assert str(source) in err and re.search(reason, err), err
        assert not out.exists()
        assert not out.parent.exists() or list(out.parent.iterdir()) == []


# ----------------------------------------------------------------------------- components
@pytest.mark.slow
def test_encoders_match_official(families: dict[str, Family]) -> None:
    """MViT stages 3, 2, 1 (the golden file's ``mvit_0..2``, coarse first; stage 0 feeds stage 1)
    and the audio features, as the torch engine computes them for the golden window at batch 2.
    The visual-only family has the same video encoder weights (module docstring)."""
    cond = families[AV].torch_maps["cond_b2"][0]
    for i, name in enumerate(ds.VIDEO_OUTPUTS):
        assert subsampled_diff(cond[name], AV, f"mvit_{i}") < TOL, name
    assert subsampled_diff(cond["audio_feat"], AV, "audio") < TOL


@pytest.mark.parametrize("fam", FAMILIES)
def test_unet_step_matches_official(fam: str, families: dict[str, Family]) -> None:
    """One UNet step at fixed x_t, t and random conditions, batch 2 (batch 1 is covered end to end)."""
    x, g = inputs(fam), golden(fam)
    feeds = {"x_t": x["x_t"], "t": g["t_step"].astype(np.float32)}
    feeds.update({name: x[f"cond{i}"] for i, name in enumerate(ds.VIDEO_OUTPUTS)})
    if fam == AV:
        feeds["audio_feat"] = x["audio_cond"]
    y = families[fam].torch_engine.run("unet_step", feeds)["x0"]
    assert max_abs(y, g["unet_b2"]) < TOL
    assert g["unet_b2"].std() > 0.02  # the golden output is not a constant map


def test_visual_only_unet_ignores_x_t_and_t(families: dict[str, Family]) -> None:
    x = inputs(VISUAL)
    feeds = {name: x[f"cond{i}"][:1] for i, name in enumerate(ds.VIDEO_OUTPUTS)}
    run = families[VISUAL].torch_engine.run
    a = run("unet_step", {**feeds, "x_t": x["x_t"][:1], "t": np.array([999.0], np.float32)})["x0"]
    b = run("unet_step", {**feeds, "x_t": x["noise"][:1], "t": np.array([3.0], np.float32)})["x0"]
    np.testing.assert_array_equal(a, b)
    assert float(golden(VISUAL)["visual_noise_check"]) == 0.0  # the released network too


# ----------------------------------------------------------------------------- end to end
def check_official_maps(maps: dict[str, tuple[np.ndarray, int]], fam: str) -> None:
    g = golden(fam)
    for name, (got, unet_steps) in maps.items():
        if name == "cond_b2":
            continue
        official = name.replace("_other_noise", "")
        assert max_abs(got, g[official]) < TOL, name
        # the official uint8 maps: truncation of 255 * map, so at most one level off at a boundary
        u8 = np.clip(got * 255.0, 0, 255).astype(np.uint8).astype(int)
        assert int(np.abs(u8 - g[f"{official}_uint8"].astype(int)).max()) <= 1, name
        steps = int(name[3])
        assert unet_steps == (steps if fam == AV else 1), name


@pytest.mark.slow
@pytest.mark.parametrize("fam", FAMILIES)
def test_torch_engine_equals_the_official_sampler(fam: str, families: dict[str, Family]) -> None:
    """``engine.open(converted, "torch").predict_window(frames, audio, steps, noise=x_T)``: the
    released sampler's maps after its min-max normalisation, 1 step (t = 0) and 4 (t = 750, 500,
    250, 0, clamped only at the end), batch 1 and 2. The visual-only network runs one pass for any
    step count and the same map from any x_T."""
    maps = families[fam].torch_maps
    check_official_maps(maps, fam)
    if fam == VISUAL:
        np.testing.assert_array_equal(maps["e2e4_b1"][0], maps["e2e1_b1_other_noise"][0])
        np.testing.assert_array_equal(golden(fam)["e2e1_b2"], golden(fam)["e2e4_b2"])


@pytest.mark.slow
@pytest.mark.parametrize("fam", FAMILIES)
def test_onnxruntime_engine_equals_torch(fam: str, families: dict[str, Family]) -> None:
    """``avsal export`` of the converted checkpoint through ONNX Runtime: every map and encoder
    output within 1e-4 of the torch engine (and so of the official maps), batch 1 and 2."""
    ours, ref = families[fam].ort_maps, families[fam].torch_maps
    check_official_maps(ours, fam)
    assert set(ours) == set(ref)
    for name, (got, _) in ours.items():
        want = ref[name][0]
        if name == "cond_b2":
            for k, v in want.items():
                scale = max(1.0, float(np.abs(v).max()))
                assert max_abs(got[k], v) < TOL * scale, k
        else:
            assert max_abs(got, want) < TOL, name
    if fam == VISUAL:
        np.testing.assert_array_equal(ours["e2e4_b1"][0], ours["e2e1_b1_other_noise"][0])
        assert families[fam].ort_engine.specs["unet_step"].attributes["noise_free"] is True


# ----------------------------------------------------------------------------- prediction
@pytest.mark.slow
def test_predict_runs_the_official_input_mode(families: dict[str, Family], tmp_path: Path) -> None:
    """``avsal predict`` (its :class:`Predictor`, the frame flow streaming uses too) on the converted
    audio-visual checkpoint: the map of the first window without padding equals the engine on the
    window built here from the decoded file by the released loader's rules (16 frames, the target
    at position 8, frames resized by Pillow to 320x240 and then to the model size on the 0-255
    scale with the AV statistics, nine log-mel examples of the native-rate soundtrack); the
    functions used here are the ones the golden loader files above check."""
    from avsal_deploy.data.audio import audio_input
    from avsal_deploy.data.decode import read_video
    from avsal_deploy.data.preprocess import preprocess_frames
    from avsal_deploy.pipeline import Predictor
    from tests.media_utils import write_video

    engine = families[AV].ort_engine
    config = engine.config
    assert (config.clip_len(AV), config.window.mode, config.video.pre_resize) == (16, "centre", (240, 320))
    video = write_video(tmp_path / "clip.mp4", n=16, fps=25, audio="aac", audio_rate=44100)
    prediction = Predictor(engine, steps=1, stride=8, batch_size=3).predict(video)
    assert prediction.targets == [0, 8, 15]  # frame 8: the first window without padding
    data = read_video(video)
    assert data.audio_rate == 44100 and data.has_audio
    target = 8
    frames = list(range(target - 8, target + 8))
    clip = preprocess_frames(data.frames[frames], config).transpose(1, 0, 2, 3)[None]
    audio = audio_input(data.track, frames, config, AV)[None]
    assert float(np.abs(audio).max()) > 0.1  # the soundtrack reached the examples
    want = engine.predict_window(clip, audio, 1, noise=engine.make_noise(1, 0))
    assert prediction.sources[target] == target
    assert max_abs(prediction.frame_maps[target], want[0, 0]) < TOL


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


@pytest.mark.long
@pytest.mark.triton
def test_triton_stream_equals_offline_prediction(families: dict[str, Family], tmp_path: Path) -> None:
    """``avsal triton-repo`` of the converted audio-visual checkpoint's export, the real server and
    ``avsal_stream`` (the official input mode, the clip's sound at its own rate): every frame's map
    equals offline prediction within 1e-4. Long: a DiffSal window takes seconds here."""
    from media_utils import write_video

    from avsal_deploy.data.source import MediaSource
    from avsal_deploy.pipeline import PredictOptions, Predictor
    from avsal_deploy.serving.client import stream
    from avsal_deploy.serving.server import TritonServer

    export = families[AV].export_dir
    video = write_video(tmp_path / "clip.mp4", n=5, fps=25, size=(72, 128), audio="aac")
    offline = Predictor(families[AV].ort_engine, PredictOptions(stride=4)).predict(video).frame_maps
    repo = tmp_path / "repo"
    assert main(["triton-repo", "--export", str(export), "--out", str(repo)]) == 0
    source = MediaSource(video)
    try:
        items = list(source.media())
    finally:
        source.close()
    frames, chunks = [(f, ts) for f, ts, _ in items], [c for _, _, c in items]
    with TritonServer(repo, models=["avsal_stream"], startup_timeout=300) as server:
        got = dict(
            stream(server.grpc_url, frames, chunks, fps=source.fps, audio_rate=source.audio_rate, stride=4)
        )
    assert sorted(got) == list(range(5))
    assert max(float(np.abs(got[i] - offline[i]).max()) for i in got) <= 1e-4
