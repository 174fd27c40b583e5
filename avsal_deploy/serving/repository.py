"""A Triton model repository generated from an export directory's manifest.

Every name, shape and batch limit comes from the component specs recorded by ``avsal export``
(:mod:`avsal_deploy.export.components`); nothing is re-typed. Layout (see ``triton_repo/README.md``; the ``model.py`` templates live in ``serving/templates/``)::

    REPO/avsal_<component>/config.pbtxt     one model per exported component, dynamic batching,
    REPO/avsal_<component>/1/model.onnx     max_batch_size = the spec's batch profile maximum
    REPO/avsal_<component>/1/model.py       (python-onnxruntime only: the thin template)
    REPO/avsal_pipeline/config.pbtxt        frames + audio [+ envelope] (+ steps, seed, noise) -> saliency
    REPO/avsal_pipeline/1/model.py          BLS model running Engine.predict_window server-side

Platforms:

``python-onnxruntime`` (default)
    Python-backend models running onnxruntime on CPU. The only one that runs with the
    ``nvidia-pytriton`` wheel, whose ``tritonserver`` has the python backend and nothing else.
``onnxruntime``
    ``platform: "onnxruntime_onnx"`` configs for the NGC ``tritonserver`` container (GPU when present).
``tensorrt``
    ``platform: "tensorrt_plan"`` configs on the GPU, using the plans ``avsal build-engines`` wrote
    into the export directory (``<component>.plan``).

The last two are written and checked here but cannot be served on a CPU-only machine with the
wheel. In every platform ``avsal_pipeline`` is a python-backend model that imports
``avsal_deploy``: the server's Python environment must have the package installed.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from avsal_deploy.config import Config
from avsal_deploy.errors import AvsalError, BackendUnavailableError, ConfigError
from avsal_deploy.serving.contract import (
    AUDIO_INPUT,
    AUDIO_RATE_INPUT,
    AUDIO_START_INPUT,
    CORRID_CONTROL,
    DECODER_PARAMETER,
    END_CONTROL,
    FPS_INPUT,
    FPS_OUTPUT,
    FRAME_INDEX_OUTPUT,
    FRAME_INPUT,
    MANIFEST_PARAMETER,
    MAPS_OUTPUT,
    MAX_BATCH_PARAMETER,
    NOISE_INPUT,
    PIPELINE_MODEL,
    PIPELINE_OUTPUT,
    QP_OFFSETS_OUTPUT,
    ROI_CODEC_INPUT,
    SEED_INPUT,
    START_CONTROL,
    STEPS_INPUT,
    STREAM_LIMITS,
    STREAM_MODEL,
    STREAMS_OUTPUT,
    STRIDE_INPUT,
    TIMESTAMP_INPUT,
    VIDEO_INPUT,
    VIDEO_LIMITS,
    VIDEO_MODEL,
    WINDOW_BATCH_PARAMETER,
    WINDOW_ENGINE_PARAMETER,
    WINDOW_ENGINES,
    WINDOW_THREADS_PARAMETER,
    manifest_parameter,
    model_name,
    string_parameters,
    wire_shape,
)
from avsal_deploy.specs import (
    ComponentSpec,
    TensorSpec,
    read_manifest,
    sha256_file,
    window_inputs,
)

PLATFORMS = ("python-onnxruntime", "onnxruntime", "tensorrt")
#: The ``model.py`` templates, shipped inside the package (a plain ``pip install`` can build a repository).
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
VERSION = "1"
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int32": "TYPE_INT32", "int64": "TYPE_INT64"}


class _Enum(str):
    """A protobuf enum value: written without quotes in the text format."""


# ----------------------------------------------------------------------------- pbtxt
def _scalar(value: Any) -> str:
    if isinstance(value, _Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    raise TypeError(f"cannot write {value!r} in protobuf text format")


def to_pbtxt(message: Mapping[str, Any], indent: int = 0) -> str:
    """``message`` (dicts = messages, lists of dicts = repeated messages) in protobuf text format."""
    pad = "  " * indent
    lines: list[str] = []
    for key, value in message.items():
        items = value if isinstance(value, list) and value and isinstance(value[0], Mapping) else None
        if isinstance(value, Mapping):
            items = [value]
        if items is not None:
            for item in items:
                lines += [f"{pad}{key} {{", to_pbtxt(item, indent + 1).rstrip("\n"), f"{pad}}}"]
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [{', '.join(_scalar(v) for v in value)}]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(line for line in lines if line) + "\n"


# ----------------------------------------------------------------------------- configs
def _tensor(t: TensorSpec, batch_in_dims: bool = False, optional: bool = False) -> dict[str, Any]:
    """A config input/output of per-sample shape ``t.shape``.

    In a batched model (max_batch_size > 0) Triton adds the batch axis itself; in the unbatched
    pipeline ``batch_in_dims`` writes it as a leading ``-1``.
    """
    if t.dtype not in TRITON_DTYPES:
        raise AvsalError(f"tensor {t.name!r}: dtype {t.dtype} has no Triton type here")
    entry: dict[str, Any] = {"name": t.name, "data_type": _Enum(TRITON_DTYPES[t.dtype])}
    entry["dims"] = [-1, *t.shape] if batch_in_dims else list(wire_shape(t.shape))
    if not batch_in_dims and not t.shape:
        entry["reshape"] = {"shape": []}
    if optional:
        entry["optional"] = True
    return entry


def component_config(spec: ComponentSpec, platform: str, instances: int, max_batch: int) -> dict[str, Any]:
    """The Triton config of one component model."""
    config: dict[str, Any] = {"name": model_name(spec.name)}
    if platform == "python-onnxruntime":
        config["backend"] = "python"
    elif platform == "onnxruntime":
        config["platform"] = "onnxruntime_onnx"
    else:
        config["platform"] = "tensorrt_plan"
    config["max_batch_size"] = max_batch
    config["input"] = [_tensor(t) for t in spec.inputs]
    config["output"] = [_tensor(t) for t in spec.outputs]
    batching: dict[str, Any] = {"max_queue_delay_microseconds": 0}
    opt = min(spec.batch_profile[1], max_batch)
    if opt > 1:
        batching["preferred_batch_size"] = [opt]
    config["dynamic_batching"] = batching
    group: dict[str, Any] = {"count": instances}
    if platform == "python-onnxruntime":
        group["kind"] = _Enum("KIND_CPU")
    elif platform == "tensorrt":
        group["kind"] = _Enum("KIND_GPU")
    config["instance_group"] = [group]  # onnxruntime: KIND_AUTO, the GPU where there is one
    return config


def pipeline_config(
    manifest: Mapping[str, Any],
    config: Config,
    specs: Mapping[str, ComponentSpec],
    instances: int,
    max_batch: int,
) -> dict[str, Any]:
    """The config of ``avsal_pipeline``: unbatched (max_batch_size 0), batch axis in the dims.

    It does not use Triton's batcher itself: its BLS calls reach the component models, whose
    dynamic batchers merge concurrent windows. The export manifest rides along as a parameter.
    """
    inputs = [
        *(_tensor(t, batch_in_dims=True) for t in window_inputs(specs)),
        # steps and seed: one value per request, not per window
        _tensor(TensorSpec(STEPS_INPUT, (1,), "int32"), optional=True),
        _tensor(TensorSpec(SEED_INPUT, (1,), "int64"), optional=True),
        _tensor(TensorSpec(NOISE_INPUT, config.map_shape()), batch_in_dims=True, optional=True),
    ]
    return {
        "name": PIPELINE_MODEL,
        "backend": "python",
        "max_batch_size": 0,
        "input": inputs,
        "output": [_tensor(TensorSpec(PIPELINE_OUTPUT, config.map_shape()), batch_in_dims=True)],
        "instance_group": [{"count": instances, "kind": _Enum("KIND_CPU")}],
        "parameters": string_parameters(
            {
                MANIFEST_PARAMETER: manifest_parameter(manifest),
                MAX_BATCH_PARAMETER: str(max_batch),
            }
        ),
    }


def _control(name: str, kind: str, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"kind": _Enum(kind)}
    entry.update(extra)
    return {"name": name, "control": [entry]}


def _limits(values: Mapping[str, float]) -> dict[str, str]:
    return {k: (str(int(v)) if float(v).is_integer() else str(v)) for k, v in values.items()}


def stream_config(
    manifest: Mapping[str, Any], instances: int, limits: Mapping[str, float], window_batch: int
) -> dict[str, Any]:
    """The config of ``avsal_stream``: python model under the sequence batcher, one slot per live
    stream (``max_batch_size`` = ``max_streams``), Triton's idle timeout = ours."""
    slots = int(limits["max_streams"])
    opt = {"optional": True}
    inputs = [
        {"name": FRAME_INPUT, "data_type": _Enum("TYPE_UINT8"), "dims": [-1, -1, 3]},
        {"name": AUDIO_INPUT, "data_type": _Enum("TYPE_FP32"), "dims": [-1], **opt},
        {"name": AUDIO_RATE_INPUT, "data_type": _Enum("TYPE_INT32"), "dims": [1], **opt},
        {"name": FPS_INPUT, "data_type": _Enum("TYPE_FP64"), "dims": [1], **opt},
        {"name": TIMESTAMP_INPUT, "data_type": _Enum("TYPE_FP64"), "dims": [1], **opt},
        {"name": AUDIO_START_INPUT, "data_type": _Enum("TYPE_FP64"), "dims": [1], **opt},
        {"name": STEPS_INPUT, "data_type": _Enum("TYPE_INT32"), "dims": [1], **opt},
        {"name": STRIDE_INPUT, "data_type": _Enum("TYPE_INT32"), "dims": [1], **opt},
        {"name": SEED_INPUT, "data_type": _Enum("TYPE_INT64"), "dims": [1], **opt},
        {"name": ROI_CODEC_INPUT, "data_type": _Enum("TYPE_STRING"), "dims": [1], **opt},
    ]
    idle_us = int(float(limits["stream_idle_timeout_s"]) * 1e6)
    return {
        "name": STREAM_MODEL,
        "backend": "python",
        "max_batch_size": slots,
        "input": inputs,
        "output": [
            {"name": MAPS_OUTPUT, "data_type": _Enum("TYPE_FP32"), "dims": [-1, -1, -1]},
            {"name": FRAME_INDEX_OUTPUT, "data_type": _Enum("TYPE_INT64"), "dims": [-1]},
            {"name": QP_OFFSETS_OUTPUT, "data_type": _Enum("TYPE_FP32"), "dims": [-1, -1, -1]},
            {"name": STREAMS_OUTPUT, "data_type": _Enum("TYPE_INT32"), "dims": [1]},
        ],
        "sequence_batching": {
            "max_sequence_idle_microseconds": idle_us,
            "control_input": [
                _control(START_CONTROL, "CONTROL_SEQUENCE_START", int32_false_true=[0, 1]),
                _control(END_CONTROL, "CONTROL_SEQUENCE_END", int32_false_true=[0, 1]),
                _control(CORRID_CONTROL, "CONTROL_SEQUENCE_CORRID", data_type=_Enum("TYPE_UINT64")),
            ],
        },
        "instance_group": [{"count": instances, "kind": _Enum("KIND_CPU")}],
        "parameters": string_parameters(
            {
                MANIFEST_PARAMETER: manifest_parameter(manifest),
                WINDOW_BATCH_PARAMETER: str(window_batch),
                **_limits(limits),
            }
        ),
    }


def video_config(
    manifest: Mapping[str, Any], instances: int, limits: Mapping[str, float], decoder: str
) -> dict[str, Any]:
    """The config of ``avsal_video``: one encoded file per request (unbatched)."""
    opt = {"optional": True}
    return {
        "name": VIDEO_MODEL,
        "backend": "python",
        "max_batch_size": 0,
        "input": [
            {"name": VIDEO_INPUT, "data_type": _Enum("TYPE_STRING"), "dims": [1]},
            {"name": STEPS_INPUT, "data_type": _Enum("TYPE_INT32"), "dims": [1], **opt},
            {"name": STRIDE_INPUT, "data_type": _Enum("TYPE_INT32"), "dims": [1], **opt},
            {"name": SEED_INPUT, "data_type": _Enum("TYPE_INT64"), "dims": [1], **opt},
        ],
        "output": [
            {"name": MAPS_OUTPUT, "data_type": _Enum("TYPE_FP32"), "dims": [-1, -1, -1]},
            {"name": FPS_OUTPUT, "data_type": _Enum("TYPE_FP64"), "dims": [1]},
        ],
        "instance_group": [{"count": instances, "kind": _Enum("KIND_CPU")}],
        "parameters": string_parameters(
            {
                MANIFEST_PARAMETER: manifest_parameter(manifest),
                DECODER_PARAMETER: decoder,
                **_limits(limits),
            }
        ),
    }


# ----------------------------------------------------------------------------- files
def _template(kind: str) -> Path:
    path = TEMPLATE_DIR / kind / "model.py"
    if not path.exists():
        raise AvsalError(f"{path}: Triton model template missing (a broken avsal-deploy installation)")
    return path


def _model_file(
    export_dir: Path, spec: ComponentSpec, entry: Mapping[str, Any], platform: str
) -> tuple[Path, str]:
    """Source file of a component's model and its name in the version directory."""
    if platform == "tensorrt":
        plan = export_dir / f"{spec.name}.plan"
        if not plan.exists():
            raise BackendUnavailableError(
                f"{plan}: missing; run `avsal build-engines` on the GPU machine first"
            )
        return plan, "model.plan"
    onnx_path = export_dir / spec.onnx_file
    if not onnx_path.exists():
        raise AvsalError(f"{onnx_path}: missing ONNX file for component {spec.name!r}")
    if "sha256" in entry:
        if sha256_file(onnx_path) != entry["sha256"]:
            raise AvsalError(f"{onnx_path}: checksum differs from manifest.json (re-run `avsal export`)")
    return onnx_path, "model.onnx"


def _write_model(root: Path, config: Mapping[str, Any], files: Mapping[str, Path]) -> None:
    version = root / VERSION
    version.mkdir(parents=True)
    (root / "config.pbtxt").write_text(to_pbtxt(config))
    for name, source in files.items():
        shutil.copyfile(source, version / name)


def build_repository(
    export_dir: str | Path,
    out_dir: str | Path,
    *,
    instances: int = 1,
    max_batch: int | None = None,
    platform: str = "python-onnxruntime",
    overwrite: bool = False,
    stream_limits: Mapping[str, float] | None = None,
    video_limits: Mapping[str, float] | None = None,
    window_engine: str | None = None,
    window_threads: int = 0,
) -> Path:
    """Write a Triton model repository for the export in ``export_dir`` into ``out_dir``.

    ``instances`` model instances per model; ``max_batch`` caps every component's batch (default:
    the maximum of each spec's batch profile, which a TensorRT plan cannot exceed). Other models
    already in ``out_dir`` are left alone; ours are replaced only with ``overwrite``.
    ``stream_limits`` / ``video_limits`` override the limits of ``avsal_stream`` / ``avsal_video``
    (:data:`~avsal_deploy.serving.contract.STREAM_LIMITS`, ``VIDEO_LIMITS``). ``window_engine``:
    how the window models run the components (:mod:`avsal_deploy.serving.window_engine`; default
    ``onnxruntime`` in their own stub on the CPU platform, ``bls`` calls on TensorRT).
    ``window_threads``: ONNX Runtime intra-op threads per window model instance with the
    ``onnxruntime`` window engine (0: every core; on a small CPU, ``instances`` x ``window_threads``
    = the cores runs windows of different streams side by side). Returns ``out_dir``.
    """
    window_engine = window_engine or ("onnxruntime" if platform == "python-onnxruntime" else "bls")
    if window_engine not in WINDOW_ENGINES:
        raise ConfigError(f"window_engine {window_engine!r}: choose one of {', '.join(WINDOW_ENGINES)}")
    if window_engine == "onnxruntime" and platform != "python-onnxruntime":
        raise ConfigError(f"window_engine onnxruntime needs the python-onnxruntime platform, not {platform}")
    s_limits = {**STREAM_LIMITS, **(stream_limits or {})}
    v_limits = {**VIDEO_LIMITS, **(video_limits or {})}
    for key in {*(stream_limits or {}), *(video_limits or {})} - {*STREAM_LIMITS, *VIDEO_LIMITS}:
        raise ConfigError(
            f"unknown limit {key!r}: choose from {', '.join(sorted({*STREAM_LIMITS, *VIDEO_LIMITS}))}"
        )
    if platform not in PLATFORMS:
        raise ConfigError(f"platform {platform!r}: choose one of {', '.join(PLATFORMS)}")
    if window_threads < 0:
        raise ConfigError(f"window_threads={window_threads}: must be >= 0 (0 = every core)")
    if window_threads and window_engine != "onnxruntime":
        raise ConfigError(f"window_threads applies to the onnxruntime window engine, not {window_engine}")
    if instances < 1:
        raise ConfigError(f"instances={instances}: must be >= 1")
    export_dir, out = Path(export_dir), Path(out_dir)
    manifest, config, specs = read_manifest(export_dir)
    if "video_encoder" not in specs:
        raise AvsalError(f"{export_dir / 'manifest.json'}: no 'video_encoder' component")
    limits = {name: spec.batch_profile[2] for name, spec in specs.items()}
    if max_batch is not None and not 1 <= max_batch <= min(limits.values()):
        raise ConfigError(
            f"max_batch={max_batch}: must be in [1, {min(limits.values())}], the export's batch profile "
            "(re-export with a larger --max-batch)"
        )
    batches = {name: max_batch or limit for name, limit in limits.items()}
    names = [model_name(n) for n in specs] + [PIPELINE_MODEL, STREAM_MODEL, VIDEO_MODEL]
    existing = [n for n in names if (out / n).exists()]
    if existing and not overwrite:
        raise AvsalError(f"{out}: already has model(s) {', '.join(existing)} (pass overwrite / --force)")
    for name in existing:
        shutil.rmtree(out / name)
    out.mkdir(parents=True, exist_ok=True)
    for name, spec in specs.items():
        source, target = _model_file(export_dir, spec, manifest["components"][name], platform)
        files = {target: source}
        if platform == "python-onnxruntime":
            files["model.py"] = _template("component")
        _write_model(
            out / model_name(name), component_config(spec, platform, instances, batches[name]), files
        )
    window_batch = min(batches.values())
    pipeline = pipeline_config(manifest, config, specs, instances, window_batch)
    stream = stream_config(manifest, instances, s_limits, window_batch)
    decoder = "pyav" if platform == "python-onnxruntime" else "dali"  # GPU repositories decode on NVDEC
    video = video_config(manifest, instances, v_limits, decoder)
    for model, template in ((pipeline, "pipeline"), (stream, "stream"), (video, "video")):
        model["parameters"] += string_parameters(
            {WINDOW_ENGINE_PARAMETER: window_engine, WINDOW_THREADS_PARAMETER: str(window_threads)}
        )
        _write_model(out / model["name"], model, {"model.py": _template(template)})
    return out
