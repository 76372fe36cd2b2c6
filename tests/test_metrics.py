"""u2net.metrics must reproduce PySODMetrics (MAE, F-measure, weighted F, S-measure, E-measure, IoU / Dice) to 1e-6,
per image and per dataset; the boundary metrics are checked on hand-made cases and against literal implementations."""

from __future__ import annotations

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


def _scene_pairs(rng, n):
    """Larger scenes: several blobs (some cut by the frame), blurred noisy predictions, and a few noise / full masks
    (many equidistant foreground pixels: exercises the weighted F-measure's nearest-pixel tie-breaking)."""
    pairs = []
    for i in range(n):
        h, w = rng.integers(40, 160, size=2)
        yy, xx = np.mgrid[:h, :w]
        gt = np.zeros((h, w), bool)
        for _ in range(rng.integers(1, 5)):
            cy, cx, r = rng.uniform(-10, h + 10), rng.uniform(-10, w + 10), rng.uniform(1, max(h, w) / 3)
            gt |= ((yy - cy) ** 2 + (xx - cx) ** 2) < r**2
        if i % 10 == 3:
            gt = rng.random((h, w)) < rng.uniform(0.2, 0.8)
        elif i % 10 == 7:
            gt[rng.integers(0, h) :, rng.integers(0, w) :] = True  # a block in the bottom-right corner
        sigma, noise = rng.uniform(0.5, 6), rng.uniform(0, 60)
        soft = cv2.GaussianBlur(gt.astype(np.float32) * rng.uniform(120, 255), (0, 0), sigma)
        pred = np.clip(soft + rng.normal(rng.uniform(0, 40), noise, (h, w)), 0, 255).astype(np.uint8)
        if i % 4 == 1:
            pred = pred // 51 * 51  # few levels: ties at the thresholds and in the S-measure quadrants
        pairs.append((pred, (gt * 255).astype(np.uint8)))
    return pairs


def test_random_pairs_match_pysodmetrics():
    rng = np.random.default_rng(20240611)
    _check_against_reference(_random_pairs(rng, 150))


def test_random_scenes_match_pysodmetrics():
    rng = np.random.default_rng(20240612)
    _check_against_reference(_scene_pairs(rng, 60))


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
        "one_pixel_image_bg": (np.array([[200]], np.uint8), np.array([[0]], np.uint8)),
        "one_row": (noise[:1], obj[12:13]),
        "const128_fg_gt": (np.full((h, w), 128, np.uint8), np.full((h, w), 255, np.uint8)),
        "const0_bg_gt": (np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)),
        "perfect_fg_gt": (np.full((h, w), 255, np.uint8), np.full((h, w), 255, np.uint8)),
        "two_levels_bg_gt": (obj, np.zeros((h, w), np.uint8)),
        "tiny_object_pred_noise": (one_px, obj),
        "object_at_border": (np.roll(obj, (-10, 21), axis=(0, 1)), np.roll(obj, (-10, 25), axis=(0, 1))),
        "object_cut_by_frame": (np.roll(obj, 30, axis=1), obj[:, ::-1].copy()),
        "noise_gt": (noise, (rng.random((h, w)) > 0.5).astype(np.uint8) * 255),
        "checkerboard_gt": (noise, (np.indices((h, w)).sum(0) % 2 * 255).astype(np.uint8)),
        # constant prediction over an S-measure quadrant with a constant ground truth: PySODMetrics scores it 1 or 0
        # depending on whether np.mean of the quadrant returns the constant to the last bit (here it does not)
        "const3_corner_object": (
            np.full((h, w), 3, np.uint8),
            np.pad(np.full((10, 20), 255, np.uint8), ((0, h - 10), (0, w - 20))),
        ),
        # foreground centroid on the last row / column: PySODMetrics' S-measure is NaN, ours finite
        "tiny_object_bottom_right": (noise, np.pad(np.full((1, 1), 255, np.uint8), ((h - 1, 0), (w - 1, 0)))),
        "object_on_last_row": (noise, np.pad(np.full((1, 5), 255, np.uint8), ((h - 1, 0), (40, w - 45)))),
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


def test_pysodmetrics_nan_s_measure_case_is_finite_here():
    # guards the edge cases above: they must really hit PySODMetrics' NaN, and ours must drop only the empty quadrant
    for name in ("tiny_object_bottom_right", "object_on_last_row"):
        pred, gt = _edge_cases()[name]
        ref = py_sod_metrics.Smeasure()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref.step(pred, gt)
        assert np.isnan(ref.sms[0]), name
        assert 0 <= SaliencyMetrics().update(pred, gt)["sm"] <= 1


def test_known_values():
    obj = np.zeros((10, 10), np.uint8)
    obj[2:5, 2:5] = 255
    m = SaliencyMetrics()
    perfect = m.update(obj, obj)
    assert perfect["mae"] == 0.0
    for key in ("max_f", "adp_f", "wfm", "sm", "iou", "dice", "max_iou", "relax_bf", "biou"):
        assert perfect[key] == pytest.approx(1.0, abs=1e-12), key
    # PySODMetrics normalises the E-measure by H*W - 1, so a perfect 10×10 prediction scores 100/99
    assert perfect["max_em"] == perfect["adp_em"] == pytest.approx(100 / 99, abs=1e-12)
    got = m.update(255 - obj, obj)
    assert got["mae"] == 1.0 and got["adp_f"] == 0.0 and got["iou"] == 0.0 and got["biou"] == 0.0
    assert got["relax_bf"] == 1.0  # the complement has the same contour, 1 px outside: boundary F cannot tell
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
    for key in CURVE_KEYS:
        res[key][:] = -1
        assert m.results()[key].min() >= 0, key


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
    for key in RESULT_KEYS:
        assert got[key] == res[key]

    with pytest.raises(ValueError):
        evaluate_batch(batched, probs, targets[:, :, :-1])
    with pytest.raises(ValueError):
        evaluate_batch(batched, probs[:, 0], targets[:, 0])


# ----------------------------------------------------------------------------------------------------- boundary metrics


def _square(shape=(64, 80), top=20, left=25, size=24):
    mask = np.zeros(shape, bool)
    mask[top : top + size, left : left + size] = True
    return mask


def _relaxed_f_literal(pred, gt, rho=3, beta2=0.3):
    """Relaxed boundary F straight from the definition, with scipy's exact Euclidean distance transform."""
    from scipy.ndimage import binary_erosion, distance_transform_edt

    def bnd(m):
        return m & ~binary_erosion(m, np.ones((3, 3), bool), border_value=1)

    bp, bg = bnd(pred), bnd(gt)
    if not bp.any() or not bg.any():
        return float(not bp.any() and not bg.any() and pred.sum() == gt.sum())
    near_gt = distance_transform_edt(~bg) <= rho
    near_pred = distance_transform_edt(~bp) <= rho
    p, r = (bp & near_gt).sum() / bp.sum(), (bg & near_pred).sum() / bg.sum()
    return 0.0 if p + r == 0 else (1 + beta2) * p * r / (beta2 * p + r)


def _boundary_iou_literal(pred, gt, ratio=0.02):
    """Cheng et al.'s reference code (boundary_iou/utils/boundary_utils.py), with the 0/0 case defined as 1."""

    def mask_to_boundary(mask):
        h, w = mask.shape
        dilation = max(1, int(round(ratio * np.sqrt(h**2 + w**2))))
        new_mask = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
        eroded = cv2.erode(new_mask, np.ones((3, 3), np.uint8), iterations=dilation)
        return mask - eroded[1 : h + 1, 1 : w + 1]

    gb, pb = mask_to_boundary(gt.astype(np.uint8)), mask_to_boundary(pred.astype(np.uint8))
    union = ((gb + pb) > 0).sum()
    return 1.0 if union == 0 else ((gb * pb) > 0).sum() / union


def test_relaxed_boundary_f_hand_made():
    gt = _square()
    assert relaxed_boundary_f(gt, gt) == 1.0
    assert relaxed_boundary_f(np.roll(gt, 2, axis=0), gt) == 1.0  # every boundary pixel within 2 px
    assert relaxed_boundary_f(np.roll(gt, (2, -2), axis=(0, 1)), gt) == 1.0  # 2√2 < 3: still within ρ
    assert relaxed_boundary_f(np.roll(gt, 3, axis=1), gt) == 1.0  # exactly ρ = 3 counts
    shifted = relaxed_boundary_f(np.roll(gt, 5, axis=0), gt)
    assert 0 < shifted < 1
    assert relaxed_boundary_f(np.roll(gt, 4, axis=0), gt) > shifted
    # the image border is not a boundary: a mask and the same mask extended to the frame differ only inside
    frame = np.zeros((64, 80), bool)
    frame[:, :40] = True
    assert relaxed_boundary_f(frame, frame) == 1.0
    # a filled interior does not matter, only boundaries: a 1-px ring equals its filled square here
    ring = gt & ~cv2.erode(gt.view(np.uint8), np.ones((3, 3), np.uint8)).view(bool)
    assert relaxed_boundary_f(ring, gt) == pytest.approx(1.0)


def test_relaxed_boundary_f_empty_cases():
    empty, full, obj = np.zeros((30, 40), bool), np.ones((30, 40), bool), _square((30, 40), 5, 5, 10)
    assert relaxed_boundary_f(empty, empty) == 1.0
    assert relaxed_boundary_f(full, full) == 1.0
    assert relaxed_boundary_f(empty, full) == 0.0  # both boundaries empty, but the masks disagree
    assert relaxed_boundary_f(full, empty) == 0.0
    assert relaxed_boundary_f(empty, obj) == 0.0
    assert relaxed_boundary_f(obj, empty) == 0.0
    assert relaxed_boundary_f(full, obj) == 0.0
    # uint8 0/1 masks are accepted as well as bool
    assert relaxed_boundary_f(obj.astype(np.uint8), obj.astype(np.uint8)) == 1.0


def test_relaxed_boundary_f_matches_literal_definition():
    rng = np.random.default_rng(3)
    for pred, gt in _scene_pairs(rng, 30):
        p, g = prepare_pair(pred, gt)
        p = p > 0.5
        assert relaxed_boundary_f(p, g) == pytest.approx(_relaxed_f_literal(p, g), abs=1e-12)


def test_band_width():
    assert band_width(320, 320) == 9  # round(0.02 * 452.5)
    assert band_width(1000, 1000) == 28
    assert band_width(10, 10) == 1  # round(0.28) = 0 -> at least 1
    assert band_width(75, 100) == 2  # 0.02 * 125 = 2.5 rounds half to even, like the reference's round()
    assert band_width(1, 1) == 1


def test_boundary_iou_hand_made():
    gt = _square()
    assert boundary_iou(gt, gt) == 1.0
    empty, full = np.zeros_like(gt), np.ones_like(gt)
    assert boundary_iou(empty, empty) == 1.0
    assert boundary_iou(empty, gt) == 0.0 and boundary_iou(gt, empty) == 0.0
    assert boundary_iou(full, full) == 1.0  # the padded frame makes a band along the image border
    assert 0 < boundary_iou(np.roll(gt, 2, axis=0), gt) < 1
    # the band: pixels of the mask within d px (chessboard) of the background, the outside counting as background
    d = band_width(*gt.shape)
    band = boundary_band(gt, d).astype(bool)
    assert band.sum() == 24**2 - (24 - 2 * d) ** 2 and not (band & ~gt).any()
    assert boundary_band(full, d).sum() == full.size - (64 - 2 * d) * (80 - 2 * d)


def test_boundary_iou_matches_reference_code():
    rng = np.random.default_rng(4)
    for pred, gt in _scene_pairs(rng, 30):
        p, g = prepare_pair(pred, gt)
        p = p > 0.5
        assert boundary_iou(p, g) == pytest.approx(_boundary_iou_literal(p, g), abs=1e-12)


def test_saliency_metrics_boundary_scores_use_pred_above_half():
    rng = np.random.default_rng(5)
    m = SaliencyMetrics()
    for pred, gt in _scene_pairs(rng, 10):
        got = m.update(pred, gt)
        p, g = prepare_pair(pred, gt)
        assert got["relax_bf"] == relaxed_boundary_f(p > 0.5, g)
        assert got["biou"] == boundary_iou(p > 0.5, g)


def test_merge_equals_one_pass() -> None:
    rng = np.random.default_rng(11)
    pairs = [
        (rng.integers(0, 256, (24, 31), dtype=np.uint8), (rng.random((24, 31)) > 0.6).astype(np.uint8) * 255)
        for _ in range(6)
    ]
    whole, first, second = SaliencyMetrics(), SaliencyMetrics(), SaliencyMetrics()
    for i, (pred, gt) in enumerate(pairs):
        whole.update(pred, gt)
        (first if i % 2 else second).update(pred, gt)
    merged = first.merge(second).results()
    expected = whole.results()
    assert merged["n_images"] == 6
    for key, value in expected.items():
        np.testing.assert_allclose(merged[key], value, rtol=0, atol=1e-12, err_msg=key)
    with pytest.raises(ValueError, match="different settings"):
        SaliencyMetrics(beta2=1.0).merge(SaliencyMetrics())
