"""Export: ONNX components, manifest, TensorRT op audit, engines and parity with torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from avsal_deploy import engine as engines
from avsal_deploy.cli import main
from avsal_deploy.config import load_config
from avsal_deploy.engine.eager import TorchEngine
from avsal_deploy.errors import AvsalError, BackendUnavailableError, ConfigError
from avsal_deploy.export.components import component_specs
from avsal_deploy.export.onnx import TENSORRT_OPS, audit_tensorrt_ops, export_model, graph_ops
from avsal_deploy.specs import read_manifest, sample_window, sha256_file

TOL = 1e-4


@pytest.fixture(scope="module")
def exports(tiny_models, tiny_export, tmp_path_factory) -> dict[str, Path]:
    """Every variant exported once; diffsal also with the fused 2-step DDIM graph."""
    root = tmp_path_factory.mktemp("exports")
    out = {"hybrid": tiny_export}
    export_model(tiny_models["avrsp"], root / "avrsp")
    export_model(tiny_models["diffsal"], root / "diffsal", ddim_steps=2)
    out["avrsp"], out["diffsal"] = root / "avrsp", root / "diffsal"
    return out


VARIANTS = ("avrsp", "diffsal", "hybrid")


@pytest.mark.parametrize("variant", VARIANTS)
def test_manifest_lists_components_with_symbolic_batch(exports, variant) -> None:
    d = exports[variant]
    manifest = json.loads((d / "manifest.json").read_text())
    config = load_config("tiny")
    expected = {"avrsp": ["video_encoder", "audio_encoder", "fusion"]}
    expected["diffsal"] = ["video_encoder", "audio_encoder", "unet_step", "ddim"]
    expected["hybrid"] = ["video_encoder", "audio_encoder", "fusion", "unet_step"]
    assert list(manifest["components"]) == expected[variant]
    assert manifest["variant"] == variant and manifest["profile"] == "tiny"
    assert manifest["architecture_fingerprint"] == config.architecture_fingerprint()
    assert manifest["weights"]["sha256"] == sha256_file(d / manifest["weights"]["file"])
    frames = manifest["components"]["video_encoder"]["inputs"][0]
    assert frames == {"name": "frames", "shape": ["batch", *config.frames_shape(variant)], "dtype": "float32"}
    for name, entry in manifest["components"].items():
        path = d / entry["file"]
        assert entry["sha256"] == sha256_file(path)
        proto = onnx.load(str(path))
        graph_inputs = {i.name: i for i in proto.graph.input}
        assert [i["name"] for i in entry["inputs"]] == list(graph_inputs), name
        for item in entry["inputs"]:
            dims = graph_inputs[item["name"]].type.tensor_type.shape.dim
            assert dims[0].dim_param == "batch", (name, item["name"])
            assert [x.dim_value for x in dims[1:]] == item["shape"][1:]


def test_checkpoint_is_recorded(tiny_export, tiny_checkpoint) -> None:
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    assert manifest["checkpoint"]["sha256"] == sha256_file(tiny_checkpoint)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_op_is_tensorrt_supported(exports, variant) -> None:
    for entry in json.loads((exports[variant] / "manifest.json").read_text())["components"].values():
        proto = onnx.load(str(exports[variant] / entry["file"]))
        assert audit_tensorrt_ops(proto) == set(), entry["file"]
        assert set(entry["ops"]) == graph_ops(proto) <= TENSORRT_OPS


def test_op_audit_flags_unsupported_ops() -> None:
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["idx"])
    graph = helper.make_graph([node], "g", [], [])
    assert audit_tensorrt_ops(helper.make_model(graph)) == {"NonMaxSuppression"}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("batch", [1, 2])
def test_components_match_torch(exports, tiny_models, variant, batch) -> None:
    ort = engines.open(exports[variant], "onnxruntime")
    ref = TorchEngine(tiny_models[variant], ort.specs)
    for name, spec in ort.specs.items():
        feeds = spec.sample_inputs(batch, seed=batch)
        got, want = ort.run(name, feeds), ref.run(name, feeds)
        for key in spec.output_names:
            assert (
                got[key].shape
                == want[key].shape
                == (batch, *next(t.shape for t in spec.outputs if t.name == key))
            )
            scale = max(1.0, float(np.abs(want[key]).max()))
            assert np.abs(got[key] - want[key]).max() <= TOL * scale, (variant, name, key)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("batch", [1, 2])
def test_windows_with_ddim_match_torch_model(exports, tiny_models, variant, batch) -> None:
    """The whole window (encoders, fusion, DDIM loop) on ONNX Runtime equals model.forward."""
    config = load_config("tiny")
    ort = engines.open(exports[variant], "onnxruntime")
    window = sample_window(ort.specs, batch, seed=batch)
    frames, audio, envelope = window["frames"], window["audio"], window.get("envelope")
    assert (envelope is not None) == (variant != "diffsal")  # the tiny profile has AV sync
    if envelope is not None:
        assert "envelope" in ort.specs["fusion"].input_names
        with pytest.raises(ConfigError, match="per-frame audio envelope"):
            ort.predict_window(frames, audio, 0)
    steps_list = {"avrsp": [None], "diffsal": [1, 2, 3], "hybrid": [0, 1, 2]}[variant]
    for steps in steps_list:
        noise = ort.make_noise(batch, seed=7)
        got = ort.predict_window(frames, audio, steps, noise, envelope=envelope)
        with torch.no_grad():
            want = tiny_models[variant](
                torch.from_numpy(frames),
                torch.from_numpy(audio),
                steps=steps,
                noise=torch.from_numpy(noise),
                envelope=None if envelope is None else torch.from_numpy(envelope),
            ).numpy()
        assert got.shape == (batch, 1, config.video.height, config.video.width)
        assert np.abs(got - want).max() <= TOL, (variant, steps)


def test_fused_ddim_graph_equals_the_loop(exports) -> None:
    ort = engines.open(exports["diffsal"], "onnxruntime")
    config = ort.config
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((2, *config.frames_shape("diffsal"))).astype(np.float32)
    audio = rng.standard_normal((2, *config.audio_input_shape("diffsal"))).astype(np.float32)
    cond = ort.condition(frames, audio)
    noise = ort.make_noise(2, 3)
    fused = ort.sample(cond, 2, noise)  # the exported graph has steps=2
    ort.specs.pop("ddim")
    looped = ort.sample(cond, 2, noise)
    assert np.abs(fused - looped).max() <= TOL


def test_torch_backend_reads_the_export(exports, tiny_models) -> None:
    eng = engines.open(exports["hybrid"], "torch")
    ref = tiny_models["hybrid"].state_dict()
    for key, value in eng.model.state_dict().items():
        assert torch.equal(value, ref[key]), key


def test_specs_profile_and_sample_inputs_follow_the_config() -> None:
    config = load_config("small")
    specs = component_specs(config, "hybrid", max_batch=4)
    lo, opt, hi = specs["video_encoder"].trt_profile()["frames"]
    assert lo == (1, *config.frames_shape()) and hi == (4, *config.frames_shape())
    t = specs["unet_step"].sample_inputs(3)["t"]
    assert t.shape == (3,) and t.dtype == np.float32
    assert bool(((t >= 0) & (t < config.diffusion.timesteps) & (t == np.round(t))).all())


def test_open_errors_are_clear(tmp_path, exports) -> None:
    with pytest.raises(AvsalError, match="no manifest"):
        engines.open(tmp_path)
    with pytest.raises(AvsalError, match="unknown engine backend"):
        engines.open(exports["avrsp"], "caffe")
    with pytest.raises(BackendUnavailableError, match="NVIDIA GPU"):
        engines.open(exports["avrsp"], "tensorrt")
    with pytest.raises(BackendUnavailableError, match="gpu"):
        engines.open(exports["avrsp"], "onnxruntime", providers=["CUDAExecutionProvider"])


def test_build_engines_says_it_needs_a_gpu(exports, capsys) -> None:
    assert main(["build-engines", "--export", str(exports["avrsp"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("avsal: error:") and "NVIDIA GPU" in err and len(err.strip().splitlines()) == 1


def test_export_cli_with_checkpoint(tmp_path, tiny_checkpoint, capsys) -> None:
    out = tmp_path / "exp"
    args = [
        "export",
        "--checkpoint",
        str(tiny_checkpoint),
        "--out",
        str(out),
        "--components",
        "audio_encoder",
    ]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["components"]) == ["audio_encoder"]
    assert manifest["checkpoint"]["sha256"] == sha256_file(tiny_checkpoint)


def test_export_cli_refuses_checkpoint_of_another_profile(tmp_path, tiny_checkpoint, capsys) -> None:
    args = ["export", "--profile", "small", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path)]
    assert main(args) == 2
    assert "profile tiny, not small" in capsys.readouterr().err
    assert not (tmp_path / "manifest.json").exists()


def test_int8_calibration_feeds_come_from_clips(tmp_path, exports) -> None:
    """The calibration pass (runs on ONNX Runtime) gives every component real inputs of its spec."""
    from media_utils import write_video

    from avsal_deploy.export.quantize import calibration_feeds, quantize_export

    clips = [write_video(tmp_path / f"c{i}.mp4", n=9, size=(64, 96), audio="aac") for i in range(2)]
    with engines.open(exports["hybrid"], "onnxruntime") as ort:
        feeds = calibration_feeds(ort, clips, max_windows=4)
    specs = read_manifest(exports["hybrid"])[2]
    assert set(feeds) == set(specs)
    for name, batches in feeds.items():
        assert len(batches) == 4, name
        for feed in batches:
            for t in specs[name].inputs:
                assert feed[t.name].shape == t.full_shape(1) and feed[t.name].dtype == np.float32
    from avsal_deploy.diffusion import DDIMScheduler

    steps = load_config("tiny").diffusion.sampling_steps
    allowed = set(DDIMScheduler.from_config(load_config("tiny").diffusion).timesteps_for(steps))
    assert {int(f["t"][0]) for f in feeds["unet_step"]} <= allowed
    # The Q/DQ export (what ONNX Runtime INT8 on CPU and TensorRT's strongly typed build take)
    # opens like any export and stays close to fp32 on the calibration windows.
    int8 = quantize_export(exports["hybrid"], tmp_path / "int8", "int8", feeds)
    assert json.loads((int8 / "manifest.json").read_text())["precision"] == "int8"
    ops = graph_ops(onnx.load(str(int8 / "video_encoder.onnx")))
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(ops)
    q, f = engines.open(int8, "onnxruntime"), engines.open(exports["hybrid"], "onnxruntime")
    feed = feeds["video_encoder"][0]
    a, b = q.run("video_encoder", feed)["v3"], f.run("video_encoder", feed)["v3"]
    assert np.isfinite(a).all() and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9


def test_quantize_cli_needs_clips_and_tensorrt_needs_a_gpu(tmp_path, exports, capsys) -> None:
    assert main(["quantize", "--export", str(exports["avrsp"]), "--out", str(tmp_path / "q")]) == 2
    assert "--calib-clip VIDEO" in capsys.readouterr().err
    assert main(["-q", "predict", "--sample", "--engine", "tensorrt", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "NVIDIA GPU" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p" / "maps.npz").exists()
