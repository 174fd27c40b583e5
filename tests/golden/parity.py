"""Helpers of the official-architecture parity tests: golden files, stage loading, ONNX sessions."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tests.golden.weights import random_state, read_layout

GOLDEN_DIR = Path(__file__).parent
#: Maps (sigmoid outputs in [0, 1]) agree within this (max abs).
MAP_ATOL = 1e-4
#: Intermediate features agree within this fraction of their largest magnitude: the random
#: golden weights drive S3D's features to ~300, where 1e-4 absolute is below float32's
#: accumulation noise (a few ulp of the largest terms).
FEATURE_RTOL = 1e-5


def load_golden(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN_DIR / f"{name}.npz") as data:
        return {k: data[k] for k in data.files}


def official_state(golden: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """The official state dict the golden file was made with (layout + seed + transposed names)."""
    transposed = json.loads(str(golden["transposed"])) if "transposed" in golden else []
    state = random_state(read_layout(str(golden["layout"])), int(golden["seed"]), transposed=transposed)
    return {k: torch.from_numpy(v) for k, v in state.items()}


def load_stage(module: nn.Module, state: Mapping[str, Tensor], prefix: str) -> nn.Module:
    """``module`` with the ``prefix.*`` entries of a converted state dict, strictly, in eval mode."""
    own = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
    module.load_state_dict(own, strict=True)
    return module.eval()


def max_abs(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    a = a.detach().numpy() if isinstance(a, Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def assert_feature_close(ours: Tensor | np.ndarray, ref: Tensor | np.ndarray, what: str) -> float:
    """Max abs difference, asserted within :data:`FEATURE_RTOL` of ``ref``'s largest magnitude."""
    diff = max_abs(ours, ref)
    scale = float(np.abs(np.asarray(ref)).max())
    assert diff <= FEATURE_RTOL * max(scale, 1.0), f"{what}: max abs diff {diff:.3g} (scale {scale:.3g})"
    return diff


def onnx_session(
    module: nn.Module,
    args: Sequence[Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    path: Path,
):
    """Export ``module`` as the product exports a component (dynamo, opset 18, dynamic batch,
    example batch ``args``; the factorised 3-D convolutions folded to 2-D) and open it in ONNX
    Runtime on the CPU. Returns ``(session, model_proto)``."""
    import onnx
    import onnxruntime as ort

    from avsal_deploy.export.graph import fold_conv3d
    from avsal_deploy.export.onnx import OPSET

    batch = torch.export.Dim("batch", min=1, max=8)
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module.eval(),
                tuple(args),
                dynamo=True,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_shapes={n: {0: batch} for n in input_names},
                opset_version=OPSET,
                optimize=True,
                verbose=False,
            )
    finally:
        log.setLevel(level)
    proto, _ = fold_conv3d(program.model_proto)
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]), proto


# ----------------------------------------------------------------------------- files and engines
def save_official(state: Mapping[str, Tensor], path: Path, data_parallel: bool = False) -> Path:
    """``state`` written as the official training script writes it: ``torch.save(state_dict)``,
    every key prefixed ``module.`` when the script saves a DataParallel model."""
    prefix = "module." if data_parallel else ""
    torch.save({prefix + k: v for k, v in state.items()}, str(path))
    return path


def small_shape(height: int, width: int) -> list[str]:
    """``--set`` arguments of ``avsal convert`` for frames ``height`` x ``width``."""
    return ["--set", f"video.height={height}", "--set", f"video.width={width}"]


def convert_cli(source: Path, out: Path, from_name: str, *extra: str) -> Path:
    """``avsal convert SOURCE --from NAME --out OUT [extra]`` through the CLI entry; exit 0 asserted."""
    from avsal_deploy.cli import main

    assert main(["convert", str(source), "--from", from_name, "--out", str(out), *extra]) == 0
    return out


def export_cli(checkpoint: Path, out: Path) -> Path:
    """``avsal export --checkpoint CHECKPOINT --out OUT`` through the CLI entry; exit 0 asserted."""
    from avsal_deploy.cli import main

    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    return out


def predict_recorded(engine, frames: np.ndarray, audio: np.ndarray) -> tuple[np.ndarray, dict]:
    """``engine.predict_window(frames, audio, steps=0)`` and, per component it ran, its outputs
    (the component-level view of the same call: nothing is computed twice)."""
    seen: dict[str, dict[str, np.ndarray]] = {}
    run = engine.run

    def recording(component: str, feeds):  # type: ignore[no-untyped-def]
        out = run(component, feeds)
        seen[component] = out
        return out

    engine.run = recording
    try:
        maps = engine.predict_window(frames, audio, 0)
    finally:
        del engine.run
    return maps, seen


def no_audio(batch: int) -> np.ndarray:
    """The audio argument of a visual-only family's ``predict_window``."""
    return np.zeros((batch, 0), np.float32)
