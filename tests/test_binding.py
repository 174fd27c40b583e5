"""The audio-visual binding map, its config switch and migration, the generator's task
options, the probes and the grid machinery (on a miniature grid)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avsal_deploy.config import LEGACY_DEFAULTS, Config, load_config
from avsal_deploy.data.synthetic import SceneOptions, generate, read_annotations
from avsal_deploy.errors import ConfigError
from avsal_deploy.models.binding import BindingInjector, BindingMap, BindingReadout
from avsal_deploy.models.build import build_model, checkpoint_config, example_inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ASSETS = Path(__file__).resolve().parents[1] / "avsal_deploy" / "assets"
SHIPPED = ASSETS / "hybrid-synthetic.safetensors"
# sha256 over (relative path, sha256) of every file of generate(root, 6, seed=3, n_frames=16) with the
# default options: written by the generator before its options existed (commit 96861ea).
DEFAULT_SET_DIGEST = "d0150584c37848c02a75f370fdea1849cc0fc1d5479ac2270ab8614be2594534"


def _digest(root: Path) -> str:
    """sha256 of ``find . -type f | sort | xargs sha256sum`` run in ``root`` (as recorded above)."""
    lines = []
    for p in sorted(str(q.relative_to(root)) for q in root.rglob("*") if q.is_file()):
        lines.append(f"{hashlib.sha256((root / p).read_bytes()).hexdigest()}  ./{p}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _config() -> Config:
    """The binding map alone (the first configuration measured on the audio-binding grid), without its read-out and the
    one-shot-conditioned UNet that the tiny profile also turns on."""
    return load_config(
        "tiny",
        {
            "video.clip_len": 16,
            "fusion.binding": True,
            "fusion.binding_readout": False,
            "unet.oneshot_condition": False,
        },
    )


def _pulsing_clip(config: Config, lag: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Frames with noise everywhere and one 8x8 patch whose luminance follows a pulse train that
    the envelope's loudness repeats ``lag`` frames later; a second patch pulses at another rate."""
    gen = torch.Generator().manual_seed(0)
    t = config.video.clip_len
    h, w = config.video.height, config.video.width
    frames = 0.1 * torch.randn(1, 3, t, h, w, generator=gen)
    time = torch.arange(t, dtype=torch.float32)

    def pulse(hz: float, phase: float, delay: int = 0) -> torch.Tensor:
        return torch.cos(torch.pi * hz * (time - delay) / 25.0 + phase) ** 2

    frames[:, :, :, 8:16, 8:16] += 2.0 * pulse(3.0, 0.0).reshape(1, 1, t, 1, 1)
    frames[:, :, :, 40:48, 60:68] += 2.0 * pulse(5.1, 1.0).reshape(1, 1, t, 1, 1)
    env = torch.zeros(1, config.audio.envelope_bands + 1, t)
    env[:, -1] = 0.3 + 0.4 * pulse(3.0, 0.0, delay=lag)  # the sound trails the picture by `lag`
    return frames, env, (2, 2)  # the source patch covers grid cells [2:4, 2:4]


@pytest.mark.parametrize("lag", [0, 2])
def test_binding_map_peaks_where_the_picture_moves_with_the_sound(lag: int) -> None:
    config = _config()
    frames, env, (r, c) = _pulsing_clip(config, lag)
    grid = (16, 24)
    maps = BindingMap(config, grid, max_lag=2)(frames, env)
    assert maps.shape == (1, 2, *grid)
    corr, spread = maps[0, 0], maps[0, 1]
    assert corr.argmax() // grid[1] in (r, r + 1) and corr.argmax() % grid[1] in (c, c + 1)
    assert corr[r : r + 2, c : c + 2].min() > 0.8
    assert corr[10:12, 15:17].max() < 0.6  # the other pulsing patch
    assert spread[r, c] > 5 * spread[6, 6] and spread[10:12, 15:17].min() > 5 * spread[6, 6]
    if lag:  # without lag tolerance the trailing sound binds less
        assert BindingMap(config, grid, max_lag=0)(frames, env)[0, 0, r, c] < corr[r, c] - 0.1


def test_binding_map_of_silence_is_exactly_zero_and_injector_starts_neutral() -> None:
    config = _config()
    frames, env, _ = _pulsing_clip(config, 0)
    maps = BindingMap(config, (16, 24), 2)(frames, torch.zeros_like(env))
    assert torch.equal(maps[:, 0], torch.zeros_like(maps[:, 0]))
    inj = BindingInjector(config, 8, (16, 24), 2)
    feature = torch.randn(1, 8, 8, 16, 24)
    assert torch.equal(inj(feature, frames, env), feature)  # zero-initialised projection


def test_profiles_switch_and_legacy_defaults() -> None:
    # the binding switches are on in the deployable profiles, and the paper profile stays the paper's
    for p in ("small", "tiny"):
        c = load_config(p)
        assert c.fusion.binding and c.fusion.binding_readout and c.unet.oneshot_condition, p
    paper = load_config("paper")
    assert not (paper.fusion.binding or paper.fusion.binding_readout or paper.unet.oneshot_condition)
    on = load_config("tiny", {"fusion.av_sync": False})
    assert on.uses_envelope() and on.uses_binding() and not on.uses_binding("diffsal")
    with pytest.raises(ConfigError, match="binding_scale"):
        load_config("tiny", {"fusion.binding_scale": 4})
    # a stored config without the new fields means the old architecture (no binding map)
    old = _config().to_dict()
    for dotted in LEGACY_DEFAULTS:
        section, name = dotted.split(".")
        old[section].pop(name)
    migrated = Config.from_dict(old)
    assert migrated.fusion.binding is False
    assert (
        migrated.architecture_fingerprint()
        == load_config("tiny", {"video.clip_len": 16, **LEGACY_DEFAULTS}).architecture_fingerprint()
    )
    assert migrated.architecture_fingerprint() != _config().architecture_fingerprint()


def test_a_checkpoint_written_before_the_new_fields_loads_with_its_old_architecture(
    legacy_checkpoint: Path,
) -> None:
    """Stored configs without the newer fields (the first shipped checkpoint, fingerprint
    4e7758a3b08eaa8c) load strictly as the architecture they were trained as."""
    from avsal_deploy.training.checkpoints import load_trained_model

    path = legacy_checkpoint
    config, variant, meta = checkpoint_config(path)
    assert config.architecture_fingerprint() == meta["fingerprint"] == "4e7758a3b08eaa8c"
    model, config, variant, _ = load_trained_model(path)  # strict: every tensor lands
    assert model.fusion is not None and model.fusion.binding is None and model.fusion.readout is None
    assert model.fusion.decoder.reduce is None  # the mean decoder
    assert config.unet.attention == "eca3d" and not config.uses_oneshot_condition(variant)
    assert model.unet is not None and model.unet.stem.in_channels == 1


def test_binding_model_exports_to_onnx_and_matches_torch(tmp_path: Path) -> None:
    """The fusion component with the binding map: ONNX (dynamic batch), TensorRT ops only, and
    ONNX Runtime agrees with torch."""
    ort = pytest.importorskip("onnxruntime")
    from avsal_deploy.export.components import component_module, component_specs
    from avsal_deploy.export.onnx import audit_tensorrt_ops, export_component

    config = _config()
    # a fixed initialisation: about one in 400 (torch seed 357 of 0-399) leaves the output constant
    torch.manual_seed(0)
    model = build_model(config, "hybrid").eval()
    with torch.no_grad():  # a non-zero projection, so the map matters
        model.fusion.binding.project.weight.normal_(0, 1.0)  # type: ignore[union-attr]
    spec = component_specs(config, "hybrid")["fusion"]
    assert tuple(spec.input_names[-2:]) == ("envelope", "frames")
    proto = export_component(model, spec, tmp_path / "fusion.onnx")
    assert audit_tensorrt_ops(proto) == set()
    feeds = spec.sample_inputs(batch=3)
    out = ort.InferenceSession(str(tmp_path / "fusion.onnx")).run(None, feeds)
    module = component_module(model, spec).eval()
    with torch.no_grad():
        ref = module(*(torch.from_numpy(feeds[n]) for n in spec.input_names))
    for a, b in zip(out, ref, strict=True):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4)
    with torch.no_grad():  # and the binding map changes the output when the envelope does
        quiet = module(
            *(torch.from_numpy(feeds[n] * (0.0 if n == "envelope" else 1.0)) for n in spec.input_names)
        )
    assert not torch.allclose(quiet[0], ref[0])


def _full_binding() -> Config:
    return load_config(
        "tiny",
        {
            "video.clip_len": 16,
            "fusion.binding": True,
            "fusion.binding_readout": True,
            "unet.oneshot_condition": True,
        },
    )


def test_readout_starts_neutral_and_reads_the_source() -> None:
    """The read-out adds nothing until trained (zero last conv) and, once its last conv passes the
    correlation channel, raises the logits where the picture pulses with the sound."""
    config = _config()
    frames, env, _ = _pulsing_clip(config, lag=1)
    size = (config.video.height, config.video.width)
    readout = BindingReadout(config, size, 2)
    logits = torch.zeros(1, 1, *size)
    with torch.no_grad():
        assert torch.equal(readout(logits, frames, env), logits)
        # hand-set weights: hidden unit 0 = relu(corr), output = that unit (a pure read-out)
        for conv in (readout.net[0], readout.net[2], readout.net[4]):
            conv.weight.zero_()
            conv.bias.zero_()
        readout.net[0].weight[0, 0, 1, 1] = 1.0
        readout.net[2].weight[0, 0, 1, 1] = 1.0
        readout.net[4].weight[0, 0] = 1.0
        out = readout(logits, frames, env)[0, 0]
    source, other = out[8:16, 8:16].mean(), out[40:48, 60:68].mean()
    assert source > 0.5 and source > 3 * other.abs()
    with pytest.raises(ConfigError, match="binding_readout needs fusion.binding"):
        load_config("tiny", {"fusion.binding": False})  # the profile's read-out without its map


def test_oneshot_conditioned_unet_uses_the_one_shot_map() -> None:
    config = _full_binding()
    model = build_model(config, "hybrid").eval()
    assert model.unet is not None and model.unet.stem.in_channels == 2
    frames, audio, envelope = example_inputs(config, "hybrid", 2)
    with torch.no_grad():
        cond = model.condition(frames, audio, envelope)
        x_t = torch.randn(2, *config.map_shape())
        t = torch.full((2,), 500.0)
        a = model.denoise(x_t, t, cond)
        cond.one_shot = 1.0 - cond.one_shot  # type: ignore[operator]
        b = model.denoise(x_t, t, cond)
        with pytest.raises(ValueError, match="oneshot_condition"):
            model.unet(x_t, t, *cond.conds, cond.audio)
    assert not torch.allclose(a, b)
    # diffsal has no one-shot map: the switch does not apply to it
    assert not config.uses_oneshot_condition("diffsal")
    assert build_model(config, "diffsal").unet.stem.in_channels == 1  # type: ignore[union-attr]


@pytest.mark.long
def test_full_binding_model_exports_and_onnxruntime_matches_torch(tmp_path: Path) -> None:
    """Read-out + one-shot-conditioned UNet: the whole export (both the UNet step and the fused
    DDIM graph take ``one_shot``), checked at batch 1 and 2 against the torch model with a non-zero
    read-out. Long (40 s): the suite's tiny export has the same graphs, with the read-out at its
    neutral start, and is checked against torch in tests/test_export.py."""
    pytest.importorskip("onnxruntime")
    from avsal_deploy import engine as engines
    from avsal_deploy.export.onnx import export_model

    config = _full_binding()
    torch.manual_seed(0)
    model = build_model(config, "hybrid").eval()
    with torch.no_grad():  # non-zero read-out and injector, so both paths matter
        model.fusion.readout.net[-1].weight.normal_(0, 0.5)  # type: ignore[union-attr]
        model.fusion.binding.project.weight.normal_(0, 0.5)  # type: ignore[union-attr]
    manifest = export_model(model, tmp_path / "x", ddim_steps=2)
    specs = manifest["components"]
    assert "one_shot" in [i["name"] for i in specs["unet_step"]["inputs"]]
    assert "one_shot" in [i["name"] for i in specs["ddim"]["inputs"]]
    eng = engines.open(tmp_path / "x", "onnxruntime")
    for batch in (1, 2):
        frames, audio, envelope = example_inputs(config, "hybrid", batch)
        noise = torch.randn(batch, *config.map_shape())
        with torch.no_grad():
            ref = model(frames, audio, 2, noise, envelope=envelope).numpy()
            ref3 = model(frames, audio, 3, noise, envelope=envelope).numpy()
        got = eng.predict_window(frames.numpy(), audio.numpy(), 2, noise.numpy(), envelope=envelope.numpy())
        got3 = eng.predict_window(frames.numpy(), audio.numpy(), 3, noise.numpy(), envelope=envelope.numpy())
        np.testing.assert_allclose(got, ref, atol=1e-4)  # the fused DDIM-2 graph
        np.testing.assert_allclose(got3, ref3, atol=1e-4)  # the step-by-step loop


# --------------------------------------------------------------------------- generator options
def test_default_options_write_the_old_bytes(tmp_path: Path) -> None:
    assert _digest(generate(tmp_path / "d", 6, profile="tiny", seed=3, n_frames=16)) == DEFAULT_SET_DIGEST


def test_task_options(tmp_path: Path) -> None:
    options = SceneOptions(
        objects=(4, 4),
        audio_lag_ms=(40.0, 60.0),
        rhythm_grid_hz=(1.5, 2.5, 3.5, 4.5),
        rhythm_jitter_hz=0.1,
        shapes=("disc", "square", "diamond", "hexagon"),
        hues="random",
    )
    root = generate(
        tmp_path / "o",
        0,
        seed=1,
        n_frames=12,
        audio_rate=16000,
        options=options,
        train_per_condition=2,
        test_per_condition=1,
    )
    lists = {
        s: (root / "fold_lists" / f"synthetic_list_{s}_1_fps.txt").read_text().split("\n")[:-1]
        for s in ("train", "test")
    }
    assert len(lists["train"]) == 6 and len(lists["test"]) == 3
    conditions = json.loads((root / "conditions.json").read_text())
    assert sorted(conditions[line.split()[0]] for line in lists["test"]) == ["music", "relevant", "silent"]
    info = json.loads((root / "annotations" / "synthetic" / "generator.json").read_text())
    assert info["scene"]["objects"] == [4, 4] and info["audio_rate"] == 16000
    for name, cond in conditions.items():
        objects, _ = read_annotations(root, name)  # type: ignore[misc]
        assert len(objects["objects"]) == 4
        assert {o["shape"] for o in objects["objects"]} <= set(options.shapes)
        assert all(
            abs(o["rhythm_hz"] - round(o["rhythm_hz"] - 0.5) - 0.5) <= 0.1 + 1e-9 for o in objects["objects"]
        )
        if cond == "relevant":
            assert 0.040 <= objects["audio_lag_s"] <= 0.060
        xs = sorted(round(o["centres"][0][1] > 32) for o in objects["objects"])
        assert xs == [0, 0, 1, 1]  # a 2 x 2 grid of cells: two objects in each half
    for bad in (
        {"objects": (1, 3)},
        {"objects": (2, 5)},
        {"audio_lag_ms": (10.0, 5.0)},
        {"shapes": ("disc", "blob", "square")},
        {"rhythm_grid_hz": (2.0, 3.0)},
        {"hues": "pastel"},
    ):
        with pytest.raises(ConfigError):
            SceneOptions(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="make 9 videos"):
        generate(tmp_path / "x", 5, train_per_condition=2, test_per_condition=1)


def test_audio_lag_delays_the_soundtrack_only(tmp_path: Path) -> None:
    from avsal_deploy.data.synthetic import render_scene

    base = render_scene(np.random.default_rng(4), "relevant", (64, 96), 25, options=SceneOptions())
    lagged = render_scene(
        np.random.default_rng(4), "relevant", (64, 96), 25, options=SceneOptions(audio_lag_ms=(60.0, 60.0))
    )
    assert np.array_equal(base.frames, lagged.frames) and lagged.audio_lag == pytest.approx(0.06)
    rate = base.audio_rate
    env = lambda a: np.sqrt(np.convolve(a.astype(np.float64) ** 2, np.ones(441) / 441, "same"))  # noqa: E731
    e0, e1 = env(base.audio), env(lagged.audio)
    shift = int(0.06 * rate)
    lags = range(0, 2 * shift, 50)
    best = max(lags, key=lambda d: np.corrcoef(e0[: len(e0) - d], e1[d:])[0, 1])
    assert abs(best - shift) <= 100


# --------------------------------------------------------------------------- probes
def test_binding_probe_finds_the_source_on_generated_data(tmp_path: Path) -> None:
    from avsal_deploy.research.probes import binding_alignment

    root = generate(
        tmp_path / "p",
        0,
        seed=2,
        n_frames=32,
        train_per_condition=1,
        test_per_condition=3,
        options=SceneOptions(audio_lag_ms=(0.0, 60.0)),
    )
    result = binding_alignment(root, _config(), stride=4)
    tolerant = result["lag_tolerant"]
    assert tolerant["windows"] > 0 and result["chance"] < 0.5 + 1e-9
    assert tolerant["source_top1"] > result["chance"] + 0.25
    assert tolerant["source_value"] > tolerant["others_value"] + 0.2


@pytest.mark.slow
def test_model_probes_run_on_an_untrained_model(tmp_path: Path) -> None:
    from avsal_deploy.research.probes import audio_rate_probe, score_model, sync_gate_alignment

    root = generate(tmp_path / "p", 0, seed=2, n_frames=16, train_per_condition=2, test_per_condition=1)
    model = build_model(_config(), "hybrid").eval()
    gate = sync_gate_alignment(model, root, stride=8)
    assert gate["windows"] >= 1 and 0.0 <= gate["source_top1"] <= 1.0
    probe = audio_rate_probe(model, root, stride=8)
    assert probe["windows"]["train"] >= 2 and set(probe["audio_encoder"]) == {
        "train_r2",
        "test_r2",
        "test_rate_accuracy",
    }
    assert probe["envelope_spectrum"]["train_r2"] > 0.5  # the rate is in the input's loudness
    scores = score_model(model, root, steps=0, stride=8)
    assert set(scores) == {"relevant", "music", "silent"}


# --------------------------------------------------------------------------- grid
GRID = """
[defaults]
seeds = 2
frames = 16
train_per_condition = 1
test_per_condition = 1
stride = 8
[defaults.overrides]
"train.max_steps" = 2
"train.batch_size" = 2
"train.warmup_steps" = 0
"data.windows_per_video" = 2
"model.overrides.fusion.binding" = true

[[cell]]
name = "default"

[[cell]]
name = "four"
objects = [3, 4]
audio_lag_ms = [0, 60]
"""


def test_grid_file_is_checked(tmp_path: Path) -> None:
    from avsal_deploy.research.grid import load_grid

    path = tmp_path / "g.toml"
    path.write_text(GRID)
    cells = load_grid(path)
    assert [c["name"] for c in cells] == ["default", "four"]
    assert cells[0]["scene"] == SceneOptions() and cells[1]["scene"].objects == (3, 4)
    assert cells[1]["overrides"]["train.max_steps"] == 2 and cells[1]["seeds"] == 2
    path.write_text(GRID + '\n[[cell]]\nname = "four"\n')
    with pytest.raises(ConfigError, match="unique name"):
        load_grid(path)
    path.write_text(GRID.replace('name = "four"', 'name = "four"\nobjekts = 3'))
    with pytest.raises(ConfigError, match="objekts"):
        load_grid(path)


def test_grid_summary_of_bad_output_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--summary-only`` on a directory the grid never ran into, or on a damaged results.json,
    fails with one line naming the path; a summary already written stays as it was."""
    from avsal_deploy.cli import main

    grid = tmp_path / "g.toml"
    grid.write_text(GRID)
    out = tmp_path / "out"
    args = ["experiment", "audio-relevance", "--grid", str(grid), "--out", str(out), "--summary-only"]
    assert main(args) == 2
    assert f"{out}: no such directory" in capsys.readouterr().err
    out.mkdir()
    (out / "summary.md").write_text("earlier summary\n")
    assert main(args) == 2
    assert "nothing to summarise" in capsys.readouterr().err
    (out / "four").mkdir()
    (out / "four" / "results.json").write_text('{"conditions": ')
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(out / "four" / "results.json") in err and "not an audio-relevance results.json" in err
    assert (out / "summary.md").read_text() == "earlier summary\n" and not (out / "summary.json").exists()


def test_criteria_per_cell() -> None:
    from avsal_deploy.research.grid import cell_criteria

    def entry(av: list[float], v: list[float], centre: float = 0.2) -> dict:
        stats = lambda xs: {"mean": float(np.mean(xs)), "std": 0.0, "per_seed": xs}  # noqa: E731
        return {
            "av": {"cc": stats(av), "nss": stats([3.0] * len(av))},
            "v": {"cc": stats(v), "nss": stats([3.0] * len(v))},
            "center": {"cc": stats([centre] * len(av)), "nss": stats([0.5] * len(av))},
        }

    good = {
        "conditions": {
            "relevant": entry([0.85, 0.9], [0.7, 0.75]),
            "music": entry([0.8, 0.8], [0.81, 0.8]),
            "silent": entry([0.8, 0.8], [0.8, 0.8]),
        }
    }
    crit = cell_criteria(good)
    assert crit["all"] and crit["relevant_margin"]["min_difference"] == pytest.approx(0.15)
    bad = {"conditions": {**good["conditions"], "relevant": entry([0.82, 0.76], [0.7, 0.71])}}
    crit = cell_criteria(bad)
    assert not crit["all"] and not crit["relevant_margin"]["holds"] and not crit["relevant_av"]["holds"]
    worse = {"conditions": {**good["conditions"], "music": entry([0.77, 0.78], [0.8, 0.8])}}
    assert not cell_criteria(worse)["music_no_worse"]["holds"]


@pytest.mark.slow
def test_miniature_grid_runs_and_summarises(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from avsal_deploy.cli import main

    path = tmp_path / "g.toml"
    path.write_text(GRID)
    out = tmp_path / "grid"
    assert main(["experiment", "audio-relevance", "--grid", str(path), "--out", str(out)]) == 0
    assert "| cell |" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert [c["name"] for c in summary["cells"]] == ["default", "four"]
    for cell in summary["cells"]:
        results = json.loads((out / cell["name"] / "results.json").read_text())
        assert results["seeds"] == [0, 1]
        for cond in ("relevant", "music", "silent"):
            assert cell["cc"][cond]["av"]["mean"] == results["conditions"][cond]["av"]["cc"]["mean"]
        assert set(cell["criteria"]) >= {
            "relevant_margin",
            "relevant_av",
            "music_no_worse",
            "silent_no_worse",
            "beat_centre",
            "all",
        }
    assert (out / "summary.md").read_text().count("\n| ") >= 2 and (out / "summary.png").is_file()
    info = json.loads((out / "four" / "data" / "annotations" / "synthetic" / "generator.json").read_text())
    assert info["scene"]["objects"] == [3, 4]
    # a partial grid: the summary of what has run, the rest listed as missing
    path.write_text(GRID + '\n[[cell]]\nname = "later"\n')
    assert (
        main(["experiment", "audio-relevance", "--grid", str(path), "--out", str(out), "--summary-only"]) == 0
    )
    partial = json.loads((out / "summary.json").read_text())
    assert partial["missing"] == ["later"] and len(partial["cells"]) == 2 and not partial["all_hold"]
    assert (
        partial["cells"][0]["cc"] == summary["cells"][0]["cc"] and "later" in (out / "summary.md").read_text()
    )
    # the single-set contract still holds
    single = tmp_path / "single"
    assert (
        main(
            [
                "experiment",
                "audio-relevance",
                "--data",
                str(out / "default" / "data"),
                "--out",
                str(single),
                "--seeds",
                "1",
                "--quick",
            ]
        )
        == 0
    )
    results = json.loads((single / "results.json").read_text())
    assert isinstance(results["conditions"]["relevant"]["av"]["cc"]["mean"], float)
    capsys.readouterr()
    assert main(["experiment", "audio-relevance", "--out", str(single)]) != 0
    assert "exactly one of --data" in capsys.readouterr().err
