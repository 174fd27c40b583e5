"""NVIDIA DALI: whether it is here, whether it sees a GPU, and our pipelines' common settings.

DALI is optional (the ``dali`` extra) and imported lazily, inside these functions, so the decoding
and audio-feature modules can ask about it without importing it.
"""

from __future__ import annotations

import functools
from typing import Any

from avsal_deploy.errors import BackendUnavailableError


def dali_pipeline_options(device: str) -> dict[str, Any]:
    """``pipeline_def`` settings of our one-sample, synchronous DALI pipelines (video and audio)."""
    return {
        "batch_size": 1,
        "num_threads": 1,
        "device_id": 0 if device == "gpu" else None,
        "prefetch_queue_depth": 1,
        "exec_async": False,
        "exec_pipelined": False,
    }


def require_dali() -> Any:
    """The ``nvidia.dali`` module, or BackendUnavailableError when it is not installed."""
    try:
        import nvidia.dali as dali  # noqa: PLC0415 - optional dependency, imported lazily
    except ImportError as exc:
        raise BackendUnavailableError(
            "DALI backend: nvidia-dali is not installed (pip install 'avsal-deploy[dali]')"
        ) from exc
    return dali


@functools.lru_cache(maxsize=1)
def dali_available() -> bool:
    """True when NVIDIA DALI can be imported."""
    try:
        require_dali()
    except BackendUnavailableError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def gpu_available() -> bool:
    """True when DALI sees at least one CUDA device."""
    if not dali_available():
        return False
    from nvidia.dali import backend as dali_backend  # noqa: PLC0415

    try:
        return int(dali_backend.GetCUDADeviceCount()) > 0
    except RuntimeError:
        return False
