"""TASED-Net as released, reproduced by :mod:`avsal_deploy.models.official.tased`: golden-file parity.

Golden file ``tests/golden/tased.npz`` (made outside this repository, with the official code):

- official code: github.com/MichiganCOG/TASED-Net at 0cf47b7, ``model.py`` ``TASED_v2()`` (no
  arguments), eval mode, torch 2.13.0 CPU, 2 threads;
- weights: ``tests/golden/weights.py`` ``random_state(layout, seed=20190, transposed=[the six
  ConvTranspose3d weights])`` over the official ``state_dict()`` layout (stored: ``layout``,
  ``seed``, ``transposed``), loaded with ``load_state_dict(strict=True)``;
- input: ``pixels`` uint8 [2, 32, 64, 96, 3] (``np.random.default_rng(7)``: a random field
  ``integers(0, 256, (2, 8, 8, 12, 3))`` repeated 4x in time and 8x in space, plus
  ``normal(0, 24)``, clipped and rounded), made into frames as ``run_example.py``'s
  ``transform`` does: ``(2p - 255) / 255``, [B, 3, T, H, W];
- outputs of ``model(frames)`` at batch 2: ``map`` [2, 64, 96]; from forward hooks: ``mixed_5c``
  (``base4``), the indices of ``maxp4`` (``i0``), ``maxt3`` (``i1``) and ``maxt2`` (``i2``);
- near ties: for the tensors those three pools read (hooks on ``maxt4``, ``maxm3``, ``maxm2``),
  the flat indices (into the pooled grid) of the windows whose maximum exceeds the runner-up
  (the largest cell value different from the maximum) by less than ``near_tie_margin`` (1e-4)
  times the tensor's largest magnitude (``near_tie0..2``, for unpool1..3). Float noise may flip
  the argmax of such a window: the official code itself gives maps 0.014 apart on this input
  with 1 and 2 threads. Everywhere else the argmax must agree exactly.

The decoder is compared alone (from the official Mixed_5c and indices to the map); then the golden
weights saved as ``run_train.py`` saves them (``module.`` prefixes) go through ``avsal convert``
and the engines: torch and ONNX Runtime (``avsal export``: no MaxUnpool in its graphs)
``predict_window`` at batch 1 (the first clip) and 2, per component (Mixed_5c, the unpooling
argmax offsets, recorded from the same call) and end to end, the near ties as above.
"""

from __future__ import annotations

import datetime
import io
import json
import zipfile
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from media_utils import write_video
from torch import Tensor, nn

from avsal_deploy.config import family_config
from avsal_deploy.engine import open as open_engine
from avsal_deploy.errors import ConfigError, WeightsError
from avsal_deploy.export.onnx import TENSORRT_OPS, audit_tensorrt_ops, graph_ops
from avsal_deploy.models.official import build_stages, convert_state, tased, vinet_s
from avsal_deploy.models.official.checkpoint import read_official_state
from avsal_deploy.models.official.unpool import pooled_size, unpool_argmax, window_argmax
from tests.golden.parity import (
    MAP_ATOL,
    assert_feature_close,
    convert_cli,
    export_cli,
    load_golden,
    load_stage,
    max_abs,
    no_audio,
    official_state,
    onnx_session,
    predict_recorded,
    save_official,
    small_shape,
)

H, W = 64, 96
PRE_POOL_HW = ((H // 16, W // 16), (H // 8, W // 8), (H // 4, W // 4))  # inputs of the 3 pools


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return load_golden("tased")


@pytest.fixture(scope="module")
def state(golden) -> dict[str, Tensor]:
    return official_state(golden)


@pytest.fixture(scope="module")
def stages(state):
    converted = convert_state(state, "tased")
    built = build_stages(family_config("tased", {"video.height": H, "video.width": W}), "tased")
    encoder = load_stage(built.video_encoder, converted.state, "video_encoder")
    decoder = load_stage(built.decoder, converted.state, "fusion")
    return encoder, decoder


def frames_of(golden, batch: int) -> Tensor:
    pixels = torch.from_numpy(golden["pixels"][:batch].astype(np.float32)).permute(0, 4, 1, 2, 3)
    return pixels.mul(2.0).sub(255.0).div(255.0).contiguous()


def offsets_from_indices(indices: np.ndarray, pre_hw: tuple[int, int], which: int) -> np.ndarray:
    """Official flat indices (into each (b, c) volume T*H*W) -> window offsets ``i * kw + j``."""
    (kh, kw), (sh, sw), (ph, pw) = tased.UNPOOLS[which]
    h, w = pre_hw
    hq, wq = indices.shape[-2:]
    qh = np.arange(hq).reshape(-1, 1)
    qw = np.arange(wq).reshape(1, -1)
    row, col = indices % (h * w) // w, indices % w
    i, j = row - (qh * sh - ph), col - (qw * sw - pw)
    assert (i >= 0).all() and (i < kh).all() and (j >= 0).all() and (j < kw).all()
    return (i * kw + j).astype(np.float32)


def official_offsets(golden, batch: int) -> list[np.ndarray]:
    return [offsets_from_indices(golden[f"i{j}"][:batch], PRE_POOL_HW[j], j) for j in range(3)]


def near_tie_mask(golden, which: int, batch: int) -> np.ndarray:
    shape = golden[f"i{which}"].shape
    mask = np.zeros(int(np.prod(shape)), bool)
    mask[golden[f"near_tie{which}"]] = True
    return mask.reshape(shape)[:batch]


def assert_offsets_agree(ours: np.ndarray, ref: np.ndarray, near: np.ndarray, what: str) -> int:
    """Offsets equal everywhere but at near-tie windows; returns how many near ties differ."""
    differ = ours != ref
    assert not (differ & ~near).any(), f"{what}: {int((differ & ~near).sum())} argmax differ off near ties"
    return int(differ.sum())


# ----------------------------------------------------------------------------- the unpooling
def _reference_unpool(x: Tensor, z: Tensor, kernel, stride, padding) -> tuple[Tensor, Tensor]:
    _, idx = F.max_pool3d(x, (1, *kernel), (1, *stride), (0, *padding), return_indices=True)
    out = F.max_unpool3d(z, idx, (1, *kernel), (1, *stride), (0, *padding), output_size=x.shape[2:])
    return out, idx


def _adversarial(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    x = torch.randn(shape, generator=gen)
    if kind == "ties":  # few distinct values: most windows hold several equal maxima
        return x.round().clamp(-1.0, 1.0)
    if kind == "zeros":  # every window ties everywhere
        return torch.zeros(shape)
    if kind == "relu":  # ReLU outputs: zero plateaus and a few peaks
        return (2.0 * x).round().relu()
    if kind == "binary":
        return (x > 0.7).float()
    return x


def _pooled(h: int, w: int, window) -> tuple[int, int]:
    (kh, kw), (sh, sw), (ph, pw) = window
    return pooled_size(h, kh, sh, ph), pooled_size(w, kw, sw, pw)


WINDOWS = [
    ((3, 3), (2, 2), (1, 1)),
    ((2, 2), (2, 2), (0, 0)),
    ((3, 3), (1, 1), (1, 1)),
    ((3, 2), (2, 1), (1, 0)),
]
KINDS = ["random", "ties", "zeros", "relu", "binary"]


WINDOW_IDS = ["k3s2p1", "k2s2p0", "k3s1p1", "k3x2s2x1p1x0"]


@pytest.mark.parametrize("window", WINDOWS, ids=WINDOW_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_unpool_equals_cpu_maxunpool_on_ties_and_overlaps(window, kind) -> None:
    """window_argmax = CPU max_pool3d's index (first maximum in raster order) and unpool_argmax =
    CPU MaxUnpool3d (last write wins where windows overlap), bit for bit, odd and even sizes."""
    gen = torch.Generator().manual_seed(hash((window, kind)) % 2**31)
    repeated = 0
    for h, w in ((7, 9), (8, 12), (2, 3), (5, 4)):
        x = _adversarial(kind, (2, 3, 2, h, w), gen)
        z = torch.randn(*x.shape[:3], *_pooled(h, w, window), generator=gen)
        if kind == "relu":
            z = z.relu()  # the decoder's values are ReLU outputs: zeros must win overlaps too
        ref, idx = _reference_unpool(x, z, *window)
        offsets = window_argmax(x, *window)
        qh = torch.arange(idx.shape[-2]).view(-1, 1)
        qw = torch.arange(idx.shape[-1]).view(1, -1)
        (kh, kw), (sh, sw), (ph, pw) = window
        ref_offsets = (idx % (h * w) // w - (qh * sh - ph)) * kw + (idx % w - (qw * sw - pw))
        assert torch.equal(offsets, ref_offsets.float())
        assert torch.equal(unpool_argmax(z, offsets, *window, (h, w)), ref)
        flat = idx.flatten(0, 2).flatten(1)
        repeated += sum(int(r.numel() - r.unique().numel()) for r in flat)
    if window[1][0] < window[0][0] and kind != "zeros":  # (all-zero windows pick their first cell)
        assert repeated > 0, "the case must exercise overlapping writes"


class _PoolUnpool(nn.Module):
    def __init__(self, window) -> None:
        super().__init__()
        self.window = window

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        return unpool_argmax(z, window_argmax(x, *self.window), *self.window, (h, w))


@pytest.mark.parametrize("window", WINDOWS[:2], ids=WINDOW_IDS[:2])
def test_unpool_onnx_graph_equals_cpu_maxunpool(window, tmp_path: Path, one_torch_thread) -> None:
    """The exported pool-argmax + unpool graph: no MaxUnpool (nor scatter), TensorRT-parsable ops
    only, and ONNX Runtime equal to CPU MaxUnpool3d bit for bit on ties and overlaps, batch 1 and 2."""
    gen = torch.Generator().manual_seed(3)
    h, w = 8, 12
    hq, wq = _pooled(h, w, window)
    x = _adversarial("relu", (2, 4, 2, h, w), gen)
    z = torch.randn(2, 4, 2, hq, wq, generator=gen).relu()
    session, proto = onnx_session(_PoolUnpool(window), (x, z), ["x", "z"], ["y"], tmp_path / "unpool.onnx")
    ops = graph_ops(proto)
    assert not ops & {"MaxUnpool", "ScatterND", "ScatterElements", "Scatter"}, ops
    assert not audit_tensorrt_ops(proto)
    for kind in KINDS:
        for batch in (1, 2):
            x = _adversarial(kind, (batch, 4, 2, h, w), gen)
            z = torch.randn(batch, 4, 2, hq, wq, generator=gen).relu()
            ref, _ = _reference_unpool(x, z, *window)
            (got,) = session.run(None, {"x": x.numpy(), "z": z.numpy()})
            assert np.array_equal(got, ref.numpy()), (kind, batch)


# ----------------------------------------------------------------------------- conversion
def test_convert_maps_every_official_key(state, golden) -> None:
    converted = convert_state(state, "tased")
    assert converted.dropped == []
    assert set(converted.state) == set(tased.expected_state())
    assert len(converted.state) == len(state)
    assert tased.detect(state) and not vinet_s.detect(state)
    for key, value in state.items():
        ours = ("video_encoder." if key.startswith("base") else "fusion.") + key
        assert torch.equal(converted.state[ours], value.to(converted.state[ours].dtype))


def test_convert_refuses_unknown_missing_and_misshapen_keys(state) -> None:
    bad = dict(state)
    bad["head.weight"] = torch.zeros(3)
    bad["head.bias"] = torch.zeros(3)
    del bad["convtsp2.1.running_var"]
    bad["base1.0.conv_s.weight"] = torch.zeros(64, 3, 1, 5, 5)
    with pytest.raises(WeightsError) as err:
        tased.convert(bad)
    msg = str(err.value)
    assert "\n" not in msg
    assert "2 unknown key(s): head.weight, head.bias" in msg
    assert "1 missing key(s): convtsp2.1.running_var" in msg
    assert "1 misshapen key(s): base1.0.conv_s.weight [64, 3, 1, 5, 5] (expected [64, 3, 1, 7, 7])" in msg
    many = {f"extra{i}": torch.zeros(1) for i in range(9)} | dict(state)
    with pytest.raises(
        WeightsError, match=r"9 unknown key\(s\): extra0, extra1, extra2, extra3, extra4 \(\+4 more\)"
    ):
        tased.convert(many)
    vinet_like = {"backbone." + k: v for k, v in state.items()}
    with pytest.raises(WeightsError, match="unknown key"):
        tased.convert(vinet_like)


def test_convert_accepts_data_parallel_prefixes_and_no_step_counters(state) -> None:
    """run_train.py saves the DataParallel model; PyTorch < 0.4.1 wrote no num_batches_tracked."""
    prefixed = {"module." + k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    converted = tased.convert(prefixed)
    counters = [k for k in converted.state if k.endswith("num_batches_tracked")]
    assert counters and all(int(converted.state[k]) == 0 for k in counters)


def test_read_official_state(state, tmp_path: Path) -> None:
    small = {k: v for k, v in list(state.items())[:6]}
    path = tmp_path / "iter_0100.pt"
    torch.save({"module." + k: v for k, v in small.items()}, path)
    read = read_official_state(path)
    assert list(read) == list(small) and all(torch.equal(read[k], small[k]) for k in small)
    torch.save({"state_dict": small, "step": 3}, tmp_path / "nested.pt")
    assert list(read_official_state(tmp_path / "nested.pt")) == list(small)

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    (tmp_path / "text.pt").write_text("not weights\n")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    torch.save({"a": torch.zeros(1), "b": 3}, tmp_path / "mixed.pt")
    torch.save({}, tmp_path / "empty.pt")
    buffer = io.BytesIO()  # a zip that is no torch archive
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("x.txt", "x")
    (tmp_path / "zip.pt").write_bytes(buffer.getvalue())

    # weights_only=True refuses pickled objects other than tensors and plain containers
    torch.save({"a": torch.zeros(1), "when": datetime.date(2019, 10, 27)}, tmp_path / "pickled.pt")
    for name in (
        "missing.pt",
        "truncated.pt",
        "text.pt",
        "list.pt",
        "mixed.pt",
        "empty.pt",
        "zip.pt",
        "pickled.pt",
    ):
        with pytest.raises(WeightsError) as err:
            read_official_state(tmp_path / name)
        assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_build_refuses_shapes_the_official_network_cannot_take() -> None:
    with pytest.raises(ConfigError, match="32 frames"):
        tased.build(family_config("tased", {"video.clip_len": 16}))
    with pytest.raises(ConfigError, match="multiples of 32"):
        tased.build(family_config("tased", {"video.height": 240}))
    with pytest.raises(ConfigError, match="width 1.0"):
        tased.build(family_config("tased", {"video.s3d_width": 0.5}))


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("batch", [1, 2])
def test_decoder_matches_official(stages, golden, batch: int) -> None:
    """From the official Mixed_5c and pool indices to the official map, within 1e-4."""
    _, decoder = stages
    feats = [torch.from_numpy(golden["mixed_5c"][:batch])]
    feats += [torch.from_numpy(o) for o in official_offsets(golden, batch)]
    with torch.no_grad():
        out = decoder(*feats)
    assert out.shape == (batch, 1, H, W) and out.dtype == torch.float32
    assert max_abs(out[:, 0], golden["map"][:batch]) <= MAP_ATOL


# ----------------------------------------------------------------------------- the engines
@pytest.fixture(scope="module")
def checkpoint(state, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The golden weights saved as ``run_train.py`` saves them (the DataParallel model: every key
    prefixed ``module.``), converted by ``avsal convert --from tased`` at 64 x 96."""
    d = tmp_path_factory.mktemp("tased")
    source = save_official(state, d / "iter_0100.pt", data_parallel=True)
    return convert_cli(source, d / "tased.safetensors", "tased", *small_shape(H, W))


@pytest.fixture(scope="module")
def export_dir(checkpoint: Path) -> Path:
    return export_cli(checkpoint, checkpoint.parent / "export")


@pytest.fixture(scope="module")
def torch_window(checkpoint: Path, golden):  # type: ignore[no-untyped-def]
    """``batch -> (maps, encoder outputs)`` of the torch engine, computed and checked once per
    batch size (the torch test and the ONNX Runtime comparison share them, whichever runs first)."""

    @cache
    def run(batch: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        with open_engine(checkpoint, "torch") as engine:
            assert engine.variant == "tased" and engine.config.frames_shape("tased") == (3, 32, H, W)
            return check_engine_window(engine, golden, batch)

    return run


def check_engine_window(engine, golden, batch: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``engine.predict_window`` on the golden input tensors: the official map within 1e-4.

    The unpooling argmax offsets of the engine's encoder must equal the official indices at every
    window that is not a near tie. Where float noise flipped a near tie (the official code flips
    them between thread counts), the map is compared after putting the official choice back and
    running the engine's decoder again; with no flip, the map itself is compared."""
    frames = frames_of(golden, batch).numpy()
    maps, seen = predict_recorded(engine, frames, no_audio(batch))
    assert maps.shape == (batch, 1, H, W) and maps.dtype == np.float32
    feats = seen["video_encoder"]
    assert_feature_close(feats["v3"], golden["mixed_5c"][:batch], f"{engine.backend} Mixed_5c")
    pinned, flips = dict(feats), 0
    for j, (name, ref) in enumerate(
        zip(tased.VIDEO_OUTPUTS[1:], official_offsets(golden, batch), strict=True)
    ):
        near = near_tie_mask(golden, j, batch)
        flips += assert_offsets_agree(feats[name], ref, near, f"{engine.backend} {name}")
        pinned[name] = np.where(near, ref, feats[name]).astype(np.float32)
    if flips:
        maps_pinned = engine.run("fusion", pinned)["one_shot"]
        assert max_abs(maps_pinned[:, 0], golden["map"][:batch]) <= MAP_ATOL
    else:
        assert max_abs(maps[:, 0], golden["map"][:batch]) <= MAP_ATOL
    return maps, feats


@pytest.mark.parametrize("batch", [1, 2])
def test_torch_engine_gives_the_official_maps(torch_window, batch: int) -> None:
    assert torch_window(batch)[0].shape == (batch, 1, H, W)


def test_onnxruntime_engine_gives_the_official_maps(export_dir: Path, golden, torch_window) -> None:
    """``avsal export`` then ONNX Runtime at batch 1 and 2: the official maps (as above), and the
    torch engine's maps within 1e-4 wherever both chose the same argmax (exactly: no window may
    differ but a near tie). The exported graphs hold no MaxUnpool (nor any op TensorRT lacks)."""
    import onnx

    manifest = json.loads((export_dir / "manifest.json").read_text())
    for name, entry in manifest["components"].items():
        ops = graph_ops(onnx.load(str(export_dir / entry["file"])))
        assert "MaxUnpool" not in ops and not ops - TENSORRT_OPS, name
        assert "MaxUnpool" not in entry["ops"]
    with open_engine(export_dir, "onnxruntime") as engine:
        for batch in (1, 2):
            maps, feats = check_engine_window(engine, golden, batch)
            ref_maps, ref_feats = torch_window(batch)
            flips = 0
            for j, name in enumerate(tased.VIDEO_OUTPUTS[1:]):
                near = near_tie_mask(golden, j, batch)
                flips += assert_offsets_agree(feats[name], ref_feats[name], near, f"{name} ORT vs torch")
            if not flips:
                assert max_abs(maps, ref_maps) <= MAP_ATOL


def _decoded(path: Path) -> tuple[list[np.ndarray], float]:
    from avsal_deploy.data.source import MediaSource

    source = MediaSource(path)
    try:
        return [frame for frame, _, _ in source.media()], source.fps
    finally:
        source.close()


def test_prediction_uses_the_official_input_mode(export_dir: Path, tmp_path: Path) -> None:
    """A video through the real pipeline (decode, windower, engine) gives, for its computed frames,
    the engine's map of the window built here as ``run_example.py`` builds it: ``cv2.resize`` to
    the model size (INTER_LINEAR; :func:`~avsal_deploy.data.resize.cv2_linear_resize`, equal to
    OpenCV bit for bit above), ``(2p - 255) / 255``, frames ``t-31 .. t`` for the map of frame t,
    and for t < 31 the clip of frames ``t+31 .. t`` (the time-reversed clip)."""
    from avsal_deploy.data.resize import cv2_linear_resize
    from avsal_deploy.pipeline import Predictor, normalize_map

    video = write_video(tmp_path / "clip.mp4", n=40, fps=25, size=(72, 80))  # H shrinks, W grows
    frames, _ = _decoded(video)
    official = [
        ((2.0 * cv2_linear_resize(f, (H, W)).astype(np.float32) - 255.0) / 255.0).transpose(2, 0, 1)
        for f in frames
    ]
    with open_engine(export_dir, "onnxruntime") as engine:
        prediction = Predictor(engine, stride=64).predict(video)
        assert prediction.targets == [0, 39]
        for target, indices in ((0, range(31, -1, -1)), (39, range(8, 40))):
            clip = np.stack([official[i] for i in indices], axis=1)[None]
            expected = normalize_map(engine.predict_window(clip, no_audio(1), 0)[0, 0])
            assert max_abs(prediction.frame_maps[target], expected) <= MAP_ATOL, target
            assert expected.std() > 0.05


# ----------------------------------------------------------------------------- input mode
def test_cv2_linear_resize_is_opencv_bit_for_bit() -> None:
    """run_example.py resizes with cv2.resize (INTER_LINEAR, no antialiasing); golden
    ``tests/golden/cv2_resize.npz`` made with OpenCV 5.1.0 (opencv-python-headless) on x86."""
    from avsal_deploy.data.resize import cv2_linear_resize, resize

    g = load_golden("cv2_resize")
    n = len([k for k in g if k.startswith("src")])
    assert n == 5
    for i in range(n):
        dst = g[f"dst{i}"]
        assert np.array_equal(cv2_linear_resize(g[f"src{i}"], dst.shape[:2]), dst), i
    # a shrunk frame: OpenCV samples 2x2 pixels, the default (antialiased) resize averages them
    ours = resize(g["src0"], g["dst0"].shape[:2], axes=(0, 1))
    assert np.abs(ours - g["dst0"]).max() > 20


def test_input_mode_normalisation_is_the_official_transform(golden) -> None:
    """TASED's input mode (mean = std = 0.5) is run_example.py's (2p - 255) / 255 bit for bit: the
    two-step (p / 255 - 0.5) / 0.5 rounds a third of the values one unit in the last place away,
    enough to flip a near-tie argmax (see :func:`test_prediction_uses_the_official_input_mode`)."""
    from avsal_deploy.data.preprocess import preprocess_frames

    config = family_config("tased", {"video.height": H, "video.width": W})
    assert config.clip_len("tased") == 32 and config.window.mode == "causal"
    pre = preprocess_frames(golden["pixels"][0], config)  # frames at model size: no resampling
    ref = frames_of(golden, 1)[0].permute(1, 0, 2, 3).numpy()
    assert np.array_equal(pre, ref)
    two_step = (golden["pixels"][0].transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255) - 0.5) / 0.5
    assert 0 < max_abs(two_step, ref) <= 1e-6
