"""``avsal_pipeline``: a batch of windows per request, server-side (encoders, fusion, DDIM loop).

Inputs: the video and audio encoder inputs with a leading batch axis (and the envelope where the
fusion decoder takes it), optional ``steps`` (INT32 [1]), ``seed`` (INT64 [1]) and ``noise`` (x_T,
FP32 [B,1,H,W]); output ``saliency`` [B,1,H,W]. Its ``manifest`` parameter carries the export
manifest (:mod:`avsal_deploy.serving.contract`).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from avsal_deploy.errors import AvsalError
from avsal_deploy.serving.contract import (
    MAX_BATCH_PARAMETER,
    NOISE_INPUT,
    PIPELINE_MODEL,
    PIPELINE_OUTPUT,
    SEED_INPUT,
    STEPS_INPUT,
    error_response,
    parameter,
    pipeline_manifest,
)
from avsal_deploy.specs import ENVELOPE


class PipelineModel:
    """A whole window per request, server-side: encoders, fusion and the DDIM loop.

    The window logic is the library's own :meth:`Engine.predict_window
    <avsal_deploy.engine.base.Engine.predict_window>` on the repository's window engine
    (:func:`~avsal_deploy.serving.window_engine.window_engine`); nothing of the loop is
    re-implemented here. Noise is drawn from ``seed`` exactly as every engine draws it, unless the
    request brings ``noise``.
    """

    def initialize(self, args: dict[str, str]) -> None:
        from avsal_deploy.serving.window_engine import window_engine

        config = json.loads(args["model_config"])
        _, _, specs = pipeline_manifest(config)
        self.engine: Any = window_engine(args, config)
        self.max_batch = parameter(config, MAX_BATCH_PARAMETER, int, 0)
        self.frames_input = specs["video_encoder"].input_names[0]
        audio = specs.get("audio_encoder")  # None for a visual-only family
        self.audio_input = audio.input_names[0] if audio is not None else None

    def _predict(self, request: Any) -> np.ndarray:
        import triton_python_backend_utils as pb_utils

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

        from avsal_deploy.serving.contract import ComponentCallError

        responses = []
        for request in requests:
            try:
                saliency = np.ascontiguousarray(self._predict(request), np.float32)
            except (AvsalError, ComponentCallError) as exc:
                responses.append(error_response(pb_utils, exc))
                continue
            tensor = pb_utils.Tensor(PIPELINE_OUTPUT, saliency)
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses

    def finalize(self) -> None:
        """Release the window engine (its sessions)."""
        self.engine.close()
