"""The models Triton runs: the logic behind the thin ``model.py`` templates in ``serving/templates/``.

This module is imported inside Triton's python-backend stub, whose interpreter is the venv's Python
(the stub finds it on ``PATH``), so ``import avsal_deploy`` works there. The module
``triton_python_backend_utils`` only exists inside the stub: it is imported in the methods that
use it. No model imports torch (every stub is its own process; the runtime is torch-free): the
component models import numpy and onnxruntime, the pipeline the library's engine and sampler.

The wire contract shared by :mod:`~avsal_deploy.serving.repository` (which writes it),
:mod:`~avsal_deploy.serving.bls` and :mod:`~avsal_deploy.serving.client` (which speak it):

- component ``c`` of the export is the model ``avsal_<c>``; the whole window is ``avsal_pipeline``;
- a per-sample scalar (spec shape ``()``, e.g. the UNet's ``t``) travels with dims ``[1]`` and a
  ``reshape { shape: [] }``, because Triton gives every batched input at least one dimension;
- ``avsal_pipeline`` takes the video and audio encoder inputs with a leading batch axis, optional
  ``steps`` (INT32 [1]), ``seed`` (INT64 [1]) and ``noise`` (x_T, FP32 [B,1,H,W]) and returns
  ``saliency`` [B,1,H,W]; its ``manifest`` parameter carries the export manifest, so a client needs
  nothing but the server's URL.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MODEL_PREFIX = "avsal_"
PIPELINE_MODEL = "avsal_pipeline"
PIPELINE_OUTPUT = "saliency"
STEPS_INPUT = "steps"
SEED_INPUT = "seed"
NOISE_INPUT = "noise"
MANIFEST_PARAMETER = "manifest"
MAX_BATCH_PARAMETER = "max_batch"


def model_name(component: str) -> str:
    """The Triton model serving export component ``component``."""
    return MODEL_PREFIX + component


def wire_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Per-sample dims on the wire: a scalar travels as ``[1]`` (Triton needs one dimension)."""
    return tuple(shape) or (1,)


def to_wire(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``array`` [B, *shape] as sent to Triton ([B, 1] for a per-sample scalar)."""
    return array.reshape(array.shape[0], *wire_shape(shape))


def from_wire(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`to_wire`: back to the spec's [B, *shape]."""
    return array.reshape(array.shape[0], *shape)


def _parameter(model_config: dict[str, Any], key: str) -> str | None:
    entry = model_config.get("parameters", {}).get(key)
    return None if entry is None else str(entry["string_value"])


def _model_shapes(entries: list[dict[str, Any]]) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """(name, shape the network sees, dims on the wire) per config input/output, batch excluded."""
    out = []
    for e in entries:
        dims = tuple(int(d) for d in e["dims"])
        reshape = e.get("reshape")
        model = tuple(int(d) for d in reshape.get("shape", ())) if reshape is not None else dims
        out.append((str(e["name"]), model, dims))
    return out


class ComponentModel:
    """One exported component (ONNX graph in the version directory) run by onnxruntime on CPU.

    Requests gathered by Triton's dynamic batcher are concatenated along the batch axis, run as
    one onnxruntime call and split back, so concurrent windows share one graph execution. The
    intra-op thread pool does not spin between calls: several stubs share the machine's cores
    and a spinning pool would steal them from the model that is running.
    """

    def initialize(self, args: dict[str, str]) -> None:
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        self.name = str(config["name"])
        self.inputs = _model_shapes(config["input"])
        self.outputs = _model_shapes(config["output"])
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = len(os.sched_getaffinity(0))
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        sizes: list[int] = []
        columns: dict[str, list[np.ndarray]] = {name: [] for name, _, _ in self.inputs}
        for request in requests:
            for name, shape, _ in self.inputs:
                array = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                columns[name].append(array.reshape(array.shape[0], *shape))
            sizes.append(columns[self.inputs[0][0]][-1].shape[0])
        feeds = {n: np.concatenate(c) if len(c) > 1 else c[0] for n, c in columns.items()}
        try:
            results = self.session.run([name for name, _, _ in self.outputs], feeds)
        except Exception as exc:  # onnxruntime raises its own exception types; answer every request
            error = pb_utils.TritonError(f"{self.name}: onnxruntime failed: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses = []
        bounds = np.cumsum([0, *sizes])
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(out[lo:hi].reshape(hi - lo, *dims)))
                for (name, _, dims), out in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses


class PipelineModel:
    """A whole window per request, server-side: encoders, fusion and the DDIM loop over BLS calls.

    The window logic is the library's own :meth:`Engine.predict_window
    <avsal_deploy.engine.base.Engine.predict_window>` on a :class:`~avsal_deploy.serving.bls.BLSEngine`
    whose ``run`` calls the component models; nothing of the loop is re-implemented here. Noise is
    drawn from ``seed`` exactly as every engine draws it, unless the request brings ``noise``.
    """

    def initialize(self, args: dict[str, str]) -> None:
        from avsal_deploy.serving.bls import window_engine
        from avsal_deploy.serving.repository import pipeline_manifest

        config = json.loads(args["model_config"])
        _, _, specs = pipeline_manifest(config)
        self.engine = window_engine(args, config)
        self.max_batch = int(_parameter(config, MAX_BATCH_PARAMETER) or 0)
        self.frames_input = specs["video_encoder"].input_names[0]
        audio = specs.get("audio_encoder")  # None for a visual-only family
        self.audio_input = audio.input_names[0] if audio is not None else None

    def _predict(self, request: Any) -> np.ndarray:
        import triton_python_backend_utils as pb_utils

        from avsal_deploy.errors import AvsalError
        from avsal_deploy.specs import ENVELOPE

        def tensor(name: str) -> np.ndarray | None:
            found = pb_utils.get_input_tensor_by_name(request, name)
            return None if found is None else found.as_numpy()

        frames = tensor(self.frames_input)
        assert frames is not None  # a required input: Triton checks it
        batch = frames.shape[0]
        if self.audio_input is None:
            audio = np.zeros((batch, 0), np.float32)
        else:
            audio = tensor(self.audio_input)
            assert audio is not None
        if audio.shape[0] != batch:
            raise AvsalError(
                f"{PIPELINE_MODEL}: {self.frames_input} has {batch} windows but {self.audio_input} "
                f"has {audio.shape[0]}"
            )
        envelope = tensor(ENVELOPE) if self.engine.uses_envelope else None
        if envelope is not None and envelope.shape[0] != batch:
            raise AvsalError(f"{PIPELINE_MODEL}: {ENVELOPE} has {envelope.shape[0]} windows for {batch}")
        if not 1 <= batch <= self.max_batch:
            raise AvsalError(f"{PIPELINE_MODEL}: batch of {batch} windows outside [1, {self.max_batch}]")
        steps = tensor(STEPS_INPUT)
        seed = tensor(SEED_INPUT)
        noise = tensor(NOISE_INPUT)
        if seed is not None and int(seed.reshape(-1)[0]) < 0:
            raise AvsalError(f"{PIPELINE_MODEL}: seed={int(seed.reshape(-1)[0])} must be >= 0")
        if noise is not None and noise.shape[0] != batch:
            raise AvsalError(f"{PIPELINE_MODEL}: noise has {noise.shape[0]} maps for {batch} windows")
        return self.engine.predict_window(
            frames,
            audio,
            steps=None if steps is None else int(steps.reshape(-1)[0]),
            noise=noise,
            seed=0 if seed is None else int(seed.reshape(-1)[0]),
            envelope=envelope,
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        from avsal_deploy.errors import AvsalError
        from avsal_deploy.serving.bls import ComponentCallError

        responses = []
        for request in requests:
            try:
                saliency = np.ascontiguousarray(self._predict(request), np.float32)
            except ComponentCallError as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INTERNAL)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            except AvsalError as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            tensor = pb_utils.Tensor(PIPELINE_OUTPUT, saliency)
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses
