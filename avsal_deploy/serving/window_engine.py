"""How the window models (``avsal_pipeline``, ``avsal_stream``, ``avsal_video``) run the components.

Two engines, chosen per repository (the ``window_engine`` model parameter, :func:`window_engine`):

- ``onnxruntime`` (the CPU repository's default): ONNX Runtime sessions in the model's own stub
  process, on the component models' ``model.onnx`` files (:class:`InProcessEngine`). A window costs
  no inter-process hop: on 2 CPU cores the seven hops of a DDIM-4 window (copies of the
  conditions through the shared-memory pool, and a wake-up of another stub each) were a fifth of
  the window's time at the small profile.
- ``bls``: Business Logic Scripting calls to the component models (:class:`BLSEngine`), so that
  concurrent windows of different models meet in the components' dynamic batchers; the GPU
  (TensorRT) repository's choice, whose components are TensorRT models.

Triton ensembles are DAGs and the python backend drops implicit state, so the DDIM loop cannot be
an ensemble; Triton's own Stable Diffusion example runs its loop inside one python model. We do the
same without re-implementing anything: both engines implement only
:meth:`~avsal_deploy.engine.base.Engine.run` (for BLS, ``pb_utils.InferenceRequest(...).exec()``,
~0.3-0.4 ms of overhead per call on CPU), and ``condition`` / ``sample`` / ``predict_window`` are
the base class's. A component that fails raises
:class:`~avsal_deploy.serving.contract.ComponentCallError` with either engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from avsal_deploy.config import Config
from avsal_deploy.engine.base import Arrays, Engine
from avsal_deploy.serving.contract import (
    ComponentCallError,
    from_wire,
    model_name,
    pipeline_manifest,
    to_wire,
    window_engine_kind,
    window_threads,
)
from avsal_deploy.specs import ComponentSpec


class BLSEngine(Engine):
    """An :class:`Engine` whose components are other models of the same Triton server.

    Only usable inside a python-backend model (it imports ``triton_python_backend_utils``).
    """

    backend = "triton-bls"

    def __init__(self, config: Config, variant: str, specs: Mapping[str, ComponentSpec]) -> None:
        super().__init__(config, variant, specs)
        self.models = {name: model_name(name) for name in self.specs}

    def run(self, component: str, feeds: Mapping[str, np.ndarray]) -> Arrays:
        import triton_python_backend_utils as pb_utils

        spec = self.specs[component]
        inputs = [pb_utils.Tensor(t.name, to_wire(feeds[t.name], t.shape)) for t in spec.inputs]
        request = pb_utils.InferenceRequest(
            model_name=self.models[component],
            inputs=inputs,
            requested_output_names=spec.output_names,
        )
        response = request.exec()
        if response.has_error():
            raise ComponentCallError(f"{self.models[component]}: {response.error().message()}")
        return {
            t.name: from_wire(pb_utils.get_output_tensor_by_name(response, t.name).as_numpy(), t.shape)
            for t in spec.outputs
        }


class InProcessEngine(Engine):
    """ONNX Runtime sessions in this process on the repository's component files; a failing
    component raises :class:`ComponentCallError`, as a BLS call would. ``threads``: intra-op
    threads of every session (default: every core the process may use)."""

    backend = "onnxruntime-in-stub"

    def __init__(
        self,
        config: Config,
        variant: str,
        specs: Mapping[str, ComponentSpec],
        files: Mapping[str, Path],
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        from avsal_deploy.engine.ort import session_options

        super().__init__(config, variant, specs)
        opts = session_options(ort, threads)
        self.sessions = {}
        for name, path in files.items():
            if not Path(path).exists():
                raise FileNotFoundError(f"{path}: the component model {model_name(name)!r} has no model.onnx")
            self.sessions[name] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(self, component: str, feeds: Mapping[str, np.ndarray]) -> Arrays:
        spec = self.specs[component]
        try:
            outs = self.sessions[component].run(spec.output_names, {n: feeds[n] for n in spec.input_names})
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ComponentCallError(f"{model_name(component)} (in process): {exc}") from exc
        return dict(zip(spec.output_names, outs, strict=True))

    def close(self) -> None:
        self.sessions.clear()


def window_engine(args: Mapping[str, str], model_config: Mapping[str, Any]) -> Engine:
    """The engine a window model runs on (its ``window_engine`` parameter; default ``bls``).
    ``args``: what the python backend hands ``initialize``."""
    manifest, config, specs = pipeline_manifest(model_config)
    if window_engine_kind(model_config) == "bls":
        return BLSEngine(config, manifest["variant"], specs)
    repo = Path(args["model_repository"]).parent
    files = {name: repo / model_name(name) / "1" / "model.onnx" for name in specs}
    return InProcessEngine(config, manifest["variant"], specs, files, threads=window_threads(model_config))
