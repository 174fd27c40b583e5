"""Triton python-backend model of one exported component (copied by `avsal triton-repo`).

onnxruntime runs ``model.onnx`` beside this file; the logic lives in the library.
"""

from avsal_deploy.serving.models.component import ComponentModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
