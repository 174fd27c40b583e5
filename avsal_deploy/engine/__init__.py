"""Inference engines with one protocol, the one place that opens them, and the choice of which.

``avsal_deploy.engine.open(source, backend=...)`` returns an :class:`~avsal_deploy.engine.base.Engine`
whose ``predict_window(frames, audio, steps)`` gives the maps; the window planner, the frame flow
and the DDIM loop sit on top of it unchanged, whichever backend runs the networks.
:class:`EngineChoice` is what every command and the training's evaluation ask for (backend,
checkpoint, export directory, server URL), checked once and opened by :meth:`EngineChoice.open`.

Backends (each module's ``open_engine(source, **options)``, imported on first use, so opening an
ONNX Runtime engine never imports torch, TensorRT or the Triton client):

=============  =====================================  ==========================================
backend        module                                 ``source``
=============  =====================================  ==========================================
onnxruntime    :mod:`avsal_deploy.engine.ort`         export directory, checkpoint, or None
torch          :mod:`avsal_deploy.engine.eager`       export directory, checkpoint, or None
tensorrt       :mod:`avsal_deploy.engine.trt`         export directory with ``*.plan`` files
triton         :mod:`avsal_deploy.serving.client`     server URL (``host:port``), or None
=============  =====================================  ==========================================

The first three live in this package. Any other backend is a plug-in: a distribution declares an
entry point in the group :data:`ENTRY_POINT_GROUP` (``avsal_deploy.engines``) whose name is the
backend and whose value is its opener (``module:function``). ``triton`` is such a plug-in of this
very distribution (``pyproject.toml``), since the Triton client belongs to the serving layer above
this one; :func:`register_backend` adds one at run time (tests, notebooks).

``source=None`` is the shipped default: the synthetic-data checkpoint and its ONNX export, both
inside the package (:data:`DEFAULT_EXPORT`, :data:`DEFAULT_CHECKPOINT`). A checkpoint file given
to an exported backend is exported once into the cache (:func:`avsal_deploy.export.cache.cached_export`,
which needs the ``export`` extra, i.e. torch).
"""

from __future__ import annotations

from avsal_deploy.engine.base import Engine
from avsal_deploy.engine.choice import BACKENDS, URL_BACKENDS, EngineChoice
from avsal_deploy.engine.registry import (
    BUILTIN_BACKENDS,
    ENTRY_POINT_GROUP,
    backends,
    open,
    register_backend,
)
from avsal_deploy.engine.sources import DEFAULT_CHECKPOINT, DEFAULT_EXPORT, resolve_export

__all__ = [
    "BACKENDS",
    "BUILTIN_BACKENDS",
    "DEFAULT_CHECKPOINT",
    "DEFAULT_EXPORT",
    "ENTRY_POINT_GROUP",
    "URL_BACKENDS",
    "Engine",
    "EngineChoice",
    "backends",
    "open",
    "register_backend",
    "resolve_export",
]
