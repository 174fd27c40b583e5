"""Tests of the MIT saliency metrics: hand-worked cases, edge cases, pysaliency agreement, batching."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from PIL import Image

from avsal_deploy import metrics as M


@pytest.fixture(scope="module")
def pysal():
    """pysaliency's metrics and ROC modules (its import needs pkg_resources' warning silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = pytest.importorskip("pysaliency.metrics")
        roc = pytest.importorskip("pysaliency.roc")
    return metrics, roc


def _gauss(shape: tuple[int, int], cy: float, cx: float, sigma: float) -> np.ndarray:
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2.0 * sigma**2))


def _random_map(rng: np.random.Generator, shape: tuple[int, int] = (30, 40)) -> np.ndarray:
    """A saliency-like map: a few Gaussian blobs on a small noise floor, all values distinct."""
    out = 0.05 * rng.random(shape)
    for _ in range(3):
        out += rng.random() * _gauss(
            shape, rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(2, 8)
        )
    return out


def _sample_fixations(rng: np.random.Generator, density: np.ndarray, count: int) -> np.ndarray:
    """Binary map of ``count`` draws from ``density`` (repeated pixels collapse to one)."""
    prob = density.ravel() / density.sum()
    fix = np.zeros(density.size, dtype=bool)
    fix[rng.choice(density.size, size=count, p=prob)] = True
    return fix.reshape(density.shape)


# ------------------------------------------------------------------------------------------------
# Hand-computed cases
# ------------------------------------------------------------------------------------------------

P22 = np.array([[1.0, 2.0], [3.0, 4.0]])


def test_cc_hand_computed():
    assert M.cc(P22, 2.0 * P22 + 1.0) == pytest.approx(1.0, abs=1e-12)
    assert M.cc(P22, -P22) == pytest.approx(-1.0, abs=1e-12)
    # x = 1..4 (centred -1.5 -.5 .5 1.5), y = 1 2 3 5 (centred -1.75 -.75 .25 2.25):
    # sum(dx*dy) = 6.5, sum(dx^2) = 5, sum(dy^2) = 8.75.
    assert M.cc(P22, np.array([[1.0, 2.0], [3.0, 5.0]])) == pytest.approx(
        6.5 / math.sqrt(5 * 8.75), abs=1e-12
    )


def test_nss_hand_computed_uses_n_minus_1_std():
    # mean 2.5, std with N-1: sqrt(5/3); fixation on the 4 -> 1.5 / sqrt(5/3).
    fix = np.array([[0, 0], [0, 1]])
    assert M.nss(P22, fix) == pytest.approx(1.5 / math.sqrt(5.0 / 3.0), abs=1e-12)
    # symmetric fixations (on 1 and 4) average to 0; the fixation map need only be non-zero there
    assert M.nss(P22, np.array([[7, 0], [0, 1]])) == pytest.approx(0.0, abs=1e-12)


def test_kld_hand_computed():
    uniform = np.ones((2, 2))
    one_hot = np.array([[1.0, 0.0], [0.0, 0.0]])
    # G = (1, 0, 0, 0), P = 1/4 everywhere: 1 * log(eps + 1 / (1/4 + eps)) = log 4
    assert M.kld(uniform, one_hot) == pytest.approx(math.log(4.0), abs=1e-12)
    assert M.kld(P22, 10.0 * P22) == pytest.approx(0.0, abs=1e-12)
    # pred zero where gt has mass: log(eps + 1/eps) = 52 log 2 (huge, finite)
    assert M.kld(np.array([[0.0, 1.0], [1.0, 1.0]]), one_hot) == pytest.approx(52 * math.log(2.0), rel=1e-9)


def test_sim_hand_computed_min_max_then_sum():
    pred = np.array([[0.0, 1.0], [1.0, 2.0]])  # min-max -> 0 .5 .5 1 -> / 2 -> 0 .25 .25 .5
    gt = np.array([[3.0, 3.0], [1.0, 1.0]])  # min-max -> 1 1 0 0 -> / 2 -> .5 .5 0 0
    assert M.sim(pred, gt) == pytest.approx(0.25, abs=1e-12)
    assert M.sim(pred, 5.0 + 3.0 * pred) == pytest.approx(1.0, abs=1e-12)  # min-max removes offset and scale


def test_auc_judd_hand_computed():
    # values already min-max normalised; fixations on 1.0 and 0.3, 6 pixels, 4 negatives.
    pred = np.array([[0.0, 1.0, 0.6], [0.3, 0.8, 0.1]])
    fix = np.array([[0, 1, 0], [1, 0, 0]])
    # th 1.0: tp 1/2, fp (1-1)/4 = 0; th 0.3: 4 pixels >= .3, tp 1, fp (4-2)/4 = .5
    # curve (0,0) (0,.5) (.5,1) (1,1): area .375 + .5 = .875
    assert M.auc_judd(pred, fix, jitter=False) == pytest.approx(0.875, abs=1e-12)
    # the 1e-7 jitter does not reorder values that far apart
    assert M.auc_judd(pred, fix, jitter=True, seed=3) == pytest.approx(0.875, abs=1e-12)
    # a perfect prediction of two isolated fixations
    assert M.auc_judd(np.array([[0.0, 1.0], [0.9, 0.1]]), np.array([[0, 1], [1, 0]]), jitter=False) == 1.0


def test_sauc_hand_computed():
    pred = np.array([[0.0, 1.0, 0.6], [0.3, 0.8, 0.1]])
    fix = np.array([[0, 1, 0], [1, 0, 0]])  # positives 1.0, 0.3
    other = np.array([[1, 0, 1], [0, 0, 0]])  # negatives 0.0, 0.6 (both drawn in every split)
    # step .5, thresholds 1, .5, 0: tp .5 .5 1, fp 0 .5 1
    # curve (0,0) (0,.5) (.5,.5) (1,1) (1,1): .25 + .375 = .625
    assert M.sauc(pred, fix, other, n_splits=5, step_size=0.5) == pytest.approx(0.625, abs=1e-12)
    # default step 0.1, thresholds 1.0, 0.9, .., 0: tp = .5 until the threshold drops to .3 or .2
    # (k * 0.1 rounding), then 1; fp = .5 from threshold .5 down to .1, 1 at 0
    # curve (0,0) (0,.5) .. (.5,.5) .. (.5,1) (1,1): .25 + .5 = .75
    assert M.sauc(pred, fix, other, n_splits=3) == pytest.approx(0.75, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# Edge cases (documented in the docstrings)
# ------------------------------------------------------------------------------------------------


def test_constant_maps_follow_the_mit_code():
    rng = np.random.default_rng(0)
    gt, fix = rng.random((6, 7)), rng.random((6, 7)) < 0.3
    const = np.full((6, 7), 0.3)
    # constant prediction: no z-score / no min-max -> NaN
    assert math.isnan(M.cc(const, gt))
    assert math.isnan(M.cc(gt, const))
    assert math.isnan(M.nss(const, fix))
    assert math.isnan(M.sim(const, gt))
    assert math.isnan(M.auc_judd(const, fix, jitter=False))
    assert math.isnan(M.sauc(const, fix, ~fix))
    # with the MIT jitter a constant map is a random ranking: finite, near chance
    assert 0.0 <= M.auc_judd(const, fix, jitter=True) <= 1.0
    # KL of a constant (uniform) prediction is finite
    assert math.isfinite(M.kld(const, gt))


def test_all_zero_maps_stay_zero():
    rng = np.random.default_rng(1)
    gt = rng.random((5, 5))
    zero = np.zeros((5, 5))
    assert M.sim(zero, gt) == 0.0
    assert M.sim(gt, zero) == 0.0
    assert M.sim(zero, zero) == 0.0
    assert M.kld(gt, zero) == 0.0  # nothing to predict
    assert M.kld(zero, gt) == pytest.approx(
        np.sum((gt / gt.sum()) * np.log(M.MATLAB_EPS + (gt / gt.sum()) / M.MATLAB_EPS))
    )


def test_empty_fixation_maps_give_nan():
    rng = np.random.default_rng(2)
    pred, empty = rng.random((8, 9)), np.zeros((8, 9))
    other = rng.random((8, 9)) < 0.2
    assert math.isnan(M.nss(pred, empty))
    assert math.isnan(M.auc_judd(pred, empty))
    assert math.isnan(M.sauc(pred, empty, other))
    assert math.isnan(M.sauc(pred, other, empty))  # no negatives to draw
    assert math.isnan(M.auc_judd(pred, np.ones((8, 9)), jitter=False))  # no non-fixated pixel


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="2-D"):
        M.cc(np.zeros((2, 3, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="fixations"):
        M.nss(np.zeros((3, 4)), np.zeros(12))
    with pytest.raises(ValueError, match="other_fixations"):
        M.sauc(np.zeros((3, 4)), np.ones((3, 4)), np.ones((4, 4)))
    with pytest.raises(ValueError, match="step_size"):
        M.sauc(np.zeros((3, 4)), np.ones((3, 4)), np.ones((3, 4)), step_size=0.0)
    with pytest.raises(ValueError, match="method"):
        M.resize_map(np.zeros((3, 4)), (2, 2), method="nearest")


# ------------------------------------------------------------------------------------------------
# Resizing the prediction to the ground truth
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize("shape", [(60, 80), (13, 17), (30, 90)])
def test_resize_matches_pillow_in_the_interior(method, shape):
    """Same kernels, pixel-centre geometry and antialiasing as Pillow; only the borders differ
    (MATLAB mirrors, Pillow renormalises truncated kernels)."""
    src = _random_map(np.random.default_rng(3))
    ours = M.resize_map(src, shape, method=method)
    resample = Image.BILINEAR if method == "bilinear" else Image.BICUBIC
    pil = Image.fromarray(src.astype(np.float32), mode="F").resize((shape[1], shape[0]), resample)
    ref = np.asarray(pil, dtype=np.float64)
    assert ours.shape == shape
    np.testing.assert_allclose(ours[3:-3, 3:-3], ref[3:-3, 3:-3], atol=1e-5)


def test_resize_properties():
    src = _random_map(np.random.default_rng(4))
    np.testing.assert_array_equal(M.resize_map(src, src.shape), src)
    np.testing.assert_array_equal(M.resize_map(np.full((7, 9), 0.7), (20, 5)), 0.7)  # exactly
    assert math.isnan(M.cc(np.full((7, 9), 0.7), _random_map(np.random.default_rng(0), (20, 5))))
    # bilinear stays within the input range; bicubic overshoots next to a sharp peak (why we use bilinear)
    spike = np.zeros((9, 9))
    spike[4, 4] = 1.0
    assert M.resize_map(spike, (36, 36), "bilinear").min() >= 0.0
    assert M.resize_map(spike, (36, 36), "bicubic").min() < 0.0
    # stacks are resized map by map
    stack = np.stack([src, 2 * src])
    np.testing.assert_allclose(M.resize_map(stack, (15, 20))[1], M.resize_map(2 * src, (15, 20)), atol=1e-12)


def test_prediction_is_resized_to_the_ground_truth_size():
    rng = np.random.default_rng(5)
    gt = _random_map(rng, (30, 40))
    fix = _sample_fixations(rng, gt, 40)
    small = _random_map(rng, (15, 20))
    big = M.resize_map(small, gt.shape)
    assert M.cc(small, gt) == M.cc(big, gt)
    assert M.kld(small, gt) == M.kld(big, gt)
    assert M.sim(small, gt) == M.sim(big, gt)
    assert M.nss(small, fix) == M.nss(big, fix)
    assert M.auc_judd(small, fix) == M.auc_judd(big, fix)
    assert M.sauc(small, fix, ~fix) == M.sauc(big, fix, ~fix)


# ------------------------------------------------------------------------------------------------
# Agreement with pysaliency (independent implementation) on random maps
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_pysaliency(pysal, seed):
    ps_metrics, ps_roc = pysal
    rng = np.random.default_rng(100 + seed)
    pred, gt = _random_map(rng), _random_map(rng)
    fix = _sample_fixations(rng, gt, 50)
    ys, xs = np.nonzero(fix)

    assert M.cc(pred, gt) == pytest.approx(ps_metrics.CC(pred, gt), abs=1e-6)
    assert M.kld(pred, gt) == pytest.approx(ps_metrics.MIT_KLDiv(pred, gt), abs=1e-6)
    # pysaliency's NSS divides by the N standard deviation, ours (MATLAB) by the N-1 one
    n = pred.size
    assert M.nss(pred, fix) == pytest.approx(
        ps_metrics.NSS(pred, xs, ys).mean() * math.sqrt((n - 1) / n), abs=1e-6
    )
    # pysaliency's SIM only sum-normalises: equal on maps whose minimum is already 0
    pred0, gt0 = pred - pred.min(), gt - gt.min()
    assert M.sim(pred0, gt0) == pytest.approx(ps_metrics.SIM(pred0, gt0), abs=1e-6)
    # AUC-Judd without jitter = general ROC with the fixated values as thresholds
    s = (pred - pred.min()) / (pred.max() - pred.min())
    auc_ref = ps_roc.general_roc(s[fix], s[~fix], judd=1)[0]
    assert M.auc_judd(pred, fix, jitter=False) == pytest.approx(auc_ref, abs=1e-6)


def test_sim_differs_from_pysaliency_when_the_minimum_is_not_zero(pysal):
    ps_metrics, _ = pysal
    rng = np.random.default_rng(6)
    pred, gt = _random_map(rng) + 0.5, _random_map(rng)
    ours = M.sim(pred, gt)
    assert ours == pytest.approx(ps_metrics.SIM(pred - pred.min(), gt - gt.min()), abs=1e-9)
    assert abs(ours - ps_metrics.SIM(pred, gt)) > 1e-2  # the offset inflates pysaliency's score


def test_auc_judd_jitter_is_seeded_and_tiny():
    rng = np.random.default_rng(7)
    pred = _random_map(rng)
    fix = _sample_fixations(rng, pred, 40)
    a = M.auc_judd(pred, fix, seed=1)
    assert a == M.auc_judd(pred, fix, seed=1)
    assert a == pytest.approx(M.auc_judd(pred, fix, jitter=False), abs=1e-4)
    # on a map with a flat zero region the jitter breaks the ties at random
    flat = np.where(pred > np.median(pred), pred, 0.0)
    assert M.auc_judd(flat, fix, seed=1) != M.auc_judd(flat, fix, seed=2)


# ------------------------------------------------------------------------------------------------
# Shuffled AUC sanity
# ------------------------------------------------------------------------------------------------


def test_sauc_rewards_image_specific_prediction_not_centre_bias():
    rng = np.random.default_rng(8)
    shape = (48, 64)
    centre = _gauss(shape, 24, 32, 9.0)
    obj = _gauss(shape, 10, 52, 3.0)
    density = 0.4 * centre / centre.sum() + 0.6 * obj / obj.sum()
    fix = _sample_fixations(rng, density, 60)
    # fixations on 10 "other images": centre-biased
    other = _sample_fixations(rng, centre, 600)
    assert M.sauc(density, fix, other) > 0.65

    # a pure centre-bias model on centre-biased fixations: high AUC-Judd, chance sAUC. Positives and
    # negatives come from equally many draws: binary maps merge repeated pixels, and more draws would
    # spread the negatives' set of distinct pixels wider than the positives'.
    fix_c, other_c = _sample_fixations(rng, centre, 300), _sample_fixations(rng, centre, 300)
    assert M.auc_judd(centre, fix_c) > 0.75
    assert M.sauc(centre, fix_c, other_c) == pytest.approx(0.5, abs=0.05)


def test_sauc_seeded_and_split_averaged():
    rng = np.random.default_rng(9)
    pred = _random_map(rng)
    fix, other = _sample_fixations(rng, pred, 30), _sample_fixations(rng, np.ones_like(pred), 200)
    assert M.sauc(pred, fix, other, seed=4) == M.sauc(pred, fix, other, seed=4)
    assert M.sauc(pred, fix, other, seed=4) != M.sauc(pred, fix, other, seed=5)
    assert 0.0 <= M.sauc(pred, fix, other, n_splits=1) <= 1.0


# ------------------------------------------------------------------------------------------------
# Batched versions, frame evaluation and aggregation
# ------------------------------------------------------------------------------------------------


def _stacks(rng: np.random.Generator, n: int = 6, shape: tuple[int, int] = (24, 32)):
    preds = np.stack([_random_map(rng, shape) for _ in range(n)])
    gts = np.stack([_random_map(rng, shape) for _ in range(n)])
    fix = np.stack([_sample_fixations(rng, g, 30) for g in gts])
    preds[1] = 0.7  # constant prediction
    preds[2] = 0.0  # all-zero prediction
    gts[3] = 0.0  # all-zero ground truth
    fix[4] = False  # no fixations
    return preds, gts, fix


@pytest.mark.parametrize("pred_shape", [(24, 32), (12, 20)])
def test_batched_metrics_equal_scalar_metrics(pred_shape):
    rng = np.random.default_rng(10)
    preds, gts, fix = _stacks(rng)
    preds = M.resize_map(preds, pred_shape) if pred_shape != gts.shape[1:] else preds
    for batch_fn, scalar_fn, ref in [
        (M.cc_batch, M.cc, gts),
        (M.kld_batch, M.kld, gts),
        (M.sim_batch, M.sim, gts),
        (M.nss_batch, M.nss, fix),
    ]:
        got = batch_fn(preds, ref)
        want = np.array([scalar_fn(p, r) for p, r in zip(preds, ref, strict=True)])
        assert got.shape == (len(preds),)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_batched_metrics_validate_shapes():
    with pytest.raises(ValueError, match="preds"):
        M.cc_batch(np.zeros((2, 4, 4)), np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="gts"):
        M.kld_batch(np.zeros((2, 4, 4)), np.zeros((4, 4)))


def test_shuffled_fixations_excludes_the_scored_frame():
    maps = np.zeros((12, 4, 5), dtype=bool)
    for i in range(12):
        maps[i].flat[i] = True  # every frame has a fixation at its own pixel
    union = M.shuffled_fixations(maps, exclude_index=3, n=10, seed=0)
    assert union.shape == (4, 5) and union.dtype == bool
    assert not union.flat[3]
    assert union.sum() == 10
    np.testing.assert_array_equal(union, M.shuffled_fixations(maps, 3, n=10, seed=0))
    assert M.shuffled_fixations(maps[:4], 0, n=10).sum() == 3  # fewer others than n: all of them
    with pytest.raises(ValueError, match="at least 2"):
        M.shuffled_fixations(maps[:1], 0)
    with pytest.raises(ValueError, match="exclude_index"):
        M.shuffled_fixations(maps, 12)


def test_evaluate_frames_per_frame_values():
    rng = np.random.default_rng(11)
    preds, gts, fix = _stacks(rng)
    calls: list[int] = []

    def others(i: int) -> np.ndarray:
        calls.append(i)
        return M.shuffled_fixations(fix, i, seed=i)

    out = M.evaluate_frames(preds, gts, fix, other_fixations_fn=others, seed=0)
    assert list(out) == list(M.METRIC_NAMES)
    assert all(v.shape == (6,) and v.dtype == np.float64 for v in out.values())
    assert calls == list(range(6))
    for i in (0, 5):
        assert out["cc"][i] == pytest.approx(M.cc(preds[i], gts[i]), abs=1e-12)
        assert out["nss"][i] == pytest.approx(M.nss(preds[i], fix[i]), abs=1e-12)
        assert out["auc_j"][i] == M.auc_judd(preds[i], fix[i], seed=i)
        assert out["sauc"][i] == M.sauc(preds[i], fix[i], others(i), seed=i)
    assert np.isnan(out["cc"][1]) and np.isnan(out["nss"][4]) and np.isnan(out["auc_j"][4])
    assert out["sim"][2] == 0.0 and out["kld"][3] == 0.0
    # default negatives: other frames of the same stack; a subset of metrics; prediction resizing
    sub = M.evaluate_frames(M.resize_map(preds, (12, 16)), gts, fix, metrics=("sauc", "cc"))
    assert list(sub) == ["sauc", "cc"] and np.isfinite(sub["sauc"][0])
    with pytest.raises(ValueError, match="unknown metrics"):
        M.evaluate_frames(preds, gts, fix, metrics=("auc",))
    with pytest.raises(ValueError, match="fixations"):
        M.evaluate_frames(preds, gts, fix[:, :-1])


def test_aggregate_averaging_is_explicit():
    per_video = {
        "a": {"cc": np.array([1.0, 2.0, 3.0]), "nss": np.array([1.0, np.nan, 1.0])},
        "b": {"cc": np.array([10.0]), "nss": np.array([np.nan])},
    }
    by_video = M.aggregate(per_video, mode="per_video")
    by_frame = M.aggregate(per_video, mode="per_frame")
    assert by_video["cc"] == pytest.approx((2.0 + 10.0) / 2)  # mean of video means
    assert by_frame["cc"] == pytest.approx(16.0 / 4)  # mean of all frames
    assert by_video["nss"] == 1.0 and by_frame["nss"] == 1.0  # NaN frames and all-NaN videos omitted
    propagated = M.aggregate(per_video, mode="per_frame", nan_policy="propagate")
    assert math.isnan(propagated["nss"]) and propagated["cc"] == pytest.approx(4.0)
    assert math.isnan(M.aggregate({"a": {"cc": np.array([np.nan])}})["cc"])
    with pytest.raises(ValueError, match="mode"):
        M.aggregate(per_video, mode="mean")
    with pytest.raises(ValueError, match="metrics"):
        M.aggregate({"a": {"cc": np.ones(2)}, "b": {"nss": np.ones(2)}})
