"""Inference engines with one protocol, and the one registry that opens them.

``avsal_deploy.engine.open(source, backend=...)`` returns an :class:`~avsal_deploy.engine.base.Engine`
whose ``predict_window(frames, audio, steps)`` gives the maps; the window planner, the frame flow
and the DDIM loop sit on top of it unchanged, whichever backend runs the networks.

Backends register themselves (:func:`register_backend`) when their module is imported; the
built-in ones are imported on first use, so opening an ONNX Runtime engine never imports torch,
TensorRT or the Triton client:

=============  =====================================  ==========================================
backend        module                                 ``source``
=============  =====================================  ==========================================
onnxruntime    :mod:`avsal_deploy.engine.ort`         export directory, checkpoint, or None
torch          :mod:`avsal_deploy.engine.eager`       export directory, checkpoint, or None
tensorrt       :mod:`avsal_deploy.engine.trt`         export directory with ``*.plan`` files
triton         :mod:`avsal_deploy.serving.client`     server URL (``host:port``), or None
=============  =====================================  ==========================================

``source=None`` is the shipped default: the synthetic-data checkpoint and its ONNX export, both
inside the package (:data:`DEFAULT_EXPORT`, :data:`DEFAULT_CHECKPOINT`). A checkpoint file given
to an exported backend is exported once into the cache (:func:`avsal_deploy.export.cache.cached_export`,
which needs the ``export`` extra, i.e. torch).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from avsal_deploy.engine.base import Engine
from avsal_deploy.errors import AvsalError, BackendUnavailableError

_ASSETS = Path(__file__).resolve().parent.parent / "assets"
#: The shipped synthetic-data checkpoint (avsal_deploy/assets/README.md).
DEFAULT_CHECKPOINT = _ASSETS / "hybrid-synthetic.safetensors"
#: Its ONNX export, shipped too: the default engine needs neither torch nor an export step.
DEFAULT_EXPORT = _ASSETS / "hybrid-synthetic"

Opener = Callable[..., Engine]
#: Built-in backends and the module that registers each one (imported on first use).
BUILTIN_BACKENDS: dict[str, str] = {
    "onnxruntime": "avsal_deploy.engine.ort",
    "torch": "avsal_deploy.engine.eager",
    "tensorrt": "avsal_deploy.engine.trt",
    "triton": "avsal_deploy.serving.client",
}
_REGISTRY: dict[str, Opener] = {}

__all__ = [
    "BUILTIN_BACKENDS",
    "DEFAULT_CHECKPOINT",
    "DEFAULT_EXPORT",
    "Engine",
    "backends",
    "open",
    "register_backend",
    "resolve_export",
]


def register_backend(name: str, opener: Opener) -> None:
    """Make ``open(source, backend=name, **options)`` call ``opener(source, **options)``."""
    _REGISTRY[name] = opener


def backends() -> list[str]:
    """Every backend name :func:`open` accepts."""
    return sorted({*BUILTIN_BACKENDS, *_REGISTRY})


def open(  # noqa: A001 - the registry's verb, as in io.open
    source: str | os.PathLike[str] | None = None, backend: str = "onnxruntime", **options: Any
) -> Engine:
    """An engine of ``backend`` over ``source`` (see the module docstring for what each takes)."""
    if backend not in _REGISTRY:
        module = BUILTIN_BACKENDS.get(backend)
        if module is None:
            raise AvsalError(f"unknown engine backend {backend!r}: choose one of {', '.join(backends())}")
        importlib.import_module(module)  # registers the backend
    return _REGISTRY[backend](source, **options)


def resolve_export(
    source: str | os.PathLike[str] | None, on_export: Callable[[Path], None] | None = None
) -> Path:
    """The export directory for ``source``: the shipped default for None, a directory as it is, a
    checkpoint file exported once into the cache (needs the ``export`` extra)."""
    if source is None:
        return DEFAULT_EXPORT
    path = Path(source)
    if path.is_dir():
        return path
    if not path.exists():
        raise AvsalError(f"{path}: no such checkpoint file or export directory")
    try:
        from avsal_deploy.export.cache import cached_export
    except ImportError as exc:  # torch is not installed: the base runtime cannot export
        raise BackendUnavailableError(
            f"{path}: exporting a checkpoint needs torch (pip install 'avsal-deploy[export]'); "
            "or pass a directory written by `avsal export`"
        ) from exc
    return cached_export(path, on_export)
