"""BLS engine: the library's window logic running inside Triton, calling the component models.

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
