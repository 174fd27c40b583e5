"""Engines of the window models (``avsal_pipeline``, ``avsal_stream``, ``avsal_video``) inside Triton.

Two ways to run a window's components from a python-backend model, chosen per repository
(``window_engine`` model parameter, :func:`window_engine`):

- ``onnxruntime`` (the CPU repository's default): ONNX Runtime sessions in the model's own stub
  process, on the component models' ``model.onnx`` files (:class:`InProcessEngine`). A window costs
  no inter-process hop: on 2 CPU cores the seven hops of a DDIM-4 window (copies of the
  conditions through the shared-memory pool, and a wake-up of another stub each) were a fifth of
  the window's time at the small profile.
- ``bls``: Business Logic Scripting calls to the component models (:class:`BLSEngine`), so that
  concurrent windows of different models meet in the components' dynamic batchers; the GPU
  (TensorRT) repository's choice, whose components are TensorRT models.

BLS engine: the library's window logic running inside Triton, calling the component models.

Triton ensembles are DAGs and the python backend drops implicit state, so the DDIM loop cannot be
an ensemble; Triton's own Stable Diffusion example runs its loop inside one python model. We do the
same without re-implementing anything: :class:`BLSEngine` implements only
:meth:`~avsal_deploy.engine.base.Engine.run` as a Business Logic Scripting call
(``pb_utils.InferenceRequest(...).exec()``, ~0.3-0.4 ms of overhead per call on CPU), and
``condition`` / ``sample`` / ``predict_window`` are the base class's. The component calls go
through Triton's scheduler, so concurrent pipeline requests are batched at the components by
their dynamic batchers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from avsal_deploy.config import Config
from avsal_deploy.engine.base import Arrays, Engine
from avsal_deploy.serving.triton_models import from_wire, model_name, to_wire
from avsal_deploy.specs import ComponentSpec


class ComponentCallError(RuntimeError):
    """A component model failed while the pipeline was running a (valid) window."""


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


WINDOW_ENGINES = ("onnxruntime", "bls")
WINDOW_ENGINE_PARAMETER = "window_engine"
#: ONNX Runtime intra-op threads of each window model instance (``0``: every core the stub may use).
WINDOW_THREADS_PARAMETER = "window_threads"


def window_threads(model_config: Mapping[str, Any]) -> int | None:
    """The ``window_threads`` parameter of a window model (``None``: every core of the stub)."""
    raw = model_config.get("parameters", {}).get(WINDOW_THREADS_PARAMETER, {}).get("string_value", "0")
    try:
        threads = int(raw)
    except ValueError:
        raise ValueError(f"{WINDOW_THREADS_PARAMETER}={raw!r}: must be an integer >= 0") from None
    if threads < 0:
        raise ValueError(f"{WINDOW_THREADS_PARAMETER}={threads}: must be >= 0 (0 = every core)")
    return threads or None


def window_engine(args: Mapping[str, str], model_config: Mapping[str, Any]) -> Engine:
    """The engine a window model runs on (its ``window_engine`` parameter; default ``bls``)."""
    from avsal_deploy.serving.repository import pipeline_manifest

    manifest, config, specs = pipeline_manifest(model_config)
    kind = model_config.get("parameters", {}).get(WINDOW_ENGINE_PARAMETER, {}).get("string_value", "bls")
    if kind == "bls":
        return BLSEngine(config, manifest["variant"], specs)
    if kind != "onnxruntime":
        raise ValueError(f"{WINDOW_ENGINE_PARAMETER}={kind!r}: choose one of {', '.join(WINDOW_ENGINES)}")
    repo = Path(args["model_repository"]).parent
    files = {name: repo / model_name(name) / "1" / "model.onnx" for name in specs}
    return InProcessEngine(config, manifest["variant"], specs, files, threads=window_threads(model_config))


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
