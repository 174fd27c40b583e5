"""Reduced-precision exports: INT8 (explicit Q/DQ, calibrated on clips) and FP16 (ModelOpt AutoCast).

Both write a new export directory with the same components, names and manifest (its
``precision`` says which), so every engine opens it as it opens the fp32 export:

- ``int8``: ONNX Runtime's static quantisation (``quantize_static``, QDQ format, per-channel
  weights) with activation ranges calibrated on windows of real clips (:func:`calibration_feeds`).
  The Q/DQ graph runs on ONNX Runtime's CPU provider here, and is what TensorRT's strongly typed
  builder takes for INT8 (TensorRT 11 has no implicit calibrators).
- ``fp16``: ModelOpt AutoCast (``modelopt.onnx.autocast.convert_to_mixed_precision``; the ``gpu``
  extra) keeps numerically sensitive nodes in fp32; graph inputs and outputs stay fp32.

Calibration runs on any engine of the fp32 export (ONNX Runtime is what ``avsal quantize`` opens):
the encoders see the clips' preprocessed windows,
the fusion decoder the encoders' outputs, and the UNet step noisy maps ``x_t`` at the DDIM time
steps of the profile's default schedule, forward-noised from the model's own one-shot estimate, so
activation ranges match what the sampler feeds it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from avsal_deploy.data.source import MediaSource
from avsal_deploy.data.stream import StreamWindow, StreamWindower
from avsal_deploy.errors import AvsalError, BackendUnavailableError
from avsal_deploy.specs import read_manifest

if TYPE_CHECKING:  # the engine layer sits above this one: engines are handed in, not opened here
    from avsal_deploy.engine.base import Engine

PRECISIONS = ("int8", "fp16")
Feeds = dict[str, np.ndarray]


def clip_windows(engine: Engine, clip: Path) -> list[StreamWindow]:
    """Every window of ``clip`` (decoded through the frame flow's own media source)."""
    source = MediaSource(clip)
    try:
        windower = StreamWindower(engine.config, engine.variant, fps=source.fps, audio_rate=source.audio_rate)
        windows = [w for frame, ts, chunk in source.media() for w in windower.push(frame, chunk, ts)]
        windows += windower.flush()
    finally:
        source.close()
    return windows


def calibration_feeds(
    ort: Engine, clips: Iterable[Path], max_windows: int = 64, seed: int = 0
) -> dict[str, list[Feeds]]:
    """Calibration inputs per component (at most ``max_windows`` windows, spread over the clips),
    computed by ``ort``, an engine of the fp32 export (e.g. ``engine.open(export_dir, "onnxruntime")``;
    the caller closes it)."""
    clips = list(clips)
    if not clips:
        raise AvsalError("calibration needs at least one clip")
    per_clip = max(1, max_windows // len(clips))
    rng = np.random.default_rng(seed)
    steps = max(1, ort.config.diffusion.sampling_steps)
    timesteps = ort.scheduler.timesteps_for(steps)
    feeds: dict[str, list[Feeds]] = {name: [] for name in ort.specs if name != "ddim"}
    for clip in clips:
        windows = clip_windows(ort, Path(clip))
        picks = sorted(rng.choice(len(windows), size=min(per_clip, len(windows)), replace=False))
        for i in picks:
            w = windows[int(i)]
            frames, audio = w.clip[None], w.audio[None]
            envelope = None if w.envelope is None else w.envelope[None]
            cond = ort.condition(frames, audio, envelope)
            values: Feeds = {"frames": frames, "audio": audio, **cond}
            if envelope is not None:
                values["envelope"] = envelope
            if "unet_step" in ort.specs:
                noise = ort.make_noise(1, int(rng.integers(1 << 31)))
                x0 = cond["one_shot"] if "one_shot" in cond else ort.sample(cond, 1, noise)
                t = int(rng.choice(timesteps))
                a = ort.scheduler.alpha_cumprod(t)
                x_t = np.sqrt(a) * x0 + np.sqrt(1.0 - a) * noise  # DiffSal eq. 1
                values.update(x_t=x_t.astype(np.float32), t=np.array([t], np.float32))
            for name in feeds:
                feeds[name].append({n: values[n] for n in ort.specs[name].input_names})
    return feeds


class _Reader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over a list of feeds."""

    def __init__(self, feeds: list[Feeds]) -> None:
        self._it: Iterator[Feeds] = iter(feeds)

    def get_next(self) -> Feeds | None:
        return next(self._it, None)


def quantize_export(
    export_dir: str | Path,
    out_dir: str | Path,
    precision: str = "int8",
    calibration: Mapping[str, list[Feeds]] | None = None,
) -> Path:
    """A ``precision`` copy of an export directory (see the module docstring); returns ``out_dir``."""
    if precision not in PRECISIONS:
        raise AvsalError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    src, out = Path(export_dir), Path(out_dir)
    manifest, _, specs = read_manifest(src)
    if precision == "int8" and calibration is None:
        raise AvsalError("INT8 needs calibration inputs (calibration_feeds / --calib-clip)")
    out.mkdir(parents=True, exist_ok=True)
    for name, spec in specs.items():
        if name == "ddim":
            continue  # the unrolled loop is not quantised: use unet_step (the engines loop over it)
        source, target = src / spec.onnx_file, out / spec.onnx_file
        if precision == "int8":
            _int8(source, target, (calibration or {})[name])
        else:
            _fp16(source, target)
    weights = manifest.get("weights", {}).get("file")
    if weights and (src / weights).exists():
        shutil.copy2(src / weights, out / weights)
    manifest = dict(manifest)
    manifest["components"] = {n: e for n, e in manifest["components"].items() if n != "ddim"}
    manifest["precision"] = precision
    manifest["quantized_from"] = str(src)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def _int8(source: Path, target: Path, feeds: list[Feeds]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(source),
        str(target),
        _Reader(feeds),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )


def _fp16(source: Path, target: Path) -> None:
    try:
        import onnx
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError as exc:
        raise BackendUnavailableError(
            "FP16 conversion needs NVIDIA ModelOpt (pip install 'nvidia-modelopt[onnx]', the 'gpu' extra)"
        ) from exc
    model = convert_to_mixed_precision(onnx_path=str(source), low_precision_type="fp16", keep_io_types=True)
    onnx.save(model, str(target))
