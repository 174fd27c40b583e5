"""The Triton client: an engine over HTTP or gRPC, and the raw-media calls (streams, whole files).

:class:`TritonEngine` is the same :class:`~avsal_deploy.engine.base.Engine` protocol as every
other backend: it runs each component on the server (``run`` calls ``avsal_<component>``), so
``condition`` and ``sample`` work as on any engine. Its ``predict_window`` sends the whole window
to ``avsal_pipeline`` instead, which runs the DDIM loop server-side (one round trip per window
instead of ``3 + steps``); ``server_loop=False`` keeps the loop on the client, calling the
component models step by step. Both give the maps of every other engine for the same noise.
It is the ``triton`` backend of :func:`avsal_deploy.engine.open`, plugged in through the
``avsal_deploy.engines`` entry point (``pyproject.toml``) to :func:`open_engine`.

:func:`stream` plays frames through ``avsal_stream`` and :func:`predict_video` sends a whole
file to ``avsal_video`` (gRPC). Names and shapes are those of :mod:`avsal_deploy.serving.contract`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from avsal_deploy.config import Config
from avsal_deploy.engine.base import Arrays, Engine
from avsal_deploy.engine.choice import DEFAULT_URLS
from avsal_deploy.errors import AvsalError, BackendUnavailableError
from avsal_deploy.serving.contract import (
    AUDIO_INPUT,
    AUDIO_RATE_INPUT,
    AUDIO_START_INPUT,
    FPS_INPUT,
    FPS_OUTPUT,
    FRAME_INDEX_OUTPUT,
    FRAME_INPUT,
    MAPS_OUTPUT,
    NOISE_INPUT,
    PIPELINE_MODEL,
    PIPELINE_OUTPUT,
    QP_OFFSETS_OUTPUT,
    ROI_CODEC_INPUT,
    SEED_INPUT,
    STEPS_INPUT,
    STREAM_MODEL,
    STRIDE_INPUT,
    TIMESTAMP_INPUT,
    VIDEO_INPUT,
    VIDEO_MODEL,
    from_wire,
    model_name,
    pipeline_manifest,
    to_wire,
)
from avsal_deploy.serving.server import DEFAULT_PORTS, HOST, SERVE_HINT
from avsal_deploy.specs import ENVELOPE, ComponentSpec, read_manifest

PROTOCOLS = ("http", "grpc")
#: Where a client looks without a URL: ``avsal serve``'s default HTTP and gRPC endpoints
#: (:data:`avsal_deploy.serving.server.DEFAULT_PORTS`).
DEFAULT_URL = DEFAULT_URLS["triton"]
DEFAULT_GRPC_URL = f"{HOST}:{DEFAULT_PORTS.grpc}"


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

    def infer_shm(
        self, model: str, feeds: Mapping[str, np.ndarray], outputs: Mapping[str, tuple[tuple[int, ...], Any]]
    ) -> Arrays:
        """:meth:`infer` with the tensors in system shared memory (server on this host): inputs are
        copied into one registered region and outputs read from another, instead of crossing the
        socket. ``outputs``: name -> (shape, dtype) of what the server returns."""
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        arrays = {n: np.ascontiguousarray(a) for n, a in feeds.items()}
        in_size = sum(a.nbytes for a in arrays.values())
        out_size = sum(int(np.prod(s)) * np.dtype(d).itemsize for s, d in outputs.values())
        self._ensure_regions(in_size, out_size)
        import tritonclient.utils.shared_memory as shm

        shm.set_shared_memory_region(self._shm["in"][0], list(arrays.values()))
        inputs, offset = [], 0
        for name, array in arrays.items():
            item = self.module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            item.set_shared_memory(self._shm["in"][1], array.nbytes, offset=offset)
            inputs.append(item)
            offset += array.nbytes
        requested, offset, where = [], 0, {}
        for name, (shape, dtype) in outputs.items():
            size = int(np.prod(shape)) * np.dtype(dtype).itemsize
            out = self.module.InferRequestedOutput(name)
            out.set_shared_memory(self._shm["out"][1], size, offset=offset)
            requested.append(out)
            where[name] = (offset, shape, dtype)
            offset += size
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        try:
            self.client.infer(model, inputs, outputs=requested, **kwargs)
        except (InferenceServerException, OSError) as exc:
            raise self._error(model, exc) from exc
        return {
            name: np.array(shm.get_contents_as_numpy(self._shm["out"][0], np.dtype(d), s, offset=o))
            for name, (o, s, d) in where.items()
        }

    def _ensure_regions(self, in_size: int, out_size: int) -> None:
        import os
        import uuid

        import tritonclient.utils.shared_memory as shm

        self._shm = getattr(self, "_shm", {})
        for kind, size in (("in", in_size), ("out", out_size)):
            have = self._shm.get(kind)
            if have is not None and have[2] >= size:
                continue
            if have is not None:
                self.client.unregister_system_shared_memory(have[1])
                shm.destroy_shared_memory_region(have[0])
            name = f"avsal_{kind}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
            handle = shm.create_shared_memory_region(name, "/" + name, size)
            self.client.register_system_shared_memory(name, "/" + name, size)
            self._shm[kind] = (handle, name, size)

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
        import tritonclient.utils.shared_memory as shm

        for handle, name, _ in getattr(self, "_shm", {}).values():
            try:
                self.client.unregister_system_shared_memory(name)
            except Exception:  # noqa: BLE001 - the server may be gone already
                pass
            shm.destroy_shared_memory_region(handle)
        self._shm = {}
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
        shared_memory: bool = False,
        manifest: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(config, variant, specs)
        self.manifest = dict(manifest) if manifest is not None else None  # the served export's
        self.connection = _Connection(url, protocol, timeout_s)
        self.server_loop = server_loop
        self.shared_memory = shared_memory

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
            SEED_INPUT: np.array([seed], np.int64),
        }
        if "audio_encoder" in self.specs:  # a visual-only family takes no audio
            feeds[self.specs["audio_encoder"].input_names[0]] = np.ascontiguousarray(audio, np.float32)
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
        if self.shared_memory:
            shape = (int(frames.shape[0]), *self.config.map_shape())
            out = {PIPELINE_OUTPUT: (shape, np.float32)}
            return self.connection.infer_shm(PIPELINE_MODEL, feeds, out)[PIPELINE_OUTPUT]
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
    shared_memory: bool = False,
) -> TritonEngine:
    """A :class:`TritonEngine` for the server at ``url``; ``shared_memory`` passes whole windows
    through system shared memory (the server must run on this host).

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
        shared_memory=shared_memory,
        manifest=manifest,
    )


def open_engine(source: str | None = None, **options: Any) -> TritonEngine:
    """The ``triton`` backend of :func:`avsal_deploy.engine.open`: ``source`` is the server's URL
    (default :data:`DEFAULT_URL`); ``options`` are :func:`open_triton`'s (``export_dir``,
    ``protocol``, ``server_loop``, ``timeout_s``, ``shared_memory``)."""
    return open_triton(str(source) if source is not None else DEFAULT_URL, **options)


# ----------------------------------------------------------------------------- raw media
def _grpc_client(url: str, retries: int, backoff_s: float) -> Any:
    """A gRPC client whose server answers, retrying connection loss at start-up with backoff."""
    import time

    grpc = _client_module("grpc")
    address = _address(url)
    last: Exception | None = None
    for attempt in range(retries + 1):
        client = grpc.InferenceServerClient(address)
        try:
            if client.is_server_ready():
                return client
        except Exception as exc:  # noqa: BLE001 - tritonclient raises its own and grpc's errors
            last = exc
        client.close()
        if attempt < retries:
            time.sleep(backoff_s * (2**attempt))
    raise BackendUnavailableError(f"no Triton server ready at {address} after {retries + 1} tries ({last})")


def _input(grpc: Any, name: str, array: np.ndarray) -> Any:
    from tritonclient.utils import np_to_triton_dtype

    item = grpc.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    item.set_data_from_numpy(np.ascontiguousarray(array))
    return item


def stream(
    url: str,
    frames: Any,
    audio_chunks: Any = None,
    *,
    fps: float = 25.0,
    audio_rate: int = 16000,
    audio_start: float | None = None,
    steps: int | None = None,
    stride: int | None = None,
    seed: int = 0,
    sequence_id: int | None = None,
    roi_codec: str | None = None,
    shared_memory: bool = False,
    retries: int = 5,
    backoff_s: float = 0.2,
    timeout_s: float = 120.0,
) -> Any:
    """Play a stream through ``avsal_stream`` over gRPC: a generator of ``(frame_index, map)``.

    ``frames`` yields uint8 RGB [H, W, 3] frames (or ``(frame, timestamp)`` pairs); ``audio_chunks``
    (optional) yields, per frame, the mono float32 samples that came with it at ``audio_rate``;
    ``audio_start`` is when the first of them plays, on the clock of the frames' timestamps
    (default: with the first frame; a soundtrack demuxed from a file starts at its track's start
    time, which is not always the first frame's).
    Maps are float32 [h, w] at the model's size, each frame's exactly once, in frame order; the
    last ones arrive with the END request. With ``roi_codec`` (``x264`` / ``x265``) it yields
    ``(frame_index, map, qp_offsets)``, the frame's QP offset grid for a live encoder.
    ``shared_memory`` sends the frames through a system shared-memory region (the server must run
    on this host); the maps come back over gRPC (they are small). Connection loss at start-up is retried with
    exponential backoff; later failures raise :class:`TritonRequestError` or
    :class:`BackendUnavailableError` with the server's message.
    """
    import itertools
    import random

    from tritonclient.utils import InferenceServerException

    grpc = _client_module("grpc")
    client = _grpc_client(url, retries, backoff_s)
    cid = int(sequence_id if sequence_id is not None else random.getrandbits(62) + 1)
    chunks = iter(audio_chunks) if audio_chunks is not None else itertools.repeat(None)
    regions: dict[str, Any] = {}
    try:
        items = iter(frames)
        current = next(items, None)
        first = True
        while current is not None:
            upcoming = next(items, None)
            frame, ts = current if isinstance(current, tuple) else (current, None)
            frame = np.ascontiguousarray(np.asarray(frame, np.uint8)[None])
            if shared_memory:
                inputs = [_shm_frame(client, grpc, frame, regions)]
            else:
                inputs = [_input(grpc, FRAME_INPUT, frame)]
            chunk = next(chunks, None)
            if chunk is not None:
                inputs.append(_input(grpc, AUDIO_INPUT, np.asarray(chunk, np.float32).reshape(1, -1)))
            if ts is not None:
                inputs.append(_input(grpc, TIMESTAMP_INPUT, np.array([[ts]], np.float64)))
            if first:
                inputs.append(_input(grpc, AUDIO_RATE_INPUT, np.array([[audio_rate]], np.int32)))
                inputs.append(_input(grpc, FPS_INPUT, np.array([[fps]], np.float64)))
                inputs.append(_input(grpc, SEED_INPUT, np.array([[seed]], np.int64)))
                if audio_start is not None:
                    inputs.append(_input(grpc, AUDIO_START_INPUT, np.array([[audio_start]], np.float64)))
                if steps is not None:
                    inputs.append(_input(grpc, STEPS_INPUT, np.array([[steps]], np.int32)))
                if stride is not None:
                    inputs.append(_input(grpc, STRIDE_INPUT, np.array([[stride]], np.int32)))
                if roi_codec is not None:
                    codec = grpc.InferInput(ROI_CODEC_INPUT, [1, 1], "BYTES")
                    codec.set_data_from_numpy(np.array([[roi_codec.encode()]], dtype=np.object_))
                    inputs.append(codec)
            try:
                result = client.infer(
                    STREAM_MODEL,
                    inputs,
                    sequence_id=cid,
                    sequence_start=first,
                    sequence_end=upcoming is None,
                    client_timeout=timeout_s,
                )
            except InferenceServerException as exc:
                if exc.status() == "StatusCode.UNAVAILABLE":
                    raise BackendUnavailableError(
                        f"Triton server at {url} went away: {exc.message()}"
                    ) from exc
                raise TritonRequestError(f"{url} {STREAM_MODEL}: {exc.message()}") from exc
            maps, index = result.as_numpy(MAPS_OUTPUT)[0], result.as_numpy(FRAME_INDEX_OUTPUT)[0]
            qp = result.as_numpy(QP_OFFSETS_OUTPUT)[0]
            for k, (i, m) in enumerate(zip(index.tolist(), maps, strict=True)):
                yield (int(i), np.array(m), np.array(qp[k])) if roi_codec else (int(i), np.array(m))
            first, current = False, upcoming
    finally:
        _drop_regions(client, regions)
        client.close()


def _shm_frame(client: Any, grpc: Any, frame: np.ndarray, regions: dict[str, Any]) -> Any:
    """The ``frame`` input in a system shared-memory region (made and registered once per size)."""
    import os
    import uuid

    import tritonclient.utils.shared_memory as shm

    if regions.get("size") != frame.nbytes:
        _drop_regions(client, regions)
        name = f"avsal_frame_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        regions.update(handle=shm.create_shared_memory_region(name, "/" + name, frame.nbytes), name=name)
        client.register_system_shared_memory(name, "/" + name, frame.nbytes)
        regions["size"] = frame.nbytes
    shm.set_shared_memory_region(regions["handle"], [frame])
    item = grpc.InferInput(FRAME_INPUT, list(frame.shape), "UINT8")
    item.set_shared_memory(regions["name"], frame.nbytes)
    return item


def _drop_regions(client: Any, regions: dict[str, Any]) -> None:
    if "handle" not in regions:
        return
    import tritonclient.utils.shared_memory as shm

    try:
        client.unregister_system_shared_memory(regions["name"])
    except Exception:  # noqa: BLE001 - the server may be gone already
        pass
    shm.destroy_shared_memory_region(regions["handle"])
    regions.clear()


def predict_video(
    url: str,
    path: str | Path,
    *,
    steps: int | None = None,
    stride: int | None = None,
    seed: int = 0,
    retries: int = 5,
    backoff_s: float = 0.2,
    timeout_s: float = 600.0,
) -> tuple[np.ndarray, float]:
    """Maps float32 [N, h, w] (model size) and fps of a whole video file, decoded server-side by
    ``avsal_video``."""
    from tritonclient.utils import InferenceServerException

    grpc = _client_module("grpc")
    data = Path(path).read_bytes()
    client = _grpc_client(url, retries, backoff_s)
    item = grpc.InferInput(VIDEO_INPUT, [1], "BYTES")
    item.set_data_from_numpy(np.array([data], dtype=np.object_))
    inputs = [item, _input(grpc, SEED_INPUT, np.array([seed], np.int64))]
    if steps is not None:
        inputs.append(_input(grpc, STEPS_INPUT, np.array([steps], np.int32)))
    if stride is not None:
        inputs.append(_input(grpc, STRIDE_INPUT, np.array([stride], np.int32)))
    try:
        result = client.infer(VIDEO_MODEL, inputs, client_timeout=timeout_s)
    except InferenceServerException as exc:
        raise TritonRequestError(f"{url} {VIDEO_MODEL} ({path}): {exc.message()}") from exc
    finally:
        client.close()
    return np.array(result.as_numpy(MAPS_OUTPUT)), float(result.as_numpy(FPS_OUTPUT)[0])
