"""Inference engines with one protocol; :func:`open` picks one for an export directory.

``open(DIR, backend="onnxruntime"|"torch"|"tensorrt")`` reads ``DIR/manifest.json`` written by
``avsal export`` and returns an :class:`~avsal_deploy.engine.base.Engine` whose
``predict_window(frames, audio, steps)`` gives the maps. The DDIM loop and the window planner sit
on top of it unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from avsal_deploy.config import Config
from avsal_deploy.engine.base import Engine
from avsal_deploy.errors import AvsalError, ConfigError
from avsal_deploy.export.components import ComponentSpec

BACKENDS = ("onnxruntime", "torch", "tensorrt")

__all__ = ["BACKENDS", "Engine", "open", "parse_manifest", "read_manifest"]


def parse_manifest(
    manifest: dict[str, Any], source: str
) -> tuple[dict[str, Any], Config, dict[str, ComponentSpec]]:
    """Config and component specs of a manifest (``source`` names it in errors)."""
    try:
        config = Config.from_dict(manifest["config"])
        specs = {n: ComponentSpec.from_manifest(n, e) for n, e in manifest["components"].items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise AvsalError(f"{source}: malformed manifest ({exc})") from exc
    if config.architecture_fingerprint() != manifest.get("architecture_fingerprint"):
        raise ConfigError(f"{source}: config does not match its recorded architecture fingerprint")
    return manifest, config, specs


def read_manifest(directory: str | Path) -> tuple[dict[str, Any], Config, dict[str, ComponentSpec]]:
    """The manifest of an export directory, its config and its component specs."""
    path = Path(directory) / "manifest.json"
    if not path.exists():
        raise AvsalError(f"{path}: no manifest; create the directory with `avsal export`")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise AvsalError(f"{path}: malformed manifest ({exc})") from exc
    return parse_manifest(manifest, str(path))


def open(directory: str | Path, backend: str = "onnxruntime", **options: Any) -> Engine:  # noqa: A001
    """An engine over the exported components in ``directory``."""
    directory = Path(directory)
    manifest, config, specs = read_manifest(directory)
    variant = manifest["variant"]
    if backend == "onnxruntime":
        from avsal_deploy.engine.ort import OnnxRuntimeEngine

        return OnnxRuntimeEngine(directory, config, variant, specs, **options)
    if backend == "torch":
        from avsal_deploy.engine.eager import TorchEngine
        from avsal_deploy.models.build import build_model
        from avsal_deploy.models.weights import load_checkpoint

        model = build_model(config, variant)
        load_checkpoint(model, directory / manifest["weights"]["file"], config, variant)
        return TorchEngine(model, specs, **options)
    if backend == "tensorrt":
        from avsal_deploy.engine.trt import TensorRTEngine

        return TensorRTEngine(directory, config, variant, specs, **options)
    raise AvsalError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
