"""Where an engine's model comes from: the shipped model, an export directory or a checkpoint."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from avsal_deploy.errors import AvsalError, BackendUnavailableError

_ASSETS = Path(__file__).resolve().parent.parent / "assets"
#: The shipped synthetic-data checkpoint (avsal_deploy/assets/README.md).
DEFAULT_CHECKPOINT = _ASSETS / "hybrid-synthetic.safetensors"
#: Its ONNX export, shipped too: the default engine needs neither torch nor an export step.
DEFAULT_EXPORT = _ASSETS / "hybrid-synthetic"


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
