"""Which engine to open: one object for the backend, the checkpoint, the export directory and the URL.

Every command (``predict``, ``score``, ``roi``, ``eval``), the public API and the training's
evaluation describe the model they run with an :class:`EngineChoice`; it is checked when made
(one error per wrong combination, whatever the command), opened with :meth:`EngineChoice.open`
and named by content hash with :meth:`EngineChoice.identity` (for ``avsal score``'s resume rule).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avsal_deploy.errors import AvsalError

if TYPE_CHECKING:
    from avsal_deploy.engine.base import Engine

#: The backends the commands offer (``--engine``); ``onnxruntime`` is the default and runs on the
#: base install.
BACKENDS: tuple[str, ...] = ("onnxruntime", "torch", "tensorrt", "triton")
DEFAULT_BACKEND = "onnxruntime"
#: Backends that reach the model through a server (``url``) rather than local files, and where
#: each looks without one (``avsal serve``'s default HTTP endpoint).
DEFAULT_URLS: dict[str, str] = {"triton": "127.0.0.1:8000"}
URL_BACKENDS: frozenset[str] = frozenset(DEFAULT_URLS)
#: Backends that export a checkpoint once into the cache and can report that they do.
_EXPORTING_BACKENDS: frozenset[str] = frozenset({"onnxruntime"})


@dataclass(frozen=True)
class EngineChoice:
    """The model to run and where: ``backend`` (see :data:`BACKENDS`), then either a
    ``checkpoint`` file or an ``export`` directory (neither: the shipped model), or, for
    ``triton``, the server's ``url`` (default: ``avsal serve``'s, 127.0.0.1:8000) and optionally
    the ``export`` directory it serves (its manifest instead of the server's).

    Wrong combinations raise :class:`~avsal_deploy.errors.AvsalError` here, before any work.
    """

    backend: str = DEFAULT_BACKEND
    checkpoint: str | None = None
    export: str | None = None
    url: str | None = None

    def __post_init__(self) -> None:
        for name in ("checkpoint", "export"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, name, str(value))
        if self.checkpoint is not None and self.export is not None:
            raise AvsalError("give a checkpoint (--checkpoint) or an export directory (--export), not both")
        if self.url is not None and self.backend not in URL_BACKENDS:
            raise AvsalError(f"--url is for --engine triton (a Triton server), not --engine {self.backend}")
        if self.backend in URL_BACKENDS and self.checkpoint is not None:
            raise AvsalError(
                f"--engine {self.backend} runs the model the server serves: --checkpoint does not apply "
                "(give the server's --url, and --export for its export directory)"
            )

    @classmethod
    def of(
        cls,
        backend: str | None = None,
        checkpoint: str | Path | None = None,
        export: str | Path | None = None,
        url: str | None = None,
    ) -> EngineChoice:
        """A choice from optional parts: no ``backend`` means ``triton`` with a ``url``, else
        :data:`DEFAULT_BACKEND`."""
        if backend is None:
            backend = "triton" if url is not None else DEFAULT_BACKEND
        return cls(
            backend,
            str(checkpoint) if checkpoint is not None else None,
            str(export) if export is not None else None,
            url,
        )

    @property
    def remote(self) -> bool:
        """Whether the model runs on a server (the backend takes a URL)."""
        return self.backend in URL_BACKENDS

    @property
    def server(self) -> str | None:
        """The server a remote backend reaches (its URL, or the default one); None for local ones."""
        return (self.url or DEFAULT_URLS[self.backend]) if self.remote else None

    def with_url(self, url: str | None) -> EngineChoice:
        """The same choice on another server (one per worker of ``avsal score --url A --url B``)."""
        return replace(self, url=url)

    def open(self, *, on_export: Callable[[Path], None] | None = None, **options: Any) -> Engine:
        """Open the engine (:func:`avsal_deploy.engine.open`). ``on_export(directory)`` is called
        when a checkpoint is about to be exported into the cache; ``options`` go to the backend
        (``device`` for torch, ``providers`` / ``threads`` for onnxruntime, ``protocol`` /
        ``server_loop`` / ``shared_memory`` for triton, ...)."""
        from avsal_deploy.engine import registry as engine

        if self.remote:
            if self.export is not None:
                options["export_dir"] = self.export
            return engine.open(self.url, self.backend, **options)
        if on_export is not None and self.backend in _EXPORTING_BACKENDS:
            options["on_export"] = on_export
        return engine.open(self.export or self.checkpoint, self.backend, **options)

    def identity(self) -> str:
        """A content hash of the model this choice runs: the export manifest's (which records its
        weights' hash), the manifest a server carries, or the checkpoint file's."""
        from avsal_deploy.specs import sha256_file

        if self.export is not None:
            path = Path(self.export) / "manifest.json"
            if not path.is_file():
                raise AvsalError(f"{path}: no manifest; create the directory with `avsal export`")
            return "manifest:" + sha256_file(path)
        if self.remote:
            opened = self.open(timeout_s=30.0)
            try:
                manifest = getattr(opened, "manifest", None)
            finally:
                opened.close()
            if manifest is None:
                raise AvsalError(f"{self.backend} engine at {self.url}: the server does not carry a manifest")
            return "manifest:" + hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
        from avsal_deploy.engine.sources import DEFAULT_CHECKPOINT

        checkpoint = Path(self.checkpoint) if self.checkpoint is not None else DEFAULT_CHECKPOINT
        if not checkpoint.is_file():
            raise AvsalError(f"{checkpoint}: no such checkpoint file")
        return "checkpoint:" + sha256_file(checkpoint)
