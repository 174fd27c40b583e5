"""Component specs and export manifests: the torch-free leaf every layer reads.

One :class:`ComponentSpec` per exported component (in the manner of TensorRT's demo/Diffusion
model classes): its input and output names, shapes without the dynamic batch axis, dtypes, the
min/opt/max batch profile and attributes (time steps, fused DDIM steps). ``avsal export`` derives
them from the config (:func:`avsal_deploy.export.components.component_specs`) and writes them
into ``manifest.json``; the engines, the Triton repository, the client and the benchmarks read them
back with :func:`read_manifest`, so no layer re-types a shape.

Components (the deployment split of the model):

==============  ====================================  =====================================
component       inputs                                outputs
==============  ====================================  =====================================
video_encoder   frames                                v0, v1, v2, v3
audio_encoder   audio                                 audio_feat
fusion          v0..v3, audio_feat   (avrsp, hybrid) one_shot, c0..c3
                [, envelope][, frames]
unet_step       x_t, t, c0..c3, audio_feat            x0
                [, one_shot]
ddim            noise, c0..c3, audio_feat             x0   (all DDIM steps unrolled, optional)
                [, one_shot]
==============  ====================================  =====================================

For ``diffsal`` the UNet conditions ``c0..c3`` are the video features ``v0..v3`` themselves.
``envelope`` (the per-frame audio envelope, :func:`avsal_deploy.data.audio.envelope_frames`) is a
fusion input when ``config.uses_envelope(variant)`` (``fusion.av_sync`` or ``fusion.binding``),
``frames`` too with the binding map, and ``one_shot`` a UNet input when
``config.uses_oneshot_condition(variant)`` (``unet.oneshot_condition``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avsal_deploy.config import Config
from avsal_deploy.errors import AvsalError, ConfigError

BATCH = "batch"
SCALES = ("v0", "v1", "v2", "v3")
CONDS = ("c0", "c1", "c2", "c3")
ENVELOPE = "envelope"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, its shape without the (dynamic) batch axis, its dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def to_manifest(self) -> dict[str, Any]:
        return {"name": self.name, "shape": [BATCH, *self.shape], "dtype": self.dtype}

    def full_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.shape)


@dataclass(frozen=True)
class ComponentSpec:
    """An exported component: I/O, sample inputs and the min/opt/max batch profile."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch_profile: tuple[int, int, int] = (1, 1, 8)  # min / opt / max batch (TensorRT, Triton)
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def onnx_file(self) -> str:
        return f"{self.name}.onnx"

    def sample_inputs(self, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
        """Random float32 inputs of the right shapes by name: time steps ``t`` are valid integer
        steps, ``envelope`` uniform in [0, 1) like its log energies, the rest standard normal."""
        rng = np.random.default_rng(seed)
        out = {}
        for spec in self.inputs:
            if spec.name == "t":
                x = rng.integers(0, int(self.attributes["timesteps"]), (batch,))
            elif spec.name == ENVELOPE:
                x = rng.random(spec.full_shape(batch))
            else:
                x = rng.standard_normal(spec.full_shape(batch))
            out[spec.name] = x.astype(np.float32)
        return out

    def trt_profile(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """Per input: (min, opt, max) shapes for a TensorRT optimisation profile."""
        lo, opt, hi = self.batch_profile
        return {t.name: (t.full_shape(lo), t.full_shape(opt), t.full_shape(hi)) for t in self.inputs}

    def to_manifest(self) -> dict[str, Any]:
        return {
            "file": self.onnx_file,
            "inputs": [t.to_manifest() for t in self.inputs],
            "outputs": [t.to_manifest() for t in self.outputs],
            "batch_profile": list(self.batch_profile),
            "attributes": dict(self.attributes),
        }

    @classmethod
    def from_manifest(cls, name: str, entry: dict[str, Any]) -> ComponentSpec:
        def tensors(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(i["name"], tuple(i["shape"][1:]), i["dtype"]) for i in items)

        return cls(
            name,
            tensors(entry["inputs"]),
            tensors(entry["outputs"]),
            tuple(entry["batch_profile"]),  # type: ignore[arg-type]
            dict(entry.get("attributes", {})),
        )


def window_inputs(specs: dict[str, ComponentSpec]) -> tuple[TensorSpec, ...]:
    """What one whole-window request carries per window: the encoders' inputs (no audio for a
    visual-only family) and, when the fusion decoder takes it, the per-frame audio envelope (the
    Triton pipeline model's inputs)."""
    out = [*specs["video_encoder"].inputs]
    if "audio_encoder" in specs:
        out += specs["audio_encoder"].inputs
    fusion = specs.get("fusion")
    if fusion is not None:
        out += [t for t in fusion.inputs if t.name == ENVELOPE]
    return tuple(out)


def sample_window(specs: dict[str, ComponentSpec], batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Random whole-window inputs by name (:func:`window_inputs`): ``frames`` and ``audio`` from a
    standard normal, ``envelope`` (when taken) uniform in [0, 1) like its log energies; float32."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in window_inputs(specs):
        shape = t.full_shape(batch)
        x = rng.random(shape) if t.name == ENVELOPE else rng.standard_normal(shape)
        out[t.name] = x.astype(np.float32)
    return out


# ----------------------------------------------------------------------------- manifests
def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file (the checksums a manifest records)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_manifest(
    manifest: dict[str, Any], source: str
) -> tuple[dict[str, Any], Config, dict[str, ComponentSpec]]:
    """Config and component specs of a manifest (``source`` names it in errors)."""
    try:
        config = Config.from_dict(manifest["config"])
        specs = {n: ComponentSpec.from_manifest(n, e) for n, e in manifest["components"].items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise AvsalError(f"{source}: malformed manifest ({exc})") from exc
    if config.architecture_fingerprint() != manifest.get("architecture_fingerprint"):
        raise ConfigError(f"{source}: config does not match its recorded architecture fingerprint")
    return manifest, config, specs


def read_manifest(directory: str | Path) -> tuple[dict[str, Any], Config, dict[str, ComponentSpec]]:
    """The manifest of an export directory, its config and its component specs."""
    path = Path(directory) / "manifest.json"
    if not path.exists():
        raise AvsalError(f"{path}: no manifest; create the directory with `avsal export`")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise AvsalError(f"{path}: malformed manifest ({exc})") from exc
    return parse_manifest(manifest, str(path))
