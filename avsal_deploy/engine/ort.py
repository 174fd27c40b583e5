"""ONNX Runtime backend: the embedded default on CPU; CUDA / TensorRT execution providers when present."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avsal_deploy.config import Config
from avsal_deploy.engine.base import Arrays, Engine
from avsal_deploy.engine.sources import resolve_export
from avsal_deploy.errors import BackendUnavailableError
from avsal_deploy.specs import ComponentSpec, read_manifest

# Preference order; only those this onnxruntime build offers are used.
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def select_providers(requested: Sequence[str] | None = None) -> list[str]:
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    wanted = list(requested) if requested else list(PROVIDER_ORDER)
    chosen = [p for p in wanted if p in available]
    missing = [p for p in (requested or ()) if p not in available]
    if missing:
        raise BackendUnavailableError(
            f"onnxruntime here offers {sorted(available)}; {', '.join(missing)} needs the 'gpu' extra "
            "(onnxruntime-gpu) and an NVIDIA GPU"
        )
    return chosen


def session_options(ort: Any, threads: int | None = None, memory_pattern: bool = False) -> Any:
    """Our ONNX Runtime session options: every graph optimisation, intra-op threads = the cores we
    may use, no spinning between calls, no memory pattern (``memory_pattern``)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    opts.inter_op_num_threads = 1
    # Idle intra-op pools otherwise busy-wait between calls: with several sessions (one per
    # component) that spinning takes every core away from decoding, torch and each other.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # The memory pattern plans one block per input shape and takes it from the CPU arena, which
    # never gives memory back: after window batches of 1 to 8 at the small profile, 1,260 MB of
    # anonymous memory with it and 720 MB without, at 0.087 and 0.086 s/frame (benchmarks/
    # test_memory.py, test_mixed_batches_memory_pattern). The arena itself stays: without it a
    # window took 1.46x as long.
    opts.enable_mem_pattern = memory_pattern
    return opts


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"

    def __init__(
        self,
        directory: str | Path,
        config: Config,
        variant: str,
        specs: Mapping[str, ComponentSpec],
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        memory_pattern: bool = False,
    ) -> None:
        import onnxruntime as ort

        super().__init__(config, variant, specs)
        self.directory = Path(directory)
        self.providers = select_providers(providers)
        opts = session_options(ort, threads, memory_pattern)
        self.sessions = {}
        for name, spec in self.specs.items():
            path = self.directory / spec.onnx_file
            if not path.exists():
                raise BackendUnavailableError(f"{path}: missing ONNX file for component {name!r}")
            self.sessions[name] = ort.InferenceSession(str(path), opts, providers=self.providers)

    def run(self, component: str, feeds: Mapping[str, np.ndarray]) -> Arrays:
        spec = self.specs[component]
        outs = self.sessions[component].run(spec.output_names, {n: feeds[n] for n in spec.input_names})
        return dict(zip(spec.output_names, outs, strict=True))

    def close(self) -> None:
        self.sessions.clear()


def open_engine(
    source: str | os.PathLike[str] | None = None,
    *,
    on_export: Callable[[Path], None] | None = None,
    **options: Any,
) -> OnnxRuntimeEngine:
    """The ONNX Runtime engine of an export directory, a checkpoint (exported once into the
    cache) or, for None, the shipped default export; ``options``: ``providers``, ``threads``,
    ``memory_pattern`` (ONNX Runtime's, off by default: see :func:`session_options`)."""
    directory = resolve_export(source, on_export)
    manifest, config, specs = read_manifest(directory)
    return OnnxRuntimeEngine(directory, config, manifest["variant"], specs, **options)
