"""Tests of the training losses: agreement with the NumPy metrics, gradients, degenerate maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avsal_deploy import losses as L
from avsal_deploy import metrics as M

PAIRS = [(L.kl_loss, M.kld), (L.cc_loss, M.cc), (L.sim_loss, M.sim)]


def _maps(batch: int = 4, shape: tuple[int, int] = (18, 22), dtype=torch.float64, seed: int = 0):
    """Positive, saliency-like [B, 1, H, W] prediction and ground-truth maps."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(shape[0], dtype=dtype)[:, None]
    x = torch.arange(shape[1], dtype=dtype)[None, :]
    out = []
    for _ in range(2):
        centres = torch.rand(batch, 2, generator=gen, dtype=dtype) * torch.tensor(shape, dtype=dtype)
        blob = torch.exp(-((y - centres[:, :1, None]) ** 2 + (x - centres[:, 1:, None]) ** 2) / 30.0)
        out.append((blob + 0.2 * torch.rand(batch, *shape, generator=gen, dtype=dtype)).unsqueeze(1))
    return out[0], out[1]


def _metric_mean(metric, pred: torch.Tensor, gt: torch.Tensor) -> float:
    p = pred.detach().double().reshape(pred.shape[0], *pred.shape[-2:]).numpy()
    g = gt.detach().double().reshape(gt.shape[0], *gt.shape[-2:]).numpy()
    return float(np.mean([metric(a, b) for a, b in zip(p, g, strict=True)]))


@pytest.mark.parametrize(("loss", "metric"), PAIRS, ids=["kl", "cc", "sim"])
@pytest.mark.parametrize("squeeze", [False, True], ids=["B1HW", "BHW"])
def test_losses_equal_the_numpy_metrics(loss, metric, squeeze):
    pred, gt = _maps()
    if squeeze:
        pred, gt = pred[:, 0], gt[:, 0]
    value = loss(pred, gt)
    assert value.dim() == 0 and value.dtype == torch.float64
    assert value.item() == pytest.approx(_metric_mean(metric, pred, gt), abs=1e-6)
    # float32 training precision stays close
    assert loss(pred.float(), gt.float()).item() == pytest.approx(_metric_mean(metric, pred, gt), abs=1e-5)


def test_avrsp_loss_combines_the_terms_with_the_paper_weights():
    pred, gt = _maps(seed=1)
    kl, cc, sim = L.kl_loss(pred, gt), L.cc_loss(pred, gt), L.sim_loss(pred, gt)
    assert L.avrsp_loss(pred, gt).item() == pytest.approx((kl - 0.1 * cc - 0.1 * sim).item(), abs=1e-12)
    custom = L.avrsp_loss(pred, gt, kl_weight=2.0, cc_weight=-0.5, sim_weight=0.0)
    assert custom.item() == pytest.approx((2.0 * kl - 0.5 * cc).item(), abs=1e-12)
    reference = np.mean(
        [
            M.kld(p, g) - 0.1 * M.cc(p, g) - 0.1 * M.sim(p, g)
            for p, g in zip(pred[:, 0].numpy(), gt[:, 0].numpy(), strict=True)
        ]
    )
    assert L.avrsp_loss(pred, gt).item() == pytest.approx(reference, abs=1e-6)


@pytest.mark.parametrize("loss", [L.kl_loss, L.cc_loss, L.sim_loss, L.avrsp_loss], ids=lambda f: f.__name__)
def test_gradients_are_finite_and_non_zero(loss):
    pred, gt = _maps(dtype=torch.float32, seed=2)
    pred.requires_grad_(True)
    loss(pred, gt).backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad.abs().sum() > 0
    assert (pred.grad.reshape(pred.shape[0], -1).abs().sum(dim=1) > 0).all()  # every map gets a gradient


@pytest.mark.parametrize("loss", [L.kl_loss, L.cc_loss, L.sim_loss], ids=lambda f: f.__name__)
def test_gradients_match_finite_differences(loss):
    pred, gt = _maps(batch=2, shape=(4, 5), seed=3)
    pred.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: loss(p, gt), (pred,), eps=1e-7, atol=1e-6)


@pytest.mark.parametrize(
    "case",
    ["constant_pred", "zero_pred", "constant_gt", "zero_gt", "both_constant"],
)
@pytest.mark.parametrize("loss", [L.kl_loss, L.cc_loss, L.sim_loss, L.avrsp_loss], ids=lambda f: f.__name__)
def test_degenerate_maps_give_finite_values_and_gradients(loss, case):
    pred, gt = _maps(batch=3, dtype=torch.float32, seed=4)
    if case in ("constant_pred", "both_constant"):
        pred = torch.full_like(pred, 0.37)
    if case == "zero_pred":
        pred = torch.zeros_like(pred)
    if case in ("constant_gt", "both_constant"):
        gt = torch.full_like(gt, 0.61)
    if case == "zero_gt":
        gt = torch.zeros_like(gt)
    pred.requires_grad_(True)
    value = loss(pred, gt)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(pred.grad).all()


def test_degenerate_terms_have_the_documented_values():
    _, gt = _maps(batch=2, seed=5)
    const = torch.full_like(gt, 0.5)
    assert L.cc_loss(const, gt).item() == 0.0  # metric: NaN
    assert L.sim_loss(const, gt).item() == 0.0  # metric: NaN (constant non-zero map)
    assert L.sim_loss(torch.zeros_like(gt), gt).item() == 0.0  # metric: 0 as well
    assert L.kl_loss(const, gt).item() == pytest.approx(_metric_mean(M.kld, const, gt), abs=1e-9)
    assert L.kl_loss(gt, torch.zeros_like(gt)).item() == 0.0


def test_a_few_optimisation_steps_fit_the_ground_truth():
    _, gt = _maps(batch=2, shape=(16, 16), dtype=torch.float32, seed=6)
    logits = torch.zeros_like(gt).add_(
        0.01 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(0))
    )
    logits.requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.1)
    start = L.cc_loss(torch.sigmoid(logits), gt).item()
    for _ in range(60):
        opt.zero_grad()
        L.avrsp_loss(torch.sigmoid(logits), gt).backward()
        opt.step()
    pred = torch.sigmoid(logits)
    assert L.cc_loss(pred, gt).item() > max(0.9, start + 0.5)
    assert L.kl_loss(pred, gt).item() < 0.05


def test_shape_validation():
    pred, gt = _maps(batch=2)
    with pytest.raises(ValueError, match="differs"):
        L.kl_loss(pred, gt[:, :, :-1])
    with pytest.raises(ValueError, match="one channel"):
        L.cc_loss(pred.expand(-1, 3, -1, -1), gt.expand(-1, 3, -1, -1))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\] or \[B, H, W\]"):
        L.sim_loss(pred[0, 0], gt[0, 0])


def test_diffusion_mse_loss():
    a, b = _maps(batch=2, seed=7)
    assert L.diffusion_mse_loss(a, b).item() == pytest.approx(((a - b) ** 2).mean().item(), abs=1e-12)
    assert L.diffusion_mse_loss(a, a).item() == 0.0
    a.requires_grad_(True)
    L.diffusion_mse_loss(a, b).backward()
    torch.testing.assert_close(a.grad, 2.0 * (a - b).detach() / a.numel())
    with pytest.raises(ValueError, match="x0_pred"):
        L.diffusion_mse_loss(a, b[:1])


def test_sync_loss_rewards_synchrony_where_people_look():
    target = torch.zeros(2, 1, 16, 24)
    target[:, :, 4:8, 12:16] = 1.0  # people look at one place
    flat = torch.zeros(2, 2, 4, 6)
    peaked = flat.clone()
    peaked[:, :, 1, 3] = 5.0  # the grid cell that holds the fixated place
    wrong = flat.clone()
    wrong[:, :, 3, 0] = 5.0
    uniform = L.sync_loss(flat, target)
    # Flat synchrony (e.g. silence): KL of the pooled target to the uniform distribution, log(24).
    assert float(uniform) == pytest.approx(np.log(24), rel=1e-5)
    assert float(L.sync_loss(peaked, target)) < float(uniform) < float(L.sync_loss(wrong, target))
    s = flat.clone().requires_grad_(True)
    L.sync_loss(s, target).backward()
    assert float(s.grad[:, :, 1, 3].sum()) < 0  # descent raises the synchrony at the fixated cell
