"""Triton python-backend model ``avsal_pipeline`` (copied by `avsal triton-repo`).

One request = a batch of windows: encoders, fusion and the DDIM loop as BLS calls to the component
models, through the library's ``Engine.predict_window``; the logic lives in the library.
"""

from avsal_deploy.serving.models.pipeline import PipelineModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
