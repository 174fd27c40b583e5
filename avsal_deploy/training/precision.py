"""Mixed precision for training: autocast settings, the gradient scaler and the optimiser step.

``train.amp = "auto"`` uses ``torch.autocast`` on CUDA (bfloat16 where the GPU supports it, else
float16 with a gradient scaler) and full precision on CPU; ``"bf16"`` forces bfloat16 autocast
(CPU included), ``"fp16"`` float16 (CUDA only), ``"off"`` none. The network runs under
:meth:`Precision.autocast`; losses are always computed in float32
(:class:`~avsal_deploy.training.objective.SaliencyObjective`).

bfloat16 on the CPU runs the backward pass without oneDNN (:meth:`Precision.backward`): oneDNN's
bfloat16 Conv3d weight gradient (torch 2.13, seen on AVX512-BF16 CPUs) returns garbage - huge
values, inf or NaN, different on every call, as if it read uninitialised memory - when a
convolution with a temporal kernel of 3 meets a clip only 2 frames deep (the tiny profile's
scale 2). The first optimiser step then writes NaN into the weights. PyTorch's own kernels give the
right gradient (``tests/test_training.py`` checks both).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from avsal_deploy.errors import ConfigError


@dataclass(frozen=True)
class Precision:
    enabled: bool
    dtype: torch.dtype
    scaler: bool

    @property
    def name(self) -> str:
        return (
            {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(self.dtype, "fp32")
            if self.enabled
            else "fp32"
        )

    def autocast(self, device_type: str) -> AbstractContextManager[None]:
        """The autocast context the network runs under (a no-op when disabled)."""
        return torch.autocast(device_type, self.dtype, enabled=self.enabled)

    def backward(self, device: torch.device) -> AbstractContextManager[None]:
        """The context the backward pass runs under: bfloat16 on the CPU keeps oneDNN out of it
        (its bfloat16 Conv3d weight gradient is wrong for some shapes; see the module docstring)."""
        if self.enabled and self.dtype == torch.bfloat16 and device.type == "cpu":
            return torch.backends.mkldnn.flags(enabled=False)
        return contextlib.nullcontext()

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler | None:
        """A fresh gradient scaler when this precision needs one (float16), else None."""
        return torch.amp.GradScaler(device.type) if self.scaler else None


def resolve_precision(mode: str, device: torch.device) -> Precision:
    """The autocast settings for ``train.amp`` on ``device`` (see the module docstring)."""
    cuda = device.type == "cuda"
    if mode == "off" or (mode == "auto" and not cuda):
        return Precision(False, torch.float32, False)
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return Precision(True, torch.bfloat16, False)
    if not cuda:
        raise ConfigError(f"train.amp={mode!r}: float16 autocast needs a CUDA device (use 'bf16' or 'off')")
    return Precision(True, torch.float16, True)


def optimizer_step(
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    params: Sequence[nn.Parameter],
    grad_clip: float = 0.0,
    precision: Precision | None = None,
) -> None:
    """Backward ``loss`` (scaled when ``scaler``; under ``precision``'s :meth:`Precision.backward`),
    clip the gradient norm of ``params`` to ``grad_clip`` (if > 0, on unscaled gradients) and step
    ``optimizer``."""
    optimizer.zero_grad(set_to_none=True)
    backward = precision.backward(loss.device) if precision is not None else contextlib.nullcontext()
    with backward:
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(list(params), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
