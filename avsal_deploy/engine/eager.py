"""PyTorch eager backend: runs the component modules of an in-memory model (the reference)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avsal_deploy.engine.base import Arrays, Engine
from avsal_deploy.engine.sources import DEFAULT_CHECKPOINT
from avsal_deploy.errors import AvsalError
from avsal_deploy.export.components import component_module, component_specs
from avsal_deploy.models.build import SaliencyModel, build_model, load_pretrained
from avsal_deploy.models.weights import load_checkpoint
from avsal_deploy.specs import ComponentSpec, read_manifest


class TorchEngine(Engine):
    backend = "torch"

    def __init__(
        self,
        model: SaliencyModel,
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


def open_engine(
    source: str | os.PathLike[str] | None = None, *, model: SaliencyModel | None = None, **options: Any
) -> TorchEngine:
    """The eager engine of a checkpoint (default: the shipped one) or of an export directory's
    weights (``weights.safetensors`` with its manifest's specs); ``model``: a model already loaded
    from ``source`` (run as it is, e.g. the one being trained); ``options``: ``device``."""
    if model is not None:
        return TorchEngine(model, **options)
    path = Path(source) if source is not None else DEFAULT_CHECKPOINT
    if path.is_dir():
        manifest, config, specs = read_manifest(path)
        model = build_model(config, manifest["variant"])
        load_checkpoint(model, path / manifest["weights"]["file"], config, manifest["variant"])
        return TorchEngine(model, specs, **options)
    if not path.is_file():
        raise AvsalError(f"{path}: no such checkpoint file or export directory")
    return TorchEngine(load_pretrained(path), **options)
