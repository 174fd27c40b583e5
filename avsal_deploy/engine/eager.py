"""PyTorch eager backend: runs the component modules of an in-memory model (the reference)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from avsal_deploy.engine.base import Arrays, Engine
from avsal_deploy.export.components import ComponentSpec, component_module, component_specs
from avsal_deploy.models.build import AVSaliencyModel


class TorchEngine(Engine):
    backend = "torch"

    def __init__(
        self,
        model: AVSaliencyModel,
        specs: Mapping[str, ComponentSpec] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        specs = specs if specs is not None else component_specs(model.config, model.variant)
        super().__init__(model.config, model.variant, specs)
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self._modules = {name: component_module(self.model, spec) for name, spec in self.specs.items()}

    @torch.inference_mode()
    def run(self, component: str, feeds: Mapping[str, np.ndarray]) -> Arrays:
        spec = self.specs[component]
        args = [torch.from_numpy(np.asarray(feeds[n], np.float32)).to(self.device) for n in spec.input_names]
        out = self._modules[component](*args)
        outs = out if isinstance(out, tuple) else (out,)
        return {n: o.float().cpu().numpy() for n, o in zip(spec.output_names, outs, strict=True)}
