"""The synthetic audio-visual benchmark: layout, ground truth that follows the sound, determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import av
import numpy as np
import pytest

from avsal_deploy.config import load_config
from avsal_deploy.data.datasets import StavisVideo, open_dataset
from avsal_deploy.data.synthetic import (
    CONDITIONS,
    AttentionModel,
    Scene,
    expected_density,
    generate,
    make_sample_clip,
    read_annotations,
    render_scene,
    rhythm,
)
from avsal_deploy.errors import ConfigError

N_VIDEOS = 12


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("bench"), N_VIDEOS, profile="tiny", seed=0)


def _scene(root: Path, name: str) -> Scene:
    """Re-render a generated video from the seed and parameters in generator.json (as generate does)."""
    info = json.loads((root / "annotations" / "synthetic" / "generator.json").read_text())
    index = int(name.rsplit("_", 1)[1])
    seed = np.random.SeedSequence(info["seed"]).spawn(info["n_videos"] + 1)[index + 1]
    condition = json.loads((root / "conditions.json").read_text())[name]
    return render_scene(
        np.random.default_rng(seed),
        condition,
        tuple(info["size"]),
        info["n_frames"],
        info["fps"],
        info["audio_rate"],
        AttentionModel(**info["attention"]),
    )


def _all_videos(root: Path) -> list[StavisVideo]:
    videos = [v for split in ("train", "test") for v in open_dataset(root, "synthetic", split)]
    assert all(isinstance(v, StavisVideo) for v in videos)
    return videos  # type: ignore[return-value]


def _objects(video: StavisVideo) -> dict:
    return json.loads((video.annotation_dir / "objects.json").read_text())


def _envelope(audio: np.ndarray, rate: int, fps: float, n_frames: int) -> np.ndarray:
    """Per-frame RMS of the audio in a one-frame window centred on each frame's time."""
    hop = rate / fps
    out = np.empty(n_frames)
    for i in range(n_frames):
        lo, hi = int(max(0, round((i - 0.5) * hop))), int(round((i + 0.5) * hop))
        out[i] = np.sqrt(np.mean(audio[lo:hi].astype(np.float64) ** 2))
    return out


def _rhythms(info: dict, n_frames: int, fps: float) -> list[np.ndarray]:
    t = np.arange(n_frames) / fps
    return [rhythm(t, o["rhythm_hz"], o["phase"]) for o in info["objects"]]


def test_layout_splits_and_conditions(bench: Path) -> None:
    conditions = json.loads((bench / "conditions.json").read_text())
    assert len(conditions) == N_VIDEOS
    assert sorted(set(conditions.values())) == sorted(CONDITIONS)
    assert all(list(conditions.values()).count(c) == N_VIDEOS // 3 for c in CONDITIONS)
    train = open_dataset(bench, "synthetic", "train", fold=1)
    test = open_dataset(bench, "synthetic", "test", fold=1)
    names_train, names_test = {v.name for v in train}, {v.name for v in test}
    assert not names_train & names_test and len(names_train | names_test) == N_VIDEOS
    assert len(train) == 9 and len(test) == 3  # about 2/3 : 1/3 per condition
    for ds in (train, test):
        assert {v.condition for v in ds} == set(CONDITIONS)
        assert all(v.condition == conditions[v.name] for v in ds)
    for line in (bench / "fold_lists" / "synthetic_list_test_1_fps.txt").read_text().splitlines():
        name, n, fps = line.split()
        assert name in names_test and int(n) == 48 and float(fps) == 25.0


def test_shapes_and_value_ranges(bench: Path) -> None:
    cfg = load_config("tiny")
    h, w = cfg.video.height, cfg.video.width
    for v in open_dataset(bench, "synthetic", "test"):
        assert v.n_frames == 6 * cfg.video.clip_len and v.fps == 25.0
        scene = _scene(bench, v.name)  # re-rendered once per video from its seed
        frames = v.frames([0, v.n_frames - 1])
        assert frames.shape == (2, h, w, 3) and frames.dtype == np.uint8
        assert frames.std() > 10  # textured, not blank
        for i in (0, v.n_frames // 2, v.n_frames - 1):
            sal = v.saliency_map(i)
            assert sal.shape == (h, w) and sal.dtype == np.float32
            assert sal.min() >= 0.0 and 0.95 <= sal.max() <= 1.0
            fix = v.fixations(i)
            assert fix.shape == (h, w) and fix.dtype == np.bool_
            # the stored fixation map is the scene's, bit for bit (MAT round trip): re-render it
            np.testing.assert_array_equal(fix, scene.fixations[i])
            # the density map is the blurred fixations: high where people looked
            assert sal[fix].mean() > 4 * sal.mean()
        # where the observers looked, over the whole video (each fixated pixel given to the
        # nearest object, in radii): mostly at the sound's source when the sound is relevant
        # (source_prob 0.8 of the fixations not on the centre), the objects alike otherwise
        t, ys, xs = np.nonzero(scene.fixations)
        centres = np.stack([o.centres[t] for o in scene.objects])  # [K, N, 2] (x, y)
        radii = np.stack([o.radii[t] for o in scene.objects])
        nearest = (np.hypot(centres[..., 0] - xs, centres[..., 1] - ys) / radii).argmin(axis=0)
        share = np.bincount(nearest, minlength=len(scene.objects)) / len(nearest)
        if v.condition == "relevant":
            assert scene.source is not None and share[scene.source] > 0.6, share
        else:
            assert scene.source is None and share.max() < 1 / len(scene.objects) + 0.15, share
        audio, rate = v.audio()
        assert rate == 22050 and audio.dtype == np.float32 and audio.ndim == 1
        assert abs(len(audio) - v.n_frames / v.fps * rate) <= 1
        assert np.abs(audio).max() <= 1.0
        if v.condition == "silent":
            assert not audio.any()
        else:
            assert np.abs(audio).max() > 0.3


def test_objects_are_equally_salient_to_the_eye(bench: Path) -> None:
    for v in _all_videos(bench):
        info = _objects(v)
        objs = info["objects"]
        assert len(objs) >= 2
        assert len({o["shape"] for o in objs}) == len(objs)  # distinct shapes ...
        assert len({tuple(o["colour"]) for o in objs}) == len(objs)  # ... and colours
        lumas = [float(np.dot(o["colour"], [0.299, 0.587, 0.114])) for o in objs]
        np.testing.assert_allclose(lumas, lumas[0], atol=2e-3)  # same contrast to the background
        radii = np.array([o["radii"] for o in objs])
        base = radii.min(axis=1)
        np.testing.assert_allclose(base, base[0], rtol=0.02)  # same size range
        steps = [np.median(np.linalg.norm(np.diff(np.array(o["centres"]), axis=0), axis=1)) for o in objs]
        np.testing.assert_allclose(steps, steps[0], rtol=1e-2)  # same speed (json keeps 3 decimals)
        rates = sorted(o["rhythm_hz"] for o in objs)
        assert min(np.diff(rates)) > 0.6  # distinct rhythms, so audio can single one out


def test_sound_source_is_not_predictable_from_vision() -> None:
    """Which object sounds is random w.r.t. its cell, shape and rhythm rank."""
    cells, shapes, ranks = set(), set(), set()
    for seed in range(30):
        scene = render_scene(np.random.default_rng(seed), "relevant", (64, 96), 4)
        src = scene.objects[scene.source]
        cells.add(src.cell)
        shapes.add(src.shape)
        ranks.add(sorted(o.rhythm_hz for o in scene.objects).index(src.rhythm_hz))
    assert len(cells) == 3 and len(shapes) >= 4 and len(ranks) == 3


def _fixation_shares(v: StavisVideo, info: dict) -> np.ndarray:
    """Fraction of all fixations within 1.5 radii of each object."""
    hits = np.zeros(len(info["objects"]))
    total = 0
    for i in range(v.n_frames):
        ys, xs = np.nonzero(v.fixations(i))
        total += len(xs)
        for k, o in enumerate(info["objects"]):
            cx, cy = o["centres"][i]
            hits[k] += np.sum(np.hypot(xs - cx, ys - cy) <= 1.5 * o["radii"][i])
    return hits / total


def test_fixations_follow_the_sound_source_only_when_sound_is_relevant(bench: Path) -> None:
    seen = set()
    for v in _all_videos(bench):
        info = _objects(v)
        shares = _fixation_shares(v, info)
        seen.add(v.condition)
        if v.condition == "relevant":
            src = info["source"]
            assert src is not None
            others = np.delete(shares, src)
            assert shares[src] > 0.55, shares  # model: 0.9 * 0.8 = 0.72 of fixations
            assert others.max() < 0.25, shares
        else:
            assert info["source"] is None
            # visual saliency only: every (equally salient) object gets a similar share
            assert shares.max() - shares.min() < 0.2, shares
            assert shares.min() > 0.5 / len(shares), shares
    assert seen == set(CONDITIONS)


def test_expected_density_is_what_the_sampled_maps_estimate(bench: Path, tmp_path: Path) -> None:
    """The attention model's expected map (oracle) matches the sampled ground truth far better than
    the sound-blind one on relevant videos, and equally on the others; it peaks on the source."""
    from avsal_deploy.metrics import cc

    assert read_annotations(tmp_path, "synth_000") is None  # not a generated set
    for v in _all_videos(bench):
        objects, attention = read_annotations(bench, v.name)
        frames = list(range(0, v.n_frames, 6))
        oracle = expected_density(objects, attention, frames)
        blind = expected_density(objects, attention, frames, know_source=False)
        assert oracle.shape == (len(frames), *objects["size"]) and np.allclose(oracle.max(axis=(1, 2)), 1)
        truth = [v.saliency_map(f) for f in frames]
        cc_oracle = np.mean([cc(m, t) for m, t in zip(oracle, truth, strict=True)])
        cc_blind = np.mean([cc(m, t) for m, t in zip(blind, truth, strict=True)])
        assert cc_oracle > 0.85, (v.name, cc_oracle)
        if v.condition == "relevant":
            assert cc_oracle > cc_blind + 0.1
            src = objects["objects"][objects["source"]]
            y, x = np.unravel_index(np.argmax(oracle[0]), oracle[0].shape)
            assert np.hypot(x - src["centres"][0][0], y - src["centres"][0][1]) < 2.0
        else:
            np.testing.assert_array_equal(oracle, blind)
    half = expected_density(objects, attention, [0], size=(32, 48))
    assert half.shape == (1, 32, 48)


def test_audio_envelope_follows_the_source_rhythm(bench: Path) -> None:
    music_corrs = []
    for v in _all_videos(bench):
        info = _objects(v)
        audio, rate = v.audio()
        env = _envelope(audio, rate, v.fps, v.n_frames)
        rhythms = _rhythms(info, v.n_frames, v.fps)
        if v.condition == "silent":
            assert not env.any()
            continue
        corrs = np.array([np.corrcoef(env, r)[0, 1] for r in rhythms])
        # modulation of the loudness explained by each object's rhythm, relative to the mean level
        slopes = np.array([np.cov(env / env.mean(), r)[0, 1] / r.var() for r in rhythms])
        # the recorded radii are the same rhythm the audio follows (pulsing, not just a label)
        for o, r in zip(info["objects"], rhythms, strict=True):
            assert np.corrcoef(o["radii"], r)[0, 1] > 0.999
        if v.condition == "relevant":
            src = info["source"]
            assert corrs[src] > 0.95
            assert corrs[src] > np.delete(corrs, src).max() + 0.5
            assert slopes[src] > 1.5
        else:
            assert np.abs(slopes).max() < 0.1  # loudness nearly flat: no object is "heard"
            music_corrs.extend(np.abs(corrs))
    assert np.mean(music_corrs) < 0.35


def test_same_seed_writes_identical_bytes(tmp_path: Path) -> None:
    def digest(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    a = digest(generate(tmp_path / "a", 3, seed=7, n_frames=6))
    b = digest(generate(tmp_path / "b", 3, seed=7, n_frames=6))
    c = digest(generate(tmp_path / "c", 3, seed=8, n_frames=6))
    assert a == b and len(a) == 3 * 6 * 3 + 3 + 3 + 2 + 1 + 1  # frames, maps, mats; wavs, objects; lists ...
    changed = [k for k in a if k.endswith((".jpg", ".mat")) and a[k] != c.get(k)]
    assert len(changed) > 40


def test_regenerating_replaces_the_previous_set(tmp_path: Path) -> None:
    generate(tmp_path, 6, n_frames=5)
    generate(tmp_path, 3, n_frames=4, size=(48, 80), fps=12.5)
    train = open_dataset(tmp_path, "synthetic", "train")
    assert not (tmp_path / "video_frames" / "synthetic" / "synth_005").exists()
    v = train.videos[0]
    assert v.n_frames == 4 and v.fps == 12.5
    assert v.frames([3]).shape == (1, 48, 80, 3)
    assert v.saliency_map(3).shape == (48, 80)


def test_invalid_requests_raise_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="n_videos"):
        generate(tmp_path, 0)
    with pytest.raises(ConfigError, match="too small"):
        generate(tmp_path, 1, size=(32, 8))
    with pytest.raises(ConfigError, match="even"):
        make_sample_clip(tmp_path / "x.mp4", size=(65, 96))


def test_sample_clip_is_a_playable_av_mp4_with_ground_truth(tmp_path: Path) -> None:
    path = make_sample_clip(tmp_path / "demo.mp4", seconds=1.0, size=(96, 160), fps=25, seed=1)
    assert path == tmp_path / "demo.mp4" and path.stat().st_size > 1000
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "aac"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert len(frames) == 25 and frames[0].shape == (96, 160, 3)
    assert len(audio) >= 22050 * 0.95 and np.abs(audio).max() > 0.1
    gt = np.load(tmp_path / "demo_gt.npz")
    assert gt["maps"].shape == (25, 96, 160) and gt["fixations"].shape == (25, 96, 160)
    assert gt["fixations"].dtype == np.bool_ and float(gt["fps"]) == 25.0
    src = int(gt["source"])
    # the demo's ground truth looks at the sound source
    cx, cy = gt["centres"][src, 12]
    ys, xs = np.nonzero(gt["fixations"][12])
    assert np.mean(np.hypot(xs - cx, ys - cy) <= 1.5 * gt["radii"][src, 12]) > 0.4
