"""Triton client engine: the same :class:`~avsal_deploy.engine.base.Engine` protocol over HTTP or gRPC.

:class:`TritonEngine` runs each component on the server (``run`` calls ``avsal_<component>``), so
``condition`` and ``sample`` work as on any engine. Its ``predict_window`` sends the whole window
to ``avsal_pipeline`` instead, which runs the DDIM loop server-side (one round trip per window
instead of ``3 + steps``); ``server_loop=False`` keeps the loop on the client, calling the
component models step by step. Both give the maps of every other engine for the same noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from avsal_deploy.config import Config
from avsal_deploy.engine import register_backend
from avsal_deploy.engine.base import Arrays, Engine
from avsal_deploy.errors import AvsalError, BackendUnavailableError
from avsal_deploy.serving.repository import pipeline_manifest
from avsal_deploy.serving.server import SERVE_HINT
from avsal_deploy.serving.triton_models import (
    NOISE_INPUT,
    PIPELINE_MODEL,
    PIPELINE_OUTPUT,
    SEED_INPUT,
    STEPS_INPUT,
    from_wire,
    model_name,
    to_wire,
)
from avsal_deploy.specs import ENVELOPE, ComponentSpec, read_manifest

PROTOCOLS = ("http", "grpc")


class TritonRequestError(AvsalError):
    """The server rejected or failed a request (its message is passed on)."""


def _client_module(protocol: str) -> Any:
    if protocol not in PROTOCOLS:
        raise AvsalError(f"protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    try:
        if protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
    except ImportError as exc:
        raise BackendUnavailableError(f"tritonclient[{protocol}] is not installed; {SERVE_HINT}") from exc
    return module


def _address(url: str) -> str:
    """``host:port`` as tritonclient wants it (an ``http://`` prefix is accepted and dropped)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if scheme not in ("http", "grpc"):
        raise AvsalError(f"url {url!r}: only plain http:// or grpc:// endpoints are supported")
    return rest.rstrip("/")


class _Connection:
    """One tritonclient client; translates its exceptions into typed, one-line errors."""

    def __init__(self, url: str, protocol: str, timeout_s: float) -> None:
        self.module = _client_module(protocol)
        self.protocol = protocol
        self.url = _address(url)
        self.timeout_s = timeout_s
        if protocol == "http":
            self.client = self.module.InferenceServerClient(
                self.url, connection_timeout=timeout_s, network_timeout=timeout_s
            )
        else:
            self.client = self.module.InferenceServerClient(self.url)

    def _error(self, model: str, exc: Exception) -> AvsalError:
        from tritonclient.utils import InferenceServerException

        if isinstance(exc, InferenceServerException):
            if exc.status() == "StatusCode.UNAVAILABLE":
                return BackendUnavailableError(f"no Triton server at {self.url} ({exc.message()})")
            return TritonRequestError(f"{self.url} model {model}: {exc.message()}")
        return BackendUnavailableError(f"no Triton server at {self.url} ({type(exc).__name__}: {exc})")

    def infer(self, model: str, feeds: Mapping[str, np.ndarray], outputs: list[str]) -> Arrays:
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        inputs = []
        for name, array in feeds.items():
            item = self.module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            item.set_data_from_numpy(np.ascontiguousarray(array))
            inputs.append(item)
        requested = [self.module.InferRequestedOutput(n) for n in outputs]
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        try:
            result = self.client.infer(model, inputs, outputs=requested, **kwargs)
        except (InferenceServerException, OSError) as exc:
            raise self._error(model, exc) from exc
        # tritonclient hands out read-only views of its receive buffer; callers (and torch) want to own them
        return {n: np.array(result.as_numpy(n)) for n in outputs}

    def model_config(self, model: str) -> dict[str, Any]:
        from tritonclient.utils import InferenceServerException

        try:
            config = self.client.get_model_config(
                model, **({"as_json": True} if self.protocol == "grpc" else {})
            )
        except (InferenceServerException, OSError) as exc:
            raise self._error(model, exc) from exc
        return config["config"] if self.protocol == "grpc" else config

    def close(self) -> None:
        self.client.close()


class TritonEngine(Engine):
    """Components on a Triton server; ``predict_window`` by one ``avsal_pipeline`` call per batch.

    ``url`` is the server's HTTP (``host:port`` or ``http://host:port``) or gRPC (``host:port``)
    endpoint, chosen by ``protocol``. ``server_loop=False`` runs the DDIM loop here instead,
    through the base class (one ``avsal_unet_step`` call per step).
    """

    backend = "triton"

    def __init__(
        self,
        url: str,
        config: Config,
        variant: str,
        specs: Mapping[str, ComponentSpec],
        *,
        protocol: str = "http",
        server_loop: bool = True,
        timeout_s: float = 600.0,
    ) -> None:
        super().__init__(config, variant, specs)
        self.connection = _Connection(url, protocol, timeout_s)
        self.server_loop = server_loop

    def run(self, component: str, feeds: Mapping[str, np.ndarray]) -> Arrays:
        spec = self.specs[component]
        wire = {t.name: to_wire(np.asarray(feeds[t.name]), t.shape) for t in spec.inputs}
        out = self.connection.infer(model_name(component), wire, spec.output_names)
        return {t.name: from_wire(out[t.name], t.shape) for t in spec.outputs}

    def predict_window(
        self,
        frames: np.ndarray,
        audio: np.ndarray,
        steps: int | None = None,
        noise: np.ndarray | None = None,
        seed: int = 0,
        *,
        envelope: np.ndarray | None = None,
    ) -> np.ndarray:
        """Maps [B,1,H,W] for a batch of windows; see :meth:`Engine.predict_window`.

        With ``server_loop`` (default) the window is one ``avsal_pipeline`` request: the server
        draws the noise from ``seed`` (unless ``noise`` is given) exactly as the base class does.
        """
        if not self.server_loop:
            return super().predict_window(
                frames, audio, steps=steps, noise=noise, seed=seed, envelope=envelope
            )
        feeds = {
            self.specs["video_encoder"].input_names[0]: np.ascontiguousarray(frames, np.float32),
            self.specs["audio_encoder"].input_names[0]: np.ascontiguousarray(audio, np.float32),
            SEED_INPUT: np.array([seed], np.int64),
        }
        if self.uses_envelope:
            if envelope is None:
                raise AvsalError(
                    f"{PIPELINE_MODEL} ({self.variant}, fusion.av_sync) needs the per-frame audio envelope"
                )
            feeds[ENVELOPE] = np.ascontiguousarray(envelope, np.float32)
        if steps is not None:
            feeds[STEPS_INPUT] = np.array([steps], np.int32)
        if noise is not None:
            feeds[NOISE_INPUT] = np.ascontiguousarray(noise, np.float32)
        return self.connection.infer(PIPELINE_MODEL, feeds, [PIPELINE_OUTPUT])[PIPELINE_OUTPUT]

    def close(self) -> None:
        self.connection.close()


def open_triton(
    url: str,
    export_dir: str | Path | None = None,
    *,
    protocol: str = "http",
    server_loop: bool = True,
    timeout_s: float = 600.0,
) -> TritonEngine:
    """A :class:`TritonEngine` for the server at ``url``.

    The config and component specs come from ``export_dir``'s manifest when given, else from the
    manifest that ``avsal_pipeline``'s model config carries (one request to the server).
    """
    if export_dir is not None:
        manifest, config, specs = read_manifest(export_dir)
    else:
        connection = _Connection(url, protocol, timeout_s)
        try:
            manifest, config, specs = pipeline_manifest(connection.model_config(PIPELINE_MODEL))
        finally:
            connection.close()
    return TritonEngine(
        url,
        config,
        manifest["variant"],
        specs,
        protocol=protocol,
        server_loop=server_loop,
        timeout_s=timeout_s,
    )


#: Where ``engine.open(None, backend="triton")`` looks (``avsal serve``'s default HTTP port).
DEFAULT_URL = "127.0.0.1:8000"


def _open_engine(source: str | None = None, **options: Any) -> TritonEngine:
    """``engine.open(URL, backend="triton", export_dir=..., protocol=..., server_loop=...)``."""
    return open_triton(str(source) if source is not None else DEFAULT_URL, **options)


register_backend("triton", _open_engine)
