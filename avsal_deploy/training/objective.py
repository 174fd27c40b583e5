"""The training objective: the model and its losses per variant, as the one module DDP wraps.

Losses (per variant): ``avrsp`` -- the AVRSP loss ``KL - 0.1 CC - 0.1 SIM`` on the one-shot map;
``diffsal`` -- the x0 MSE of the Saliency-UNet at a time step drawn uniformly per sample
(:meth:`~avsal_deploy.diffusion.DDIMScheduler.q_sample_training`, cosine schedule); ``hybrid`` --
``oneshot_weight * AVRSP loss + diffusion_weight * x0 MSE`` in one backward pass, the UNet's
gradient flowing into the fusion decoder and the encoders that produce its conditions (freeze
them per stage to train the UNet alone). With ``train.sync_weight`` and a fusion decoder with AV
sync, the gate's synchrony map is supervised too (:func:`~avsal_deploy.losses.sync_loss`).

The diffusion noise of a step depends on ``(seed, rank, step)`` only (:func:`step_seed`), so a
resumed run draws the same noise as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from avsal_deploy.losses import avrsp_loss, diffusion_mse_loss, sync_loss
from avsal_deploy.models.build import AVSaliencyModel
from avsal_deploy.training.precision import Precision
from avsal_deploy.training.recipe import Stage, TrainSection


class SaliencyObjective(nn.Module):
    """The model and its training loss as one module: the unit DDP wraps.

    ``forward(frames, audio, target, x_t, t, envelope)`` returns ``{"loss", "oneshot", "diffusion",
    "sync"}`` (the last three detached, 0 where the variant has no such term). With ``sync_weight``
    and a fusion decoder with AV sync, the gate's synchrony map -- an auxiliary output the fusion
    decoder returns explicitly (:class:`~avsal_deploy.models.fusion.FusionAux`, in
    ``Conditioning.aux``) -- is supervised by :func:`~avsal_deploy.losses.sync_loss`. The network
    runs under autocast; losses are computed in float32. Both terms are always computed when the variant has them (a
    zero weight multiplies them), so every trainable parameter takes part in every step, as DDP
    requires.
    """

    def __init__(
        self,
        model: AVSaliencyModel,
        precision: Precision,
        kl_weight: float = 1.0,
        cc_weight: float = -0.1,
        sim_weight: float = -0.1,
    ) -> None:
        super().__init__()
        self.model = model
        self.precision = precision
        self.kl_weight, self.cc_weight, self.sim_weight = kl_weight, cc_weight, sim_weight
        self.oneshot_weight = 1.0
        self.diffusion_weight = 1.0
        self.sync_weight = 0.0

    @classmethod
    def for_stage(
        cls, model: AVSaliencyModel, precision: Precision, train: TrainSection, stage: Stage
    ) -> SaliencyObjective:
        """The objective of one stage of a recipe (its loss weights)."""
        objective = cls(model, precision, train.kl_weight, train.cc_weight, train.sim_weight)
        objective.oneshot_weight = stage.oneshot_weight
        objective.diffusion_weight = stage.diffusion_weight
        objective.sync_weight = train.sync_weight
        return objective

    def forward(
        self,
        frames: Tensor,
        audio: Tensor,
        target: Tensor,
        x_t: Tensor | None,
        t: Tensor | None,
        envelope: Tensor | None = None,
    ) -> dict[str, Tensor]:
        zero = torch.zeros((), device=target.device)
        with self.precision.autocast(frames.device.type):
            cond = self.model.condition(frames, audio, envelope)
            x0 = self.model.denoise(x_t, t, cond) if self.model.unet is not None else None
        synchrony = cond.aux.synchrony if self.sync_weight else None
        oneshot = zero
        if cond.one_shot is not None:
            oneshot = avrsp_loss(
                cond.one_shot.float(), target, self.kl_weight, self.cc_weight, self.sim_weight
            )
        diffusion = zero if x0 is None else diffusion_mse_loss(x0.float(), target)
        sync = zero if synchrony is None else sync_loss(synchrony, target)
        loss = self.oneshot_weight * oneshot + self.diffusion_weight * diffusion + self.sync_weight * sync
        return {
            "loss": loss,
            "oneshot": oneshot.detach(),
            "diffusion": diffusion.detach(),
            "sync": sync.detach(),
        }


def step_seed(seed: int, rank: int, step: int) -> int:
    """Seed of the diffusion noise of one step on one rank."""
    return int(np.random.SeedSequence((seed, rank, step)).generate_state(1)[0])


def diffusion_inputs(
    model: AVSaliencyModel, target: Tensor, generator: torch.Generator, seed: int, rank: int, step: int
) -> tuple[Tensor | None, Tensor | None]:
    """The noised target ``x_t`` and time steps ``t`` of one training step (None, None without a
    UNet), drawn from ``generator`` re-seeded by :func:`step_seed`."""
    if model.unet is None:
        return None, None
    generator.manual_seed(step_seed(seed, rank, step))
    x_t, t, _ = model.scheduler.q_sample_training(target, generator)
    return x_t, t
