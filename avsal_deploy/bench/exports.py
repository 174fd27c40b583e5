"""The exports the benchmarks time: one per profile, made once and cached.

``tiny`` is the shipped, trained export (:data:`avsal_deploy.engine.DEFAULT_EXPORT`); ``small`` and
``paper`` are randomly initialised (seed 0) hybrid models, exported with the unrolled 4-step DDIM
graph beside the UNet step: their cost is the architecture's, not the weights'. Cached under
``$AVSAL_CACHE/bench/<profile>-<fingerprint>-<version>`` so a report does not re-export.

:func:`family_export` does the same for any family and config (the model-zoo suite): randomly
initialised (seed 0), exported as ``avsal predict`` exports a checkpoint (no fused DDIM graph),
cached under ``$AVSAL_CACHE/bench/zoo/<family>-<config digest>-<version>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from avsal_deploy import engine as engines
from avsal_deploy._version import __version__
from avsal_deploy.config import PROFILES, Config, check_variant, load_config
from avsal_deploy.errors import ConfigError
from avsal_deploy.export.cache import cache_root


def bench_export(profile: str, variant: str = "hybrid") -> Path:
    """The export directory benchmarked at ``profile`` (exporting it the first time)."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    if profile == "tiny" and variant == "hybrid":
        return engines.DEFAULT_EXPORT
    config = load_config(profile)
    directory = (
        cache_root() / "bench" / f"{profile}-{variant}-{config.architecture_fingerprint()}-{__version__}"
    )
    return _exported_once(directory, config, variant, ddim_steps=4)


def _exported_once(directory: Path, config: Config, family: str, ddim_steps: int | None = None) -> Path:
    """``directory``, holding the export of ``family`` at ``config`` randomly initialised (seed 0):
    exported into a temporary directory and renamed into place the first time, then reused."""
    if (directory / "manifest.json").exists():
        return directory
    import torch

    from avsal_deploy.export.onnx import export_model
    from avsal_deploy.models.build import build_model

    torch.manual_seed(0)
    model = build_model(config, family).eval()
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=directory.parent))
    try:
        export_model(model, tmp, ddim_steps=ddim_steps)
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def config_digest(config: Config) -> str:
    """A short hash of every field of ``config`` (input sizes and statistics included)."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def family_export(config: Config, family: str) -> Path:
    """The export directory of ``family`` at ``config``, randomly initialised (seed 0): exported
    the first time, then reused (keyed by family, config digest and package version)."""
    check_variant(family)
    directory = cache_root() / "bench" / "zoo" / f"{family}-{config_digest(config)}-{__version__}"
    return _exported_once(directory, config, family)


def bench_profiles(default: str = "small") -> list[str]:
    """Profiles the engine suites run at: ``$AVSAL_BENCH_PROFILES`` (comma-separated) or ``default``."""
    names = [p.strip() for p in os.environ.get("AVSAL_BENCH_PROFILES", default).split(",") if p.strip()]
    bad = [p for p in names if p not in PROFILES]
    if bad:
        raise ConfigError(
            f"AVSAL_BENCH_PROFILES: unknown profile(s) {bad}: choose from {', '.join(PROFILES)}"
        )
    return names


def quick() -> bool:
    """Whether the suites run their quick form (``$AVSAL_BENCH_QUICK``, set by ``avsal bench --quick``)."""
    return os.environ.get("AVSAL_BENCH_QUICK", "") not in ("", "0")
