"""u2net.metrics must reproduce PySODMetrics (MAE, F-measure, weighted F, S-measure, E-measure, IoU / Dice) to 1e-6,
per image and per dataset; the boundary metrics are checked on hand-made cases and against literal implementations."""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import pytest
import torch

from u2net.metrics import (
    CURVE_KEYS,
    PER_IMAGE_KEYS,
    RESULT_KEYS,
    PreparedPair,
    SaliencyMetrics,
    evaluate_batch,
    prepare_pair,
    probabilities_to_uint8,
)
from u2net.metrics.boundary import band_width, boundary_band, boundary_iou, relaxed_boundary_f

py_sod_metrics = pytest.importorskip("py_sod_metrics")
from py_sod_metrics.fmeasurev2 import DICEHandler, FmeasureV2, IOUHandler  # noqa: E402

ATOL = 1e-6
# PySODMetrics divides the E-measure by H*W - 1 + eps, so a 1-pixel image scores ~4.5e15; for those (only) the
# absolute tolerance is meaningless and the relative one applies.
RTOL = 1e-12


def _reference(pairs):
    """PySODMetrics' dataset results and per-image scores for a list of (pred, gt)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Fmeasure will be removed, use FmeasureV2"
        fm = py_sod_metrics.Fmeasure()
    mae = py_sod_metrics.MAE()
    wfm = py_sod_metrics.WeightedFmeasure()
    sm = py_sod_metrics.Smeasure()
    em = py_sod_metrics.Emeasure()
    v2 = FmeasureV2(
        {
            "iou": IOUHandler(with_dynamic=True, with_adaptive=False, with_binary=True),
            "dice": DICEHandler(with_dynamic=True, with_adaptive=False, with_binary=True),
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the NaN S-measure cases warn about empty slices
        for pred, gt in pairs:
            for metric in (fm, mae, wfm, sm, em, v2):
                metric.step(pred=pred, gt=gt)
        v2_res = v2.get_results()
        iou, dice = v2._metric_handlers["iou"], v2._metric_handlers["dice"]
        dataset = {
            "mae": mae.get_results()["mae"],
            "wfm": wfm.get_results()["wfm"],
            "sm": sm.get_results()["sm"],
            **{"fm": fm.get_results()["fm"], "pr": fm.get_results()["pr"], "em": em.get_results()["em"]},
            "iou": v2_res["iou"],
            "dice": v2_res["dice"],
        }
    per_image = []
    for i in range(len(pairs)):
        per_image.append(
            {
                "mae": mae.maes[i],
                "max_f": fm.changeable_fms[i].max(),
                "mean_f": fm.changeable_fms[i].mean(),
                "adp_f": fm.adaptive_fms[i],
                "wfm": wfm.weighted_fms[i],
                "sm": sm.sms[i],
                "max_em": em.changeable_ems[i].max(),
                "mean_em": em.changeable_ems[i].mean(),
                "adp_em": em.adaptive_ems[i],
                "iou": iou.binary_results[i],
                "dice": dice.binary_results[i],
                "max_iou": iou.dynamic_results[i].max(),
                "mean_iou": iou.dynamic_results[i].mean(),
                "max_dice": dice.dynamic_results[i].max(),
                "mean_dice": dice.dynamic_results[i].mean(),
            }
        )
    return dataset, per_image


def _close(got, ref, msg=""):
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL, err_msg=msg)


def _check_against_reference(pairs):
    ours = SaliencyMetrics()
    per_image = [ours.update(pred, gt) for pred, gt in pairs]
    ref, ref_per_image = _reference(pairs)
    res = ours.results()

    assert list(res) == [*RESULT_KEYS, *CURVE_KEYS]
    assert res["n_images"] == len(pairs)
    # S-measure: PySODMetrics gives NaN when the foreground centroid rounds to the last row / column (it splits off an
    # empty quadrant); ours stays finite there, so the dataset mean is checked with our value for those images.
    sm_ref = np.array([r["sm"] for r in ref_per_image], dtype=float)
    sm_nan = np.isnan(sm_ref)
    assert np.isfinite([p["sm"] for p in per_image]).all()
    expected_sm = np.mean(np.where(sm_nan, [p["sm"] for p in per_image], sm_ref)) if sm_nan.any() else ref["sm"]
    expected = {
        "mae": ref["mae"],
        "max_f": ref["fm"]["curve"].max(),
        "mean_f": ref["fm"]["curve"].mean(),
        "adp_f": ref["fm"]["adp"],
        "wfm": ref["wfm"],
        "sm": expected_sm,
        "max_em": ref["em"]["curve"].max(),
        "mean_em": ref["em"]["curve"].mean(),
        "adp_em": ref["em"]["adp"],
        "iou": ref["iou"]["binary"],
        "dice": ref["dice"]["binary"],
        "max_iou": ref["iou"]["dynamic"].max(),
        "mean_iou": ref["iou"]["dynamic"].mean(),
        "max_dice": ref["dice"]["dynamic"].max(),
        "mean_dice": ref["dice"]["dynamic"].mean(),
    }
    for key, value in expected.items():
        assert isinstance(res[key], float), key
        _close(res[key], value, key)
    for key, curve in (
        ("f_curve", ref["fm"]["curve"]),
        ("precision", ref["pr"]["p"]),
        ("recall", ref["pr"]["r"]),
        ("e_curve", ref["em"]["curve"]),
        ("iou_curve", ref["iou"]["dynamic"]),
        ("dice_curve", ref["dice"]["dynamic"]),
    ):
        assert res[key].shape == (256,)
        _close(res[key], curve, key)

    for i, (got, want) in enumerate(zip(per_image, ref_per_image)):
        assert tuple(got) == PER_IMAGE_KEYS
        assert all(type(v) is float for v in got.values())
        if sm_nan[i]:
            want = {k: v for k, v in want.items() if k != "sm"}
        _close([got[k] for k in want], [want[k] for k in want], f"image {i}: {list(want)}")
    return res, per_image


def _random_pairs(rng, n):
    """Varied sizes, smooth-ish and noisy predictions, blob and noise masks, some soft (non-binary) gt values."""
    pairs = []
    for _ in range(n):
        h, w = rng.integers(8, 72, size=2)
        kind = rng.integers(4)
        yy, xx = np.mgrid[:h, :w]
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, max(h, w) / 2)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < r**2
        if kind == 0:  # uniform noise
            pred = rng.integers(0, 256, (h, w), dtype=np.uint8)
        elif kind == 1:  # a decent prediction: blob + noise, clipped
            pred = np.clip(blob * 200.0 + rng.normal(30, 40, (h, w)), 0, 255).astype(np.uint8)
        elif kind == 2:  # narrow dynamic range, exercises the min-max stretch
            lo = rng.integers(0, 200)
            pred = rng.integers(lo, lo + rng.integers(1, 56), (h, w)).astype(np.uint8)
        else:  # few distinct levels, many ties at thresholds
            pred = rng.choice(np.array([0, 64, 128, 255], np.uint8), size=(h, w))
        gt = (blob * 255).astype(np.uint8) if rng.random() < 0.7 else rng.integers(0, 256, (h, w), dtype=np.uint8)
        pairs.append((pred, gt))
    return pairs


def test_random_pairs_match_pysodmetrics():
    rng = np.random.default_rng(20240611)
    _check_against_reference(_random_pairs(rng, 300))


def _edge_cases():
    rng = np.random.default_rng(7)
    h, w = 37, 91  # non-square, odd sizes
    noise = rng.integers(0, 256, (h, w), dtype=np.uint8)
    obj = np.zeros((h, w), np.uint8)
    obj[10:25, 30:70] = 255
    one_px = np.zeros((h, w), np.uint8)
    one_px[18, 45] = 255
    cases = {
        "bg_gt": (noise, np.zeros((h, w), np.uint8)),
        "fg_gt": (noise, np.full((h, w), 255, np.uint8)),
        "const0": (np.zeros((h, w), np.uint8), obj),
        "const255": (np.full((h, w), 255, np.uint8), obj),
        "const128": (np.full((h, w), 128, np.uint8), obj),
        "const128_bg_gt": (np.full((h, w), 128, np.uint8), np.zeros((h, w), np.uint8)),
        "const255_fg_gt": (np.full((h, w), 255, np.uint8), np.full((h, w), 255, np.uint8)),
        "empty_pred": (np.zeros((h, w), np.uint8), one_px),
        "tiny_object_hit": (one_px, one_px),
        "tiny_object_noise": (noise, one_px),
        "perfect": (obj, obj),
        "inverted": (255 - obj, obj),
        "gt_at_128_is_bg": (obj, np.full((h, w), 128, np.uint8)),  # gt > 128, not >=
        "gt_at_129_is_fg": (obj, np.full((h, w), 129, np.uint8)),
        "one_pixel_image": (np.array([[200]], np.uint8), np.array([[255]], np.uint8)),
        "tall": (rng.integers(0, 256, (91, 5), dtype=np.uint8), (rng.random((91, 5)) > 0.5).astype(np.uint8) * 255),
        # 2*mean(pred) equals a present level exactly (six 0, one 85 -> 1/3, one 255): the >= tie path
        "adaptive_tie": (
            np.array([[0, 0, 0, 0], [0, 0, 85, 255]], np.uint8),
            np.array([[0] * 4, [0, 0, 255, 255]], np.uint8),
        ),
        # half 0, half 255: 2*mean == 1 exactly, also on the clip
        "adaptive_tie_at_1": (np.repeat(np.array([[0, 255]], np.uint8), 8, axis=0), obj[:8, :2]),
        # eleven 0, one 85, two 255: 2*mean is 85/255 exactly in np.mean's order but one ulp above in a naive dot
        # product -> without the exact tie path the 85 pixel would drop out and adaptive F fall from 1 to 0.8
        "adaptive_tie_last_bit": (
            np.array([[0] * 7, [0, 0, 0, 0, 85, 255, 255]], np.uint8),
            np.array([[0] * 7, [0, 0, 0, 0, 255, 255, 255]], np.uint8),
        ),
    }
    return cases


@pytest.mark.parametrize("name", list(_edge_cases()))
def test_edge_case_matches_pysodmetrics(name):
    _check_against_reference([_edge_cases()[name]])


def test_edge_cases_together_match_pysodmetrics():
    _check_against_reference(list(_edge_cases().values()))


def test_prepare_pair_is_pysodmetrics_prepare_data_bitwise():
    rng = np.random.default_rng(1)
    for pred, gt in [*_random_pairs(rng, 20), *_edge_cases().values()]:
        ref_pred, ref_gt = py_sod_metrics.utils.prepare_data(pred, gt)
        ours_pred, ours_gt = prepare_pair(pred, gt)
        assert ours_pred.dtype == np.float64 and ours_gt.dtype == bool
        np.testing.assert_array_equal(ours_pred, ref_pred)
        np.testing.assert_array_equal(ours_gt, ref_gt)
        # the look-up table of the fast path gives the very same values
        pair = PreparedPair.from_uint8(pred, gt)
        np.testing.assert_array_equal(pair.pred, ref_pred)
        np.testing.assert_array_equal(pair.gt, ref_gt)


def test_adaptive_tie_case_really_is_a_tie():
    # guards the edge case above: the threshold must land exactly on the 85 level for it to test anything
    for name, where in (("adaptive_tie", (1, 2)), ("adaptive_tie_last_bit", (1, 4))):
        pred, _ = prepare_pair(*_edge_cases()[name])
        assert 2 * pred.mean() == pred[where], name


def test_known_values():
    obj = np.zeros((10, 10), np.uint8)
    obj[2:5, 2:5] = 255
    m = SaliencyMetrics()
    assert m.update(obj, obj) == {"mae": 0.0, "max_f": 1.0, "adp_f": 1.0}
    got = m.update(255 - obj, obj)
    assert got["mae"] == 1.0 and got["adp_f"] == 0.0
    res = m.results()
    assert res["n_images"] == 2 and res["mae"] == 0.5 and res["adp_f"] == 0.5


def test_reset_and_results_before_update():
    m = SaliencyMetrics()
    with pytest.raises(RuntimeError):
        m.results()
    pred = np.full((4, 4), 200, np.uint8)
    m.update(pred, pred)
    m.reset()
    assert m.n_images == 0
    with pytest.raises(RuntimeError):
        m.results()


def test_results_are_independent_copies():
    m = SaliencyMetrics()
    a = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    m.update(a, a)
    res = m.results()
    res["f_curve"][:] = -1
    assert m.results()["f_curve"].min() >= 0


@pytest.mark.parametrize(
    "pred, gt, exc",
    [
        (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.uint8), TypeError),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4), bool), TypeError),
        (np.zeros((4, 4, 1), np.uint8), np.zeros((4, 4, 1), np.uint8), TypeError),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8), ValueError),
        (np.zeros((0, 4), np.uint8), np.zeros((0, 4), np.uint8), ValueError),
    ],
)
def test_update_rejects_bad_input(pred, gt, exc):
    with pytest.raises(exc):
        SaliencyMetrics().update(pred, gt)


def test_probabilities_to_uint8_rounding():
    levels = np.arange(256)
    exact = levels / 255.0
    np.testing.assert_array_equal(probabilities_to_uint8(exact), levels.astype(np.uint8))
    p = np.array([[0.0, 1.0, 0.5, 0.3, 1 / 510, 0.9999999, 1.0000001, -1e-8]])
    np.testing.assert_array_equal(probabilities_to_uint8(p), np.round(np.clip(p, 0, 1) * 255).astype(np.uint8))
    assert probabilities_to_uint8(p)[0, :4].tolist() == [0, 255, 128, 76]  # 127.5 -> 128 (half to even), 76.5 -> 76
    # torch, any float dtype, same result as numpy on the same values
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        t = torch.rand(13, 17, generator=torch.Generator().manual_seed(0)).to(dtype)
        expected = np.round(t.to(torch.float64).numpy() * 255).astype(np.uint8)
        out = probabilities_to_uint8(t)
        assert out.dtype == np.uint8 and out.shape == (13, 17)
        np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError):
        probabilities_to_uint8(np.array([[0.5, 3.2]]))  # logits, not probabilities
    with pytest.raises(ValueError):
        probabilities_to_uint8(torch.tensor([[float("nan")]]))
    with pytest.raises(TypeError):
        probabilities_to_uint8(np.zeros((2, 2), np.uint8))


def test_evaluate_batch_equals_per_image_updates():
    g = torch.Generator().manual_seed(3)
    probs = torch.rand(4, 1, 24, 40, generator=g)
    targets = (torch.rand(4, 1, 24, 40, generator=g) > 0.6).float()
    targets[1] = 0.0  # an image without object
    batched = SaliencyMetrics()
    per_image = evaluate_batch(batched, probs, targets)
    assert len(per_image) == 4

    pairs = [(probabilities_to_uint8(p[0]), probabilities_to_uint8(t[0])) for p, t in zip(probs, targets)]
    res, ref_per_image = _check_against_reference(pairs)
    assert per_image == ref_per_image
    got = batched.results()
    for key in ("n_images", "mae", "max_f", "mean_f", "adp_f"):
        assert got[key] == res[key]

    with pytest.raises(ValueError):
        evaluate_batch(batched, probs, targets[:, :, :-1])
    with pytest.raises(ValueError):
        evaluate_batch(batched, probs[:, 0], targets[:, 0])
