"""The export cache: a checkpoint's ONNX components exported once, reused by every later run.

``engine.open(CHECKPOINT)`` for an exported backend (ONNX Runtime, TensorRT's ONNX input, Triton's
repository) needs an export directory; :func:`cached_export` makes one per checkpoint content and
package version under :func:`cache_root`, atomically (a private temporary directory renamed into
place), so concurrent runs never see a half-written export. Exporting needs torch (the ``export``
extra); finding the cache (:func:`cache_root`, an export already made) does not.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from avsal_deploy._version import __version__
from avsal_deploy.specs import sha256_file


def cache_root() -> Path:
    """Where exported ONNX components are cached (``$AVSAL_CACHE``, else ~/.cache/avsal)."""
    return Path(os.environ.get("AVSAL_CACHE") or Path.home() / ".cache" / "avsal")


def cached_export(
    checkpoint: str | os.PathLike[str], on_export: Callable[[Path], None] | None = None
) -> Path:
    """The export directory of ``checkpoint``, exporting it once (keyed by content and version)."""
    checkpoint = Path(checkpoint)
    digest = sha256_file(checkpoint)
    directory = cache_root() / "exports" / f"{digest[:16]}-{__version__}"
    manifest = directory / "manifest.json"
    if manifest.exists():
        recorded = json.loads(manifest.read_text()).get("checkpoint") or {}
        if recorded.get("sha256") == digest:
            return directory
    from avsal_deploy.export.onnx import export_model  # torch: only when there is something to export
    from avsal_deploy.models.build import load_pretrained

    model = load_pretrained(checkpoint)  # refuses a bad checkpoint before any export work
    if on_export is not None:
        on_export(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=directory.parent))
    try:
        export_model(model, tmp, checkpoint=checkpoint)
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory
