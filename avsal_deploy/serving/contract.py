"""The wire contract between the Triton models and their clients: names, shapes, parameters, errors.

Everything the repository writer (:mod:`~avsal_deploy.serving.repository`), the models the server
runs (:mod:`avsal_deploy.serving.models`) and the client (:mod:`~avsal_deploy.serving.client`)
must agree on is defined here, once, and nothing here imports them:

- **model names**: component ``c`` of the export is the model ``avsal_<c>`` (:func:`model_name`);
  a whole window is ``avsal_pipeline``, a live stream ``avsal_stream``, an encoded file
  ``avsal_video``;
- **tensor names** of those models' inputs and outputs (the ``*_INPUT`` / ``*_OUTPUT`` constants);
- **wire shapes**: a per-sample scalar (spec shape ``()``, e.g. the UNet's ``t``) travels with dims
  ``[1]`` and a ``reshape { shape: [] }``, because Triton gives every batched input at least one
  dimension (:func:`to_wire`, :func:`from_wire`);
- **model parameters** (``parameters`` of a model config): the export manifest that
  ``avsal_pipeline`` / ``avsal_stream`` / ``avsal_video`` carry, so a client needs nothing but the
  server's URL (:func:`pipeline_manifest`), the window engine and its threads, the window batch,
  the decoder and the limits (:data:`STREAM_LIMITS`, :data:`VIDEO_LIMITS`); all read through one
  typed reader, :func:`parameter`;
- **errors**: a request the model refuses raises :class:`RequestError` (answered INVALID_ARG, the
  server keeps serving), a component that fails while running a valid window
  :class:`ComponentCallError` (INTERNAL); :func:`error_response` is the one place either becomes a
  Triton response.

Model configs are read in their JSON form (what the python backend hands ``initialize`` and what
``get_model_config`` returns): ``{"parameters": {key: {"string_value": "..."}}}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from avsal_deploy.errors import AvsalError, ConfigError

T = TypeVar("T")

# ----------------------------------------------------------------------------- model names
MODEL_PREFIX = "avsal_"
PIPELINE_MODEL = "avsal_pipeline"
STREAM_MODEL = "avsal_stream"
VIDEO_MODEL = "avsal_video"


def model_name(component: str) -> str:
    """The Triton model serving export component ``component``."""
    return MODEL_PREFIX + component


# ----------------------------------------------------------------------------- tensor names
#: ``avsal_pipeline``: the encoders' inputs (named as in the export's specs), these optional ones,
#: and the maps it returns.
STEPS_INPUT = "steps"
SEED_INPUT = "seed"
NOISE_INPUT = "noise"
PIPELINE_OUTPUT = "saliency"
#: ``avsal_stream`` (and ``stride`` for ``avsal_video``): per-request and first-request inputs.
STRIDE_INPUT = "stride"
FRAME_INPUT = "frame"
AUDIO_INPUT = "audio"
AUDIO_RATE_INPUT = "audio_rate"
FPS_INPUT = "fps"
TIMESTAMP_INPUT = "timestamp"
#: When the stream's first audio sample plays, on the clock of the frames' timestamps (FP64 [1],
#: first request; default: with the first frame). See avsal_deploy.data.stream.StreamWindower.
AUDIO_START_INPUT = "audio_start"
ROI_CODEC_INPUT = "roi_codec"
MAPS_OUTPUT = "maps"
FRAME_INDEX_OUTPUT = "frame_index"
QP_OFFSETS_OUTPUT = "qp_offsets"
STREAMS_OUTPUT = "streams"
#: ``avsal_video``: one encoded file in, the maps and its frame rate out.
VIDEO_INPUT = "video"
FPS_OUTPUT = "fps"
#: The sequence batcher's control inputs of ``avsal_stream``.
START_CONTROL = "START"
END_CONTROL = "END"
CORRID_CONTROL = "CORRID"

# ----------------------------------------------------------------------------- parameters
MANIFEST_PARAMETER = "manifest"
MAX_BATCH_PARAMETER = "max_batch"
WINDOW_ENGINE_PARAMETER = "window_engine"
#: ONNX Runtime intra-op threads of each window model instance (``0``: every core the stub may use).
WINDOW_THREADS_PARAMETER = "window_threads"
WINDOW_BATCH_PARAMETER = "window_batch"
DECODER_PARAMETER = "decoder"

#: How the window models (pipeline, stream, video) run the components
#: (:mod:`avsal_deploy.serving.window_engine`).
WINDOW_ENGINES = ("onnxruntime", "bls")
#: Decoders of ``avsal_video``: PyAV on the CPU, DALI's GPU decoder.
DECODERS = ("pyav", "dali")

#: Defaults of the limits (config parameters of the generated repository).
STREAM_LIMITS: dict[str, float] = {
    "max_pixels": 3840 * 2160,
    "max_streams": 8,  # the sequence batcher's slots per instance (max_batch_size)
    "max_steps": 50,
    "max_stride": 64,
    "stream_idle_timeout_s": 60.0,
}
VIDEO_LIMITS: dict[str, float] = {
    "max_pixels": 3840 * 2160,
    "max_steps": 50,
    "max_stride": 64,
    "max_video_bytes": 512 << 20,
    "max_video_frames": 108_000,
    "max_video_seconds": 3600.0,
}
#: A stream's frame rate and audio rate when its first request does not say.
DEFAULT_FPS = 25.0
DEFAULT_AUDIO_RATE = 16000
#: Encoders whose QP offset grids ``avsal_stream`` returns (``roi_codec``; avsal_deploy.roi).
ROI_CODECS = ("x264", "x265")


def parameter(model_config: Mapping[str, Any], key: str, kind: Callable[[str], T], default: T) -> T:
    """The model config parameter ``key`` converted by ``kind`` (``int``, ``float``, ``str``,
    ``json.loads``, ...), or ``default`` when the config does not set it. A value ``kind`` refuses
    raises :class:`~avsal_deploy.errors.ConfigError` naming the model and the parameter."""
    entry = (model_config.get("parameters") or {}).get(key)
    if entry is None:
        return default
    raw = entry.get("string_value") if isinstance(entry, Mapping) else None
    try:
        if raw is None:
            raise ValueError("no string_value")
        return kind(str(raw))
    except (TypeError, ValueError) as exc:
        model = model_config.get("name", "model")
        raise ConfigError(f"{model}: parameter {key}={raw!r} is not valid ({exc})") from exc


def limits_of(model_config: Mapping[str, Any], defaults: Mapping[str, float]) -> dict[str, float]:
    """The limits a model config sets (its parameters), with ``defaults`` where absent."""
    return {key: parameter(model_config, key, float, float(value)) for key, value in defaults.items()}


def window_threads(model_config: Mapping[str, Any]) -> int | None:
    """The ``window_threads`` parameter of a window model (``None``: every core of the stub)."""
    threads = parameter(model_config, WINDOW_THREADS_PARAMETER, int, 0)
    if threads < 0:
        raise ConfigError(f"{WINDOW_THREADS_PARAMETER}={threads}: must be >= 0 (0 = every core)")
    return threads or None


def window_engine_kind(model_config: Mapping[str, Any]) -> str:
    """The ``window_engine`` parameter of a window model (default ``bls``)."""
    kind = parameter(model_config, WINDOW_ENGINE_PARAMETER, str, "bls")
    if kind not in WINDOW_ENGINES:
        raise ConfigError(f"{WINDOW_ENGINE_PARAMETER}={kind!r}: choose one of {', '.join(WINDOW_ENGINES)}")
    return kind


def pipeline_manifest(model_config: Mapping[str, Any]) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """``(manifest, config, specs)`` of the export manifest a window model's config carries (the
    ``manifest`` parameter; see :func:`avsal_deploy.specs.parse_manifest`)."""
    from avsal_deploy.specs import parse_manifest

    source = f"model {model_config.get('name', PIPELINE_MODEL)}"
    try:
        manifest = parameter(model_config, MANIFEST_PARAMETER, json.loads, None)
    except ConfigError as exc:
        raise AvsalError(f"{source}: config has no valid {MANIFEST_PARAMETER!r} parameter ({exc})") from exc
    if not isinstance(manifest, dict):
        raise AvsalError(f"{source}: config has no valid {MANIFEST_PARAMETER!r} parameter")
    return parse_manifest(manifest, source)


def string_parameters(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``values`` as the ``parameters`` entries of a model config (every value a string)."""
    return [{"key": k, "value": {"string_value": str(v)}} for k, v in values.items()]


def manifest_parameter(manifest: Mapping[str, Any]) -> str:
    """The ``manifest`` parameter's value: the export manifest as compact, sorted JSON."""
    return json.dumps(manifest, separators=(",", ":"), sort_keys=True)


# ----------------------------------------------------------------------------- wire shapes
def wire_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Per-sample dims on the wire: a scalar travels as ``[1]`` (Triton needs one dimension)."""
    return tuple(shape) or (1,)


def to_wire(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``array`` [B, *shape] as sent to Triton ([B, 1] for a per-sample scalar)."""
    return array.reshape(array.shape[0], *wire_shape(shape))


def from_wire(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`to_wire`: back to the spec's [B, *shape]."""
    return array.reshape(array.shape[0], *shape)


def scalar(value: np.ndarray | None, kind: Callable[[Any], T], name: str, default: T) -> T:
    """One value of a request input (``default`` when the request does not send it)."""
    if value is None:
        return default
    flat = np.asarray(value).reshape(-1)
    if flat.size != 1:
        raise RequestError(f"{name} must hold one value, got {flat.size}")
    return kind(flat[0])


# ----------------------------------------------------------------------------- errors
class RequestError(AvsalError):
    """A request the model refuses (answered with INVALID_ARG; the server keeps serving)."""


class ComponentCallError(RuntimeError):
    """A component model failed while a window model was running a (valid) window."""


def error_response(pb_utils: Any, exc: BaseException, prefix: str = "") -> Any:
    """The Triton response for a request that failed with ``exc``: INVALID_ARG for a refused
    request (any :class:`~avsal_deploy.errors.AvsalError`: bad inputs, limits, a corrupt file),
    INTERNAL for everything else (a component that failed, a bug). ``prefix`` (e.g. the model's
    name) goes before the message."""
    code = pb_utils.TritonError.INVALID_ARG if isinstance(exc, AvsalError) else pb_utils.TritonError.INTERNAL
    message = f"{prefix}{exc}" if prefix else str(exc)
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
