"""Training: recipes, windows, the loop (loss goes down, resume is bit-identical, early stop,
log + plot), evaluation CLI, checkpoints that rebuild their model, DDP on 2 gloo processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from avsal_deploy.cli import main
from avsal_deploy.config import load_config
from avsal_deploy.data.datasets import open_dataset
from avsal_deploy.data.synthetic import generate
from avsal_deploy.errors import ConfigError, DatasetError, WeightsError
from avsal_deploy.losses import avrsp_loss
from avsal_deploy.models.build import build_model
from avsal_deploy.models.weights import read_checkpoint_metadata
from avsal_deploy.pipeline import PredictOptions
from avsal_deploy.research.experiment import audio_relevance_recipe, mismatched_inputs
from avsal_deploy.training.checkpoints import (
    SHIPPED_CHECKPOINT,
    load_trained_model,
    load_training_state,
    state_path,
)
from avsal_deploy.training.data import VideoInputs, WindowDataset, channel_shuffle, resize_fixations
from avsal_deploy.training.evaluate import center_bias_map
from avsal_deploy.training.precision import resolve_precision
from avsal_deploy.training.recipe import TrainConfig, from_dict, load_recipe
from avsal_deploy.training.trainer import Trainer
from avsal_deploy.windows import window_for

REPO = Path(__file__).resolve().parents[1]
N_FRAMES = 12


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 tiny videos of 12 frames: 3 train and 3 test (one per condition in each split)."""
    return generate(tmp_path_factory.mktemp("synth"), 6, profile="tiny", seed=3, n_frames=N_FRAMES)


def _recipe(root: Path, **overrides: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "model": {"profile": "tiny", "variant": "hybrid"},
        "data": {"root": str(root), "windows_per_video": 2, "val_stride": 6},
        "train": {"epochs": 2, "batch_size": 2, "lr": 1e-3, "log_every": 1, "scheduler": "constant"},
    }
    recipe = from_dict(base)
    return recipe.replace(overrides) if overrides else recipe


def _log(out: Path, kind: str) -> list[dict[str, Any]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


# --------------------------------------------------------------------------- recipes
@pytest.mark.parametrize("name", ["avrsp", "diffsal", "hybrid", "audio_relevance", "hybrid_synthetic"])
def test_shipped_recipes_parse(name: str) -> None:
    recipe = load_recipe(REPO / "training" / f"{name}.toml")
    recipe.model_config()
    assert recipe.resolved_stages()


def test_avrsp_recipe_is_the_papers() -> None:
    r = load_recipe(REPO / "training" / "avrsp.toml")
    t = r.train
    assert (t.lr, t.weight_decay, t.scheduler, t.plateau_factor) == (1e-4, 1e-5, "plateau", 0.5)
    assert (t.kl_weight, t.cc_weight, t.sim_weight) == (1.0, -0.1, -0.1)
    stages = r.resolved_stages()
    assert [s.name for s in stages] == ["visual", "audio-visual"]
    assert stages[0].audio == "silent" and stages[1].audio == "real"


def test_experiment_recipe_file_matches_the_library() -> None:
    """training/audio_relevance.toml and the experiment's built-in recipe cannot drift apart."""
    from_file = load_recipe(REPO / "training" / "audio_relevance.toml")
    builtin = audio_relevance_recipe()
    a, b = from_file.to_dict(), builtin.to_dict()
    a.pop("source"), b.pop("source")
    a["data"].pop("root"), b["data"].pop("root")
    assert a == b


def test_recipe_overrides_and_errors(tmp_path: Path) -> None:
    r = _recipe(tmp_path, **{"train.lr": 3e-4, "model.overrides.video.clip_len": 16})
    assert r.train.lr == 3e-4 and r.model_config().video.clip_len == 16
    with pytest.raises(ConfigError, match="unknown field"):
        _recipe(tmp_path, **{"train.nope": 1})
    with pytest.raises(ConfigError, match="scheduler"):
        _recipe(tmp_path, **{"train.scheduler": "linear"})
    with pytest.raises(ConfigError, match="freeze"):
        _recipe(tmp_path, **{"train.freeze": ["decoder"]})
    with pytest.raises(ConfigError, match="no such recipe"):
        load_recipe(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlr = \n")
    with pytest.raises(ConfigError, match="cannot read recipe"):
        load_recipe(bad)


# --------------------------------------------------------------------------- windows
def test_window_dataset_items(data: Path) -> None:
    config = load_config("tiny")
    ds = WindowDataset(
        open_dataset(data, "synthetic", "train"), config, "hybrid", windows_per_video=3, seed=1
    )
    assert len(ds) == 3 * 3
    item = ds[5]
    assert item["frames"].shape == (3, *config.frames_shape("hybrid")[1:])
    assert item["audio"].shape == config.audio_input_shape("hybrid")
    assert item["envelope"].shape == config.envelope_shape("hybrid")  # tiny has AV sync
    assert max(float(ds[i]["envelope"].max()) for i in range(len(ds))) > 0.0  # silent videos give 0
    assert item["map"].shape == (1, 64, 96) and item["fixations"].shape == (1, 64, 96)
    assert 0.0 <= float(item["map"].min()) and float(item["map"].max()) <= 1.0
    again = ds[5]
    assert all(torch.equal(item[k], again[k]) for k in item)  # a pure function of (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(ds[5]["frames"], item["frames"]) or ds[5]["target"] != item["target"]
    silent = WindowDataset(
        open_dataset(data, "synthetic", "train"), config, "hybrid", windows_per_video=3, audio="silent"
    )
    assert float(silent[0]["audio"].abs().max()) == 0.0
    assert float(silent[0]["envelope"].abs().max()) == 0.0


def test_flip_moves_maps_with_frames(data: Path) -> None:
    config = load_config("tiny")
    train = open_dataset(data, "synthetic", "train")
    plain = WindowDataset(train, config, "avrsp", flip=False, channel_shuffle=False, seed=0)
    flipped = WindowDataset(train, config, "avrsp", flip=True, channel_shuffle=False, seed=0)
    for i in range(len(plain)):
        a, b = plain[i], flipped[i]
        if not torch.equal(a["frames"], b["frames"]):
            assert torch.equal(b["frames"], a["frames"].flip(-1))
            assert torch.equal(b["map"], a["map"].flip(-1))
            assert torch.equal(b["fixations"], a["fixations"].flip(-1))
            return
    pytest.fail("no item was flipped")


def test_channel_shuffle_permutes_raw_colours() -> None:
    config = load_config("tiny")
    mean = np.asarray(config.video.mean, np.float32).reshape(3, 1, 1, 1)
    std = np.asarray(config.video.std, np.float32).reshape(3, 1, 1, 1)
    raw = np.random.default_rng(0).random((3, 2, 4, 4), dtype=np.float32)
    out = channel_shuffle((raw - mean) / std, [2, 0, 1], config)
    np.testing.assert_allclose(out * std + mean, raw[[2, 0, 1]], atol=1e-6)


def test_resize_fixations_keeps_every_location() -> None:
    fix = np.zeros((1, 8, 12), bool)
    fix[0, 0, 0] = fix[0, 7, 11] = fix[0, 3, 5] = True
    small = resize_fixations(fix, (4, 6))
    assert small.sum() == 3 and small[0, 0, 0] and small[0, 3, 5] and small[0, 1, 2]


# --------------------------------------------------------------------------- training loop
def test_training_reduces_the_loss(data: Path, tmp_path: Path) -> None:
    recipe = _recipe(
        data,
        **{
            "model.variant": "avrsp",
            "data.val_split": "",
            "data.flip": False,
            "data.channel_shuffle": False,
            "data.windows_per_video": 4,
            "train.epochs": 3,
            "train.lr": 3e-3,
        },
    )
    config = recipe.model_config()
    train = WindowDataset(
        open_dataset(data, "synthetic", "train"), config, "avrsp", flip=False, channel_shuffle=False
    )
    batch = torch.utils.data.default_collate([train[i] for i in range(8)])

    def loss_of(model: torch.nn.Module) -> float:
        with torch.no_grad():
            maps = model(batch["frames"], batch["audio"], envelope=batch["envelope"])
            return float(avrsp_loss(maps, batch["map"]))

    torch.manual_seed(recipe.train.seed)  # the trainer initialises the model the same way
    before = loss_of(build_model(config, "avrsp"))
    result = Trainer(recipe, tmp_path / "run").fit()
    model, _, _, _ = load_trained_model(result.last_checkpoint)
    model.train()  # batch statistics, as during training (running ones need more steps)
    assert result.steps == 3 * (3 * 4 // 2) and result.stopped == "completed"
    assert loss_of(model) < before - 0.1


def test_resume_is_bit_identical(data: Path, tmp_path: Path) -> None:
    """Stop mid-epoch, resume: the following steps' losses equal those of an uninterrupted run."""
    recipe = _recipe(data, **{"data.val_split": "", "train.epochs": 2, "data.windows_per_video": 3})
    Trainer(recipe, tmp_path / "full").fit()  # 9 windows per epoch: 4 batches of 2
    Trainer(recipe.replace({"train.max_steps": 2}), tmp_path / "cut").fit()
    state = load_training_state(state_path(tmp_path / "cut" / "checkpoints" / "last.safetensors"))
    assert (state["step"], state["batch_in_epoch"]) == (2, 2)
    Trainer(recipe, tmp_path / "cut", resume=True).fit()
    full = [(r["step"], r["loss"], r["diffusion"]) for r in _log(tmp_path / "full", "train")]
    cut = [(r["step"], r["loss"], r["diffusion"]) for r in _log(tmp_path / "cut", "train")]
    assert len(full) == 8 and cut == full
    a = load_trained_model(tmp_path / "full" / "checkpoints" / "last.safetensors")[0].state_dict()
    b = load_trained_model(tmp_path / "cut" / "checkpoints" / "last.safetensors")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_early_stop_log_and_plot(data: Path, tmp_path: Path) -> None:
    recipe = _recipe(
        data,
        **{
            "train.epochs": 6,
            "train.early_stop_patience": 1,
            "train.min_delta": 100.0,
            "train.scheduler": "plateau",
        },
    )
    out = tmp_path / "run"
    result = Trainer(recipe, out).fit()
    assert result.stopped == "early_stop" and result.epochs == 2  # epoch 1 sets best, epoch 2 fails
    val = _log(out, "val")
    assert [r["epoch"] for r in val] == [1, 2]
    assert {"cc", "nss", "kld", "sim", "loss", "by_condition"} <= set(val[0])
    assert len(_log(out, "train")) == result.steps and len(_log(out, "epoch")) == 2
    assert (out / "metrics.png").stat().st_size > 1000
    assert result.best_checkpoint is not None
    meta = read_checkpoint_metadata(result.best_checkpoint)
    assert meta["epoch"] == 1 and meta["audio"] == "real" and "cc" in meta["metrics"]
    json.loads((out / "recipe.json").read_text())


def test_stages_freeze_and_resume_across_stages(data: Path, tmp_path: Path) -> None:
    recipe = from_dict(
        {
            **_recipe(data).to_dict(),
            "data": {**_recipe(data).to_dict()["data"], "val_split": ""},
            "stages": [
                {"name": "visual", "epochs": 1, "audio": "silent", "freeze": ["audio_encoder"]},
                {
                    "name": "unet",
                    "epochs": 1,
                    "freeze": ["video_encoder", "audio_encoder"],
                    "oneshot_weight": 0.0,
                },
            ],
        }
    )
    torch.manual_seed(0)
    init = build_model(recipe.model_config(), "hybrid").state_dict()
    result = Trainer(recipe, tmp_path / "run").fit()
    trained = load_trained_model(result.last_checkpoint)[0].state_dict()
    audio_keys = [k for k in init if k.startswith("audio_encoder.")]
    assert all(torch.equal(init[k], trained[k]) for k in audio_keys)  # frozen in both stages
    assert any(not torch.equal(init[k], trained[k]) for k in init if k.startswith("video_encoder."))
    assert [r["stage"] for r in _log(tmp_path / "run", "epoch")] == ["visual", "unet"]


# --------------------------------------------------------------------------- checkpoints
def test_trained_model_rebuilds_from_its_metadata(data: Path, tmp_path: Path) -> None:
    recipe = _recipe(
        data, **{"data.val_split": "", "train.max_steps": 1, "model.overrides.video.clip_len": 16}
    )
    result = Trainer(recipe, tmp_path / "run").fit()
    model, config, variant, meta = load_trained_model(result.last_checkpoint)
    assert config.video.clip_len == 16 and variant == "hybrid" and meta["step"] == 1
    assert meta["recipe"]["model"]["overrides"] == {"video.clip_len": 16}
    frames = torch.randn(1, *config.frames_shape(variant))
    audio = torch.randn(1, *config.audio_input_shape(variant))
    envelope = torch.rand(1, *config.envelope_shape(variant))
    out = model(frames, audio, steps=1, noise=torch.zeros(1, 1, 64, 96), envelope=envelope)
    assert out.shape == (1, 1, 64, 96)


def test_bad_inputs_give_clear_errors(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(DatasetError, match="not a directory"):
        Trainer(_recipe(tmp_path / "nowhere"), tmp_path / "a").fit()
    with pytest.raises(ConfigError, match="data.root is empty"):
        Trainer(_recipe(data).replace({"data.root": ""}), tmp_path / "b").fit()
    run = tmp_path / "run"
    Trainer(_recipe(data, **{"data.val_split": "", "train.max_steps": 1}), run).fit()
    with pytest.raises(ConfigError, match="already exists"):
        Trainer(_recipe(data), run).fit()
    small = _recipe(data, **{"model.profile": "small", "data.val_split": ""})
    with pytest.raises(WeightsError, match="trained for profile tiny"):
        Trainer(small, run, resume=True).fit()
    ckpt = run / "checkpoints" / "last.safetensors"
    with pytest.raises(WeightsError, match="trained for profile tiny"):
        Trainer(small.replace({"train.init_checkpoint": str(ckpt)}), tmp_path / "c").fit()
    with pytest.raises(WeightsError, match="variant"):
        Trainer(
            _recipe(data, **{"model.variant": "avrsp", "train.init_checkpoint": str(ckpt)}), tmp_path / "d"
        ).fit()
    # through the CLI: one line on stderr, exit code 2
    assert main(["-q", "eval", str(ckpt), str(tmp_path / "nowhere"), "--engine", "torch"]) == 2
    assert "not a directory" in capsys.readouterr().err
    not_ckpt = tmp_path / "x.safetensors"
    not_ckpt.write_bytes(b"nonsense")
    assert main(["-q", "eval", str(not_ckpt), str(data)]) == 2
    assert "avsal: error:" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.toml")]) == 2
    assert "no such recipe" in capsys.readouterr().err


# --------------------------------------------------------------------------- evaluation
def test_eval_cli_tables_and_json(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    Trainer(_recipe(data, **{"data.val_split": "", "train.max_steps": 2}), run).fit()
    report = tmp_path / "eval.json"
    code = main(
        [
            "-q",
            "eval",
            str(run / "checkpoints" / "last.safetensors"),
            str(data),
            "--engine",
            "torch",
            "--out",
            str(report),
            "--steps",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "per video" in out and "per condition" in out and "data set" in out and "sauc" in out
    rep = json.loads(report.read_text())
    test_videos = [v.name for v in open_dataset(data, "synthetic", "test")]
    assert sorted(rep["videos"]) == sorted(test_videos)
    assert all(rep["videos"][v]["frames"] == N_FRAMES for v in test_videos)  # stride 1: every frame
    assert set(rep["dataset"]) == {"cc", "nss", "kld", "sim", "auc_j", "sauc"}
    assert set(rep["conditions"]) <= {"relevant", "music", "silent"} and rep["steps"] == 1
    means = np.mean([rep["videos"][v]["cc"] for v in test_videos])
    assert rep["dataset"]["cc"] == pytest.approx(means)  # per-video averaging


def _eval_report(
    capsys: pytest.CaptureFixture[str], path: Path, checkpoint: Path, data: Path, *args: str
) -> tuple[int, dict[str, Any], str]:
    code = main(["-q", "eval", str(checkpoint), str(data), "--out", str(path), *args])
    err = capsys.readouterr().err
    return code, (json.loads(path.read_text()) if code == 0 else {}), err


@pytest.mark.skipif(not SHIPPED_CHECKPOINT.is_file(), reason="shipped checkpoint not built yet")
def test_eval_engines_agree_with_the_deployed_noise_policy(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_checkpoint: Path
) -> None:
    """``avsal eval --engine onnxruntime`` (the shipped export) equals ``--engine torch`` within
    1e-4 on a synthetic set, both with one x_T per video (2 DDIM steps); TensorRT says it needs a
    GPU; an export of another checkpoint is refused."""
    from avsal_deploy.engine import DEFAULT_EXPORT

    chosen = ("--metric", "cc", "--metric", "nss", "--metric", "kld", "--metric", "sim")
    common = (*chosen, "--seed", "4", "--batch-size", "3")
    code, torch_rep, _ = _eval_report(
        capsys, tmp_path / "t.json", SHIPPED_CHECKPOINT, data, *common, "--engine", "torch"
    )
    assert code == 0 and torch_rep["engine"] == "torch" and torch_rep["noise"] == "per-video"
    assert torch_rep["steps"] == 2
    code, ort_rep, _ = _eval_report(
        capsys,
        tmp_path / "o.json",
        SHIPPED_CHECKPOINT,
        data,
        *common,
        "--engine",
        "onnxruntime",
        "--export",
        str(DEFAULT_EXPORT),
    )
    assert code == 0 and ort_rep["engine"] == "onnxruntime"
    assert sorted(ort_rep["videos"]) == sorted(torch_rep["videos"]) and len(torch_rep["videos"]) == 3
    for video, values in torch_rep["videos"].items():
        for m in ("cc", "nss", "kld", "sim"):
            assert np.isfinite(values[m])
            assert ort_rep["videos"][video][m] == pytest.approx(values[m], abs=1e-4, rel=0), (video, m)
    # The noise policy matters: fresh noise per window gives other numbers (the test can fail).
    code, window_rep, _ = _eval_report(
        capsys,
        tmp_path / "w.json",
        SHIPPED_CHECKPOINT,
        data,
        *common,
        "--engine",
        "torch",
        "--noise",
        "per-window",
    )
    assert code == 0 and window_rep["dataset"]["cc"] != pytest.approx(torch_rep["dataset"]["cc"], abs=1e-6)

    code, _, err = _eval_report(
        capsys,
        tmp_path / "r.json",
        SHIPPED_CHECKPOINT,
        data,
        "--engine",
        "tensorrt",
        "--export",
        str(DEFAULT_EXPORT),
    )
    assert code == 2 and err.startswith("avsal: error:") and "NVIDIA GPU" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = _eval_report(
        capsys,
        tmp_path / "x.json",
        tiny_checkpoint,
        data,
        "--engine",
        "onnxruntime",
        "--export",
        str(DEFAULT_EXPORT),
    )
    assert code == 2 and "exported from another checkpoint" in err


def test_validation_is_avsal_eval(data: Path, tmp_path: Path) -> None:
    """The training loop validates with the code of ``avsal eval`` (the model as a torch engine,
    one x_T per video): the last validation record equals evaluating the last checkpoint."""
    from avsal_deploy.training.evaluate import VALIDATION_METRICS, evaluate_checkpoint

    # two epochs: the second validation reuses the engine of the first (the model must be in eval
    # mode again, or BatchNorm would use and update batch statistics)
    recipe = _recipe(data, **{"train.epochs": 2, "train.val_steps": 1, "train.val_batch_size": 2})
    result = Trainer(recipe, tmp_path / "run").fit()
    val = _log(tmp_path / "run", "val")[-1]
    ev = evaluate_checkpoint(  # at validation's batch size: batched convolutions round differently
        result.last_checkpoint,
        data,
        split="test",
        options=PredictOptions(steps=1, stride=6, seed=0, batch_size=2),
        metrics=VALIDATION_METRICS,
        engine="torch",
    )
    summary = ev.result.summary()
    for m in VALIDATION_METRICS:
        assert val[m] == pytest.approx(summary[m], abs=1e-6), m


def test_center_bias_map() -> None:
    m = center_bias_map((64, 96), 0.25)
    assert m.shape == (64, 96) and m.max() == pytest.approx(1.0, abs=1e-3)
    assert m[32, 48] > m[0, 0] and np.allclose(m, m[::-1, ::-1])


@pytest.mark.skipif(not SHIPPED_CHECKPOINT.is_file(), reason="shipped checkpoint not built yet")
def test_shipped_checkpoint() -> None:
    model, config, variant, meta = load_trained_model(SHIPPED_CHECKPOINT)
    assert variant == "hybrid" and config.profile == "tiny"
    assert SHIPPED_CHECKPOINT.stat().st_size < 5_000_000
    assert meta["recipe"]["data"]["name"] == "synthetic"
    assert (SHIPPED_CHECKPOINT.parent / "README.md").read_text().count("SYNTHETIC") >= 1
    frames = torch.zeros(1, *config.frames_shape(variant))
    audio = torch.zeros(1, *config.audio_input_shape(variant))
    envelope = torch.zeros(1, *config.envelope_shape(variant))
    out = model(frames, audio, steps=0, envelope=envelope)
    assert out.shape == (1, *config.map_shape()) and torch.isfinite(out).all()


# --------------------------------------------------------------------------- DDP
_DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    from avsal_deploy.training.recipe import from_dict
    from avsal_deploy.training.trainer import Trainer
    recipe = from_dict(json.loads(sys.argv[1]))
    trainer = Trainer(recipe, sys.argv[2])
    result = trainer.fit()
    rank = os.environ["RANK"]
    torch.save(trainer.model.state_dict(), os.path.join(sys.argv[2], f"rank{rank}.pt"))
    with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as f:
        json.dump({"steps": result.steps, "world": int(os.environ["WORLD_SIZE"])}, f)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_ddp_two_gloo_processes(data: Path, tmp_path: Path) -> None:
    """torchrun with 2 CPU processes: the epoch is sharded, ranks end identical, rank 0 writes."""
    recipe = _recipe(data, **{"model.variant": "avrsp", "train.epochs": 2, "data.windows_per_video": 4})
    script = tmp_path / "ddp_train.py"
    script.write_text(_DDP_SCRIPT)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(script), recipe.to_json(), str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # parameters AND BatchNorm statistics
    # 3 train videos x 4 windows = 12 per epoch; global batch 2 x 2 processes -> 3 steps per epoch
    info = json.loads((out / "rank1.json").read_text())
    assert info == {"steps": 6, "world": 2}
    saved = load_trained_model(out / "checkpoints" / "last.safetensors")[0].state_dict()
    assert all(torch.equal(saved[k], r0[k]) for k in r0)
    steps = [r["step"] for r in _log(out, "train")]
    assert steps == list(range(1, 7))  # one writer: no duplicated records
    assert [r["epoch"] for r in _log(out, "val")] == [1, 2]


# --------------------------------------------------------------------------- precision
def test_precision_settings_and_bf16_step(data: Path, tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    assert not resolve_precision("auto", cpu).enabled and not resolve_precision("off", cpu).enabled
    bf16 = resolve_precision("bf16", cpu)
    assert bf16.enabled and bf16.dtype == torch.bfloat16 and not bf16.scaler
    with pytest.raises(ConfigError, match="CUDA"):
        resolve_precision("fp16", cpu)
    recipe = _recipe(data, **{"data.val_split": "", "train.max_steps": 2, "train.amp": "bf16"})
    result = Trainer(recipe, tmp_path / "run").fit()
    losses = [r["loss"] for r in _log(tmp_path / "run", "train")]
    assert result.steps == 2 and all(np.isfinite(losses))
    weights = load_trained_model(result.last_checkpoint)[0].state_dict()
    assert all(v.dtype != torch.bfloat16 for v in weights.values())  # autocast keeps fp32 weights


def test_bf16_backward_on_cpu_gives_the_float32_weight_gradient() -> None:
    """A Conv3d with a temporal kernel of 3 over a clip 2 frames deep (the tiny profile's scale 2):
    oneDNN's bfloat16 weight gradient for it is garbage on some CPUs (huge, inf or NaN); under
    ``Precision.backward`` the gradient is the float32 one within bfloat16 rounding."""
    cpu = torch.device("cpu")
    bf16 = resolve_precision("bf16", cpu)
    generator = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv3d(32, 32, (3, 1, 1), padding=(1, 0, 0), bias=False)
    x = torch.randn(2, 32, 2, 4, 6, generator=generator)
    target = torch.randn(2, 32, 2, 4, 6, generator=generator)
    (conv(x) * target).sum().backward()
    reference = conv.weight.grad.clone()
    for _ in range(3):  # the faulty kernel differs from call to call
        conv.weight.grad = None
        with bf16.autocast("cpu"):
            y = conv(x)
        assert y.dtype == torch.bfloat16
        with bf16.backward(cpu):
            (y.float() * target).sum().backward()
        error = (conv.weight.grad - reference).abs().max() / reference.abs().max()
        assert torch.isfinite(conv.weight.grad).all() and error < 0.02, float(error)


def test_mismatched_soundtrack_control(data: Path) -> None:
    config = load_config("tiny")
    test = open_dataset(data, "synthetic", "test")
    swapped = mismatched_inputs(test, config, "hybrid")
    assert [v.name for v in swapped] == [v.name for v in test]
    for video in swapped:  # one video per condition here: each keeps its own soundtrack
        assert video.audio_record is video.record
    videos = list(open_dataset(data, "synthetic", "train")) + list(test)
    a, b = videos[0], videos[1]
    borrowed = VideoInputs(a, config, "hybrid", audio_record=b)
    np.testing.assert_array_equal(borrowed.track()[0], b.audio()[0])
    assert borrowed.clip(window_for(5, a.n_frames, config)).shape == (3, 8, 64, 96)


def test_sync_supervision_trains_only_with_sound(data: Path, tmp_path: Path) -> None:
    """The AV sync gate's deep supervision changes an audio-visual run but leaves the visual-only
    twin (silence) bit-identical: flat synchrony passes no gradient."""
    base = {"data.val_split": "", "train.max_steps": 2, "data.flip": False}
    weights = {}
    for audio in ("silent", "real"):
        for w in (0.0, 0.5):
            recipe = _recipe(data, **base, **{"train.audio": audio, "train.sync_weight": w})
            result = Trainer(recipe, tmp_path / f"{audio}{w}").fit()
            weights[audio, w] = load_trained_model(result.last_checkpoint)[0].state_dict()
            if w:
                records = _log(tmp_path / f"{audio}{w}", "train")
                assert all("sync" in r for r in records)
    for k, v in weights["silent", 0.0].items():
        assert torch.equal(v, weights["silent", 0.5][k]), k
    changed = [k for k, v in weights["real", 0.0].items() if not torch.equal(v, weights["real", 0.5][k])]
    assert any(k.startswith("fusion.sync.") for k in changed)
    assert any(k.startswith("video_encoder.") for k in changed)  # the visual features learn to pulse
