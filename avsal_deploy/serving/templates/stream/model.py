"""Triton python-backend model ``avsal_stream`` (copied by `avsal triton-repo`).

One decoded frame (and its audio) per request under the sequence batcher; a map for every frame
whose window became ready. The logic lives in the library (avsal_deploy.serving.models.stream).
"""

from avsal_deploy.serving.models.stream import StreamModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
