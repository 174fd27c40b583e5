"""avsal-deploy: audio-visual video saliency prediction, from research code to production serving.

The public API, imported lazily (no torch until a function needs it)::

    import avsal_deploy as avsal

    prediction = avsal.predict("clip.mp4")               # maps in memory, shipped model, ONNX Runtime
    avsal.predict("clip.mp4", "out/clip", overlay=True)  # avsal predict's files
    maps = avsal.load_maps("out/clip/maps.npz")          # float32 [N, H, W] at the video's size
    with avsal.open_engine("onnxruntime", export="export/") as engine: ...
    results = avsal.score(["videos/"], "out/scores")     # avsal score
    for index, saliency in avsal.stream("127.0.0.1:8001", frames): ...   # a Triton server
    maps, fps = avsal.predict_video("127.0.0.1:8001", "clip.mp4")
    avsal.convert("ViNet.pt", "vinet.safetensors")       # an official checkpoint
    rows = avsal.model_zoo()                             # avsal models

The package's modules are the library underneath: :mod:`avsal_deploy.engine` (engines),
:mod:`avsal_deploy.pipeline` (the frame flow), :mod:`avsal_deploy.outputs` (the files),
:mod:`avsal_deploy.serving`, :mod:`avsal_deploy.scoring`, :mod:`avsal_deploy.roi`,
:mod:`avsal_deploy.training` and :mod:`avsal_deploy.cli` (the ``avsal`` command).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from avsal_deploy._lazy import lazy_exports
from avsal_deploy._version import __version__

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from avsal_deploy.api import convert, model_zoo, open_engine, predict, score
    from avsal_deploy.outputs import load_maps
    from avsal_deploy.serving.client import predict_video, stream

_EXPORTS = {
    "predict": "avsal_deploy.api",
    "open_engine": "avsal_deploy.api",
    "score": "avsal_deploy.api",
    "convert": "avsal_deploy.api",
    "model_zoo": "avsal_deploy.api",
    "load_maps": "avsal_deploy.outputs",
    "stream": "avsal_deploy.serving.client",
    "predict_video": "avsal_deploy.serving.client",
}

_, __getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = [
    "__version__",
    "convert",
    "load_maps",
    "model_zoo",
    "open_engine",
    "predict",
    "predict_video",
    "score",
    "stream",
]
