"""Benchmark fixtures: models and exports at the ``small`` profile, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from avsal_deploy.config import load_config
from avsal_deploy.export.onnx import export_model
from avsal_deploy.models.build import AVSaliencyModel, build_model

PROFILE = "small"


@pytest.fixture(scope="session")
def small_model() -> AVSaliencyModel:
    torch.manual_seed(0)
    return build_model(load_config(PROFILE), "hybrid").eval()


@pytest.fixture(scope="session")
def small_export(small_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench-export")
    export_model(small_model, out, ddim_steps=4)
    return out
