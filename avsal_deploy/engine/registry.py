"""The backends :func:`open` knows: this package's own, plug-ins (entry points) and registered ones."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from avsal_deploy.engine.base import Engine
from avsal_deploy.errors import AvsalError, BackendUnavailableError

#: ``opener(source, **options) -> Engine``.
Opener = Callable[..., Engine]
#: The entry-point group of backend plug-ins (name: the backend, value: ``module:opener``).
ENTRY_POINT_GROUP = "avsal_deploy.engines"
#: The backends of this package: the module whose ``open_engine`` opens each (imported on first use).
BUILTIN_BACKENDS: dict[str, str] = {
    "onnxruntime": "avsal_deploy.engine.ort",
    "torch": "avsal_deploy.engine.eager",
    "tensorrt": "avsal_deploy.engine.trt",
}
#: The backends of this distribution that are plug-ins (declared in its pyproject.toml).
_OWN_PLUGINS = ("triton",)
_REGISTRY: dict[str, Opener] = {}


def register_backend(name: str, opener: Opener) -> None:
    """Make ``open(source, backend=name, **options)`` call ``opener(source, **options)``."""
    _REGISTRY[name] = opener


def _plugins() -> dict[str, Any]:
    """The backend entry points of the installed distributions, by name."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def backends() -> list[str]:
    """Every backend name :func:`open` accepts here (built-in, plugged in, registered)."""
    return sorted({*BUILTIN_BACKENDS, *_plugins(), *_REGISTRY})


def _opener(backend: str) -> Opener:
    if backend in _REGISTRY:
        return _REGISTRY[backend]
    module = BUILTIN_BACKENDS.get(backend)
    if module is not None:
        opener: Opener = importlib.import_module(module).open_engine
        return opener
    plugin = _plugins().get(backend)
    if plugin is not None:
        loaded: Opener = plugin.load()
        return loaded
    if backend in _OWN_PLUGINS:  # declared by this distribution, but its metadata is older
        raise BackendUnavailableError(
            f"engine backend {backend!r}: its entry point ({ENTRY_POINT_GROUP}) is missing from the "
            "installed avsal-deploy metadata; reinstall the package (pip install -e . in a checkout)"
        )
    raise AvsalError(f"unknown engine backend {backend!r}: choose one of {', '.join(backends())}")


def open(  # noqa: A001 - the registry's verb, as in io.open
    source: str | os.PathLike[str] | None = None, backend: str = "onnxruntime", **options: Any
) -> Engine:
    """An engine of ``backend`` over ``source`` (see :mod:`avsal_deploy.engine` for what each takes)."""
    return _opener(backend)(source, **options)
