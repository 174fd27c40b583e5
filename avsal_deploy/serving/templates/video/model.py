"""Triton python-backend model ``avsal_video`` (copied by `avsal triton-repo`).

A whole encoded video per request, decoded server-side; the maps of every frame and the fps.
The logic lives in the library (avsal_deploy.serving.models.video).
"""

from avsal_deploy.serving.models.video import VideoModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
